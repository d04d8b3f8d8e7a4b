"""Metric sinks and checkpoints."""

from .checkpoint import write_atomically, write_json
from .metrics import JSONLSink, format_stats, read_jsonl

__all__ = ["JSONLSink", "format_stats", "read_jsonl", "write_atomically", "write_json"]
