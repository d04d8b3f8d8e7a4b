"""Does a long run's resident memory stay flat? The seed program for N iterations, memory after every one.

    .venv/bin/python benchmarks/rss_growth.py                               # 40 iterations x 2 variants
    .venv/bin/python benchmarks/rss_growth.py --iterations 20 --variants keep+return,trimmed,multiple16

The seed program (TRL's old step-API loop): SmolLM2-135M-Instruct with a value head, 16 built-in prompts per
iteration, up to 48 new tokens, reward ``1 - len(r)/200``, 4 PPO epochs of minibatches of 4, tether's
default precision, 2 threads. Each variant runs in a fresh process (allocator settings are process-wide):
  keep          reuse_freed_memory on, return_freed_memory off (freed blocks stay in malloc's heap)
  keep+return   tether's defaults: both on (malloc_trim at the end of an iteration above 256 MiB free),
                micro-batch widths rounded up to a multiple of 32 (pad_to_multiple_of)
  glibc         both off: glibc's own mmap thresholds and trimming
  mmap4+return, mmap32+return   blocks from 4 / 32 MiB up mmapped (exact size, unmapped on free), heap below
  trimmed       pad_to_multiple_of 1: every micro-batch at its own trimmed width
  multiple16    pad_to_multiple_of 16
Printed per variant: resident memory (VmRSS at the end of the update) after iteration 5 and at the end,
the growth between them, the largest heap-free seen and heap-in-use after iteration 5 and at the end (glibc
mallinfo2: growth of in-use is memory kept — a leak or a cache —, growth of free is fragmentation), peak
RSS, GiB handed back per iteration and the median seconds per iteration and per update phase.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

VARIANTS = {
    "keep": dict(reuse_freed_memory=True, return_freed_memory=False),
    "keep+return": {},  # tether's defaults
    "glibc": dict(reuse_freed_memory=False, return_freed_memory=False),
    "mmap4+return": dict(reuse_freed_memory=False),
    "mmap32+return": dict(reuse_freed_memory=False),
    "trimmed": dict(pad_to_multiple_of=1),
    "multiple16": dict(pad_to_multiple_of=16),
}
"""PPOConfig options of each variant over tether's defaults."""
MMAP_THRESHOLDS = {"mmap4+return": 4 << 20, "mmap32+return": 32 << 20}
"""Variants that set glibc's mmap threshold themselves: blocks from this size up are mmapped (exact size,
unmapped on free), smaller ones come from the heap, which keeps what is freed (trimmed at iteration ends)."""


def set_mmap_threshold(threshold: int) -> None:
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    assert libc.mallopt(-3, threshold) == 1  # M_MMAP_THRESHOLD (fixed: no dynamic adjustment)
    assert libc.mallopt(-1, 2**31 - 1) == 1  # M_TRIM_THRESHOLD
    assert libc.mallopt(-2, 64 << 20) == 1  # M_TOP_PAD


def worker(variant: str, iterations: int, result: str) -> None:
    import time

    import torch

    from tether import PPOConfig, PPOTrainer
    from tether.assets import resolve_model
    from tether.data import load_prompts
    from tether.models.loading import load_causal_lm, load_tokenizer

    torch.set_num_threads(2)
    torch.manual_seed(0)
    if variant in MMAP_THRESHOLDS:
        set_mmap_threshold(MMAP_THRESHOLDS[variant])
    path = resolve_model("smollm2-135m-instruct")
    tokenizer = load_tokenizer(path)
    config = PPOConfig(batch_size=16, mini_batch_size=4, gradient_accumulation_steps=1, ppo_epochs=4,
                       max_new_tokens=48, value_model="head", **VARIANTS[variant])
    trainer = PPOTrainer(config, load_causal_lm(path), tokenizer)
    prompts = load_prompts("builtin:instructions")
    rows = []
    for it in range(iterations):
        batch = [prompts[(it * 16 + i) % len(prompts)] for i in range(16)]
        start = time.perf_counter()
        responses = trainer.generate(batch)
        stats = trainer.step(batch, responses, [1 - len(r) / 200 for r in responses])
        rows.append({"seconds": time.perf_counter() - start, "update_seconds": stats["time/step"] - stats["time/experience"],
                     **{k: v for k, v in stats.items() if k.startswith("memory/")}})
        print(f"{variant} iteration {it + 1}: rss {stats['memory/update/rss_gib']:.2f} GiB", file=sys.stderr)
    Path(result).write_text(json.dumps({"rows": rows, "precision": trainer.precision.mode}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--variants", default="keep+return,trimmed", help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.iterations, args.result)
        return
    import torch

    from tether.tracking.metrics import hardware_description

    variants = [v for v in args.variants.split(",") if v]
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in variants:
            out = Path(tmp) / f"{variant}.json"
            subprocess.run([sys.executable, __file__, "--worker", variant, "--iterations", str(args.iterations),
                            "--result", str(out)], check=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
            runs[variant] = json.loads(out.read_text())
    first = min(5, args.iterations)
    print(f"\nseed program, {args.iterations} iterations, {runs[variants[0]]['precision']}, 2 threads; "
          f"{hardware_description()} (torch capability {torch.backends.cpu.get_cpu_capability()})")
    print(f"{'variant':<12} {f'RSS it {first}':>9} {'RSS end':>8} {'growth':>7} {'heap free max':>14} "
          f"{'in use it 5 -> end':>18} {'peak RSS':>9} {'returned / it':>14} {'s / it':>7} {'update s':>9}")
    for variant, run in runs.items():
        rows = run["rows"]
        early, end = rows[first - 1]["memory/update/rss_gib"], rows[-1]["memory/update/rss_gib"]
        free = max(r.get("memory/update/heap_free_gib", float("nan")) for r in rows)
        in_use = [rows[i].get("memory/update/heap_in_use_gib", float("nan")) for i in (first - 1, -1)]
        seconds = statistics.median(r["seconds"] for r in rows[1:] or rows)
        update = statistics.median(r["update_seconds"] for r in rows[1:] or rows)
        returned = statistics.fmean(r.get("memory/returned_gib", 0.0) for r in rows)
        print(f"{variant:<12} {early:>9.2f} {end:>8.2f} {100 * (end / early - 1):>6.1f}% {free:>14.2f} "
              f"{in_use[0]:>10.2f} -> {in_use[1]:.2f} {rows[-1]['memory/peak_rss_gib']:>9.2f} {returned:>14.2f} "
              f"{seconds:>7.1f} {update:>9.1f}")


if __name__ == "__main__":
    main()
