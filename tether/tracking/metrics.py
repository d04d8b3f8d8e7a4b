"""Metric sinks: JSONL always, a console line on demand."""

from __future__ import annotations

import json
import math
from pathlib import Path


class JSONLSink:
    """Appends one JSON object per logged step to ``path`` (created with its parent directory)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, step: int, stats: dict) -> None:
        row = {"step": step, **{k: (v if isinstance(v, (int, str)) or math.isfinite(v) else None)
                                for k, v in stats.items()}}
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")


def format_stats(stats: dict, keys=("env/reward_mean", "objective/kl", "objective/entropy",
                                    "policy/clipfrac", "tokens/response_len_mean", "time/step")) -> str:
    """A compact one-line summary of the headline metrics."""
    parts = []
    for key in keys:
        if key in stats:
            parts.append(f"{key.split('/')[-1]}={stats[key]:.3g}")
    return " ".join(parts)
