"""Metric sinks and checkpoints."""

from .checkpoint import (checkpoint_name, latest_checkpoint, list_checkpoints, prune_checkpoints, write_atomically,
                         write_json)
from .metrics import JSONLSink, format_stats, truncate_jsonl
from .sinks import REPORT_TO, make_sinks

__all__ = ["JSONLSink", "REPORT_TO", "make_sinks", "checkpoint_name", "format_stats", "latest_checkpoint", "list_checkpoints",
           "prune_checkpoints", "truncate_jsonl", "write_atomically", "write_json"]
