"""Metric sinks and checkpoints."""

from .checkpoint import write_atomically, write_json
from .metrics import JSONLSink, format_stats

__all__ = ["JSONLSink", "format_stats", "write_atomically", "write_json"]
