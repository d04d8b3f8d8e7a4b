"""Metric sinks: JSONL always, a console line on demand."""

from __future__ import annotations

import json
import math
import os
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


def truncate_jsonl(path: str | Path, key: str, last: int) -> int:
    """Drop the rows of a JSONL log whose ``key`` is above ``last`` (rows logged after the checkpoint
    a run resumes from); rewrites the file atomically. Returns the number of rows dropped."""
    path = Path(path)
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill: drop it
            dropped += 1
            continue
        if isinstance(row, dict) and isinstance(row.get(key), int) and row[key] > last:
            dropped += 1
        else:
            kept.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(tmp, path)
    return dropped


def peak_rss_mib() -> float:
    """Peak resident memory of this process in MiB (Linux reports KiB; macOS bytes)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def hardware_description(device="cpu") -> str:
    """What a performance figure ran on: the GPU's name, or the CPU model, its core count and the
    instruction sets that decide float speed and rounding (AVX2 / AVX-512 / AVX512-BF16 / AMX-BF16)."""
    import os
    import platform

    import torch

    device = torch.device(device)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name}, {props.total_memory / 2**30:.0f} GiB"
    try:
        with open("/proc/cpuinfo") as handle:
            cpuinfo = handle.read()
    except OSError:  # not Linux
        cpuinfo = ""
    return describe_cpu(cpuinfo, os.cpu_count(), platform.processor() or platform.machine(),
                        torch.backends.cpu.get_cpu_capability())


def describe_cpu(cpuinfo: str, cores: int | None, fallback_name: str = "CPU", capability: str = "") -> str:
    """``"<model>, <n> cores, AVX2 / AVX-512 / AVX512-BF16 / AMX-BF16"`` from ``/proc/cpuinfo`` text
    (its first processor's ``model name`` and ``flags``); torch's capability where there are no flags."""
    model, flags = "", set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and not model:
            model = value.strip()
        elif key.strip() == "flags":
            flags = set(value.split())
            break
    named = [name for flag, name in (("avx2", "AVX2"), ("avx512f", "AVX-512"), ("avx512_bf16", "AVX512-BF16"),
                                     ("amx_bf16", "AMX-BF16")) if flag in flags]
    isa = " / ".join(named) if named else f"capability {capability or 'unknown'}"
    return f"{model or fallback_name}, {cores} cores, {isa}"


def memory_stats(device) -> dict[str, float]:
    """``memory/peak_rss_gib`` (the process) and, on a CUDA device, ``memory/gpu_peak_gib``
    (``torch.cuda.max_memory_allocated``): peaks so far."""
    import torch

    stats = {"memory/peak_rss_gib": peak_rss_mib() / 1024}
    if torch.device(device).type == "cuda":
        stats["memory/gpu_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return stats
