"""Where the seed program's peak memory sits: a timeline of resident memory and malloc's view, by phase.

    .venv/bin/python benchmarks/peak_breakdown.py                    # 3 iterations, ~1.5 min on 2 cores
    .venv/bin/python benchmarks/peak_breakdown.py --iterations 6 --timeline runs/peak.json
    .venv/bin/python benchmarks/peak_breakdown.py --option offload_reference=true   # a lever, measured

The seed program of benchmarks/rss_growth.py (SmolLM2-135M-Instruct with a value head, 16 built-in prompts,
up to 48 new tokens, 4 PPO epochs of minibatches of 4, tether's defaults, 2 threads), with a thread that
samples every 20 ms: VmRSS, glibc ``mallinfo2`` (bytes in use; bytes free inside the heap) and where the
main thread is in tether (innermost function and line). Printed:

* the tensors that live through the run, by kind (trained weights, frozen reference, optimizer state,
  gradients), in GiB from their storages;
* resident memory before the first iteration (weights + runtime) and the largest value per phase
  (sampling, experience: old/reference log-probs and values, update: the PPO epochs);
* the peak RSS, where it happened, and its split: heap in use (live tensors and everything else malloc
  handed out), heap free (freed but still resident: fragmentation, or what ``reuse_freed_memory`` keeps), and
  the rest (code, libraries, thread stacks, memory-mapped files);
* the peak of heap in use and where it happened (what the tensors alone need).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

GIB = float(2**30)
PHASES = (("ppo_update", "update"), ("make_experience", "experience"), ("generate", "sampling"))


def _where(frame) -> tuple[str, str]:
    """(phase, innermost tether function:line) of a frame stack."""
    names, phase = [], "other"
    while frame is not None:
        code = frame.f_code
        if f"{os.sep}tether{os.sep}" in code.co_filename:
            if not names:
                names.append(f"{Path(code.co_filename).name}:{code.co_name}:{frame.f_lineno}")
            for function, label in PHASES:
                if code.co_name == function and phase == "other":
                    phase = label
        frame = frame.f_back
    return phase, names[0] if names else "-"


class Sampler:
    """Samples (seconds, RSS, heap in use, heap free, phase, place) every ``interval`` seconds in a thread."""

    def __init__(self, interval: float = 0.02):
        self.interval, self.samples, self._stop = interval, [], threading.Event()
        self._main = threading.main_thread().ident
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from tether.tracking.memory import heap_bytes, rss_bytes

        start = time.perf_counter()
        while not self._stop.is_set():
            rss, heap = rss_bytes() or 0, heap_bytes() or (0, 0)
            phase, place = _where(sys._current_frames().get(self._main))
            self.samples.append((time.perf_counter() - start, rss / GIB, heap[0] / GIB, heap[1] / GIB, phase, place))
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _storage_gib(tensors) -> float:
    seen = {}
    for t in tensors:
        if t is not None and t.device.type != "meta":
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values()) / GIB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--timeline", type=Path, help="write every sample here as JSON")
    parser.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                        help="a PPOConfig option for this run (value as JSON: true, null, 0.5; repeatable)")
    args = parser.parse_args()
    options = {}
    for item in args.option:
        name, _, value = item.partition("=")
        try:
            options[name] = json.loads(value)
        except json.JSONDecodeError:
            options[name] = value

    import torch

    from tether import PPOConfig, PPOTrainer
    from tether.assets import resolve_model
    from tether.data import load_prompts
    from tether.models.loading import load_causal_lm, load_tokenizer
    from tether.tracking.memory import rss_bytes

    torch.set_num_threads(2)
    torch.manual_seed(0)
    with Sampler() as sampler:
        path = resolve_model("smollm2-135m-instruct")
        tokenizer = load_tokenizer(path)
        config = PPOConfig(batch_size=16, mini_batch_size=4, gradient_accumulation_steps=1, ppo_epochs=4,
                           max_new_tokens=48, value_model="head", **options)
        trainer = PPOTrainer(config, load_causal_lm(path), tokenizer)
        before = (rss_bytes() or 0) / GIB
        prompts = load_prompts("builtin:instructions")
        seconds = []
        for it in range(args.iterations):
            batch = [prompts[(it * 16 + i) % len(prompts)] for i in range(16)]
            start = time.perf_counter()
            responses = trainer.generate(batch)
            trainer.step(batch, responses, [1 - len(r) / 200 for r in responses])
            seconds.append(time.perf_counter() - start)
            print(f"iteration {it + 1}/{args.iterations}: {seconds[-1]:.1f} s", file=sys.stderr)

    trained = [p for g in trainer.optimizer.param_groups for p in g["params"]]
    state = [v for s in trainer.optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    reference = list(trainer.ref_model.parameters()) if trainer.ref_model is not None else []
    parked = trainer.ppo.parked_reference
    samples = sampler.samples
    chosen = ", ".join(f"{k}={v}" for k, v in options.items()) or "tether's defaults"
    print(f"\nseed program ({chosen}), {args.iterations} iterations, {trainer.precision.mode}, 2 threads, "
          f"{len(samples)} samples every 20 ms; s / iteration after the first: "
          f"{sorted(seconds[1:])[len(seconds[1:]) // 2] if len(seconds) > 1 else seconds[0]:.1f}")
    print("tensors that live through the run (GiB):")
    dtypes = sorted({str(p.dtype).replace("torch.", "") for p in trained})
    print(f"  trained weights ({', '.join(dtypes)})  {_storage_gib(trained):.3f}")
    if parked is not None:
        print(f"  frozen reference: in a file between uses ({parked.bytes / GIB:.3f} GiB there)")
    elif reference:
        print(f"  frozen reference ({str(reference[0].dtype).replace('torch.', '')})  {_storage_gib(reference):.3f}")
    print(f"  optimizer state                 {_storage_gib(state):.3f}")
    print(f"  gradients held after the step   {_storage_gib([p.grad for p in trained]):.3f}")
    print(f"resident before the first iteration (weights + runtime): {before:.3f} GiB")
    for _, label in reversed(PHASES):
        phase = [s for s in samples if s[4] == label]
        if phase:
            top = max(phase, key=lambda s: s[1])
            print(f"  largest RSS while {label:<10} {top[1]:.3f} GiB (heap in use {top[2]:.3f}, free {top[3]:.3f})")
    peak = max(samples, key=lambda s: s[1])
    print(f"peak RSS {peak[1]:.3f} GiB at {peak[0]:.1f} s, {peak[4]}, {peak[5]}:")
    print(f"  heap in use {peak[2]:.3f} + heap free {peak[3]:.3f} + the rest {peak[1] - peak[2] - peak[3]:.3f}")
    used = max(samples, key=lambda s: s[2])
    print(f"peak heap in use {used[2]:.3f} GiB at {used[0]:.1f} s, {used[4]}, {used[5]} (RSS then {used[1]:.3f})")
    if args.timeline:
        args.timeline.parent.mkdir(parents=True, exist_ok=True)
        args.timeline.write_text(json.dumps(
            [dict(zip(("seconds", "rss_gib", "heap_in_use_gib", "heap_free_gib", "phase", "place"), s))
             for s in samples]))


if __name__ == "__main__":
    main()
