"""What each CPU lever does to tether's PPO update (the 70-80 % of an iteration), measured in one run.

    .venv/bin/python benchmarks/levers.py                     # ~6 min on 2 cores
    .venv/bin/python benchmarks/levers.py --rounds 3 --steps 4

The work is the training phase of the TRL benchmark (benchmarks/vs_trl.py): SmolLM2-135M with a
value head, a rollout of 16 rows, 4 PPO epochs of minibatches of 4 (16 forward+backward+AdamW
steps), fp32, 2 threads, run by tether's own ``PPOTrainer.ppo_update``. The rollout is synthetic
but shaped like a real one: prompt lengths of the chat-rendered built-in prompts (36-48 tokens) and
response lengths drawn from SmolLM2's answers to them (half stop before 50 tokens).

Variants, each in a fresh process (the allocator setting is process-wide), alternating ``--rounds``
times; each reports seconds per minibatch step after one warm-up step:
  baseline   glibc malloc defaults, every micro-batch padded to the rollout's full width
  +memory    reuse_freed_memory (malloc keeps freed blocks: no page faults on the big buffers)
  +trim      + all-padding columns dropped per micro-batch (tether's default: both on)
  +lora      + LoRA r=16 on q/k/v/o: no weight gradients or AdamW state for the frozen base
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

VARIANTS = ("baseline", "+memory", "+trim", "+lora")
# response lengths (tokens, 50 = cut at max_new_tokens) of 64 SmolLM2-135M-Instruct answers to the
# built-in prompts at temperature 0.7, measured once
RESPONSE_LENGTHS = [7, 14, 15, 18, 21, 24, 24, 26, 26, 27, 28, 29, 31, 32, 33, 33, 33, 34, 36, 38, 38, 39, 39,
                    40, 40, 41, 42, 45, 46, 49] + [50] * 34


def synthetic_experience(tokenizer, response: int = 0):
    """16 rows shaped like a rollout of the built-in prompts: random prompt ids of 36-48 tokens, responses of
    ``response`` tokens (0: lengths drawn from SmolLM2's answers), noise advantages and returns."""
    import random

    import torch

    from tether.data.prompts import left_pad, right_pad
    from tether.rollout.types import Experience

    rng = random.Random(0)
    vocab = tokenizer.vocab_size
    prompts = [[rng.randrange(vocab) for _ in range(rng.randint(36, 48))] for _ in range(16)]
    lengths = [response] * 16 if response else [rng.choice(RESPONSE_LENGTHS) for _ in range(16)]
    responses = [[rng.randrange(vocab) for _ in range(n)] for n in lengths]
    p_ids, p_mask = left_pad(prompts, tokenizer.pad_token_id)
    r_ids, r_mask = right_pad(responses, tokenizer.pad_token_id)
    mask = r_mask.bool()
    noise = torch.randn(r_ids.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return Experience(torch.cat([p_ids, r_ids], 1), torch.cat([p_mask, r_mask], 1).long(), mask,
                          logprobs=torch.full(r_ids.shape, -2.0), ref_logprobs=torch.full(r_ids.shape, -2.0),
                          values=torch.zeros(r_ids.shape), advantages=noise * mask, returns=noise * mask)


def minibatch_steps(trainer, experience, steps: int) -> list[float]:
    """Seconds of ``steps`` minibatch updates (4 rows: forward+backward+AdamW) after one warm-up step."""
    import time

    import torch

    seconds = []
    rows = torch.arange(4)
    stepper = trainer.ppo.stepper  # gradient release: the optimiser steps inside backward
    for _ in range(steps + 1):
        start = time.perf_counter()
        if stepper is not None:
            stepper.begin()
            trainer.accumulate_gradients(experience, rows)
            stepper.end()
        else:
            trainer.optimizer.zero_grad(set_to_none=True)
            trainer.accumulate_gradients(experience, rows)
            trainer.optimizer.step()
        seconds.append(time.perf_counter() - start)
        rows = (rows + 4) % 16  # the next minibatch, as an epoch walks the rollout
    return seconds[1:]


def worker(variant: str, steps: int, result: str) -> None:
    import torch

    from tether import PPOConfig, PPOTrainer
    from tether.assets import resolve_model
    from tether.models.loading import LoraSettings, load_causal_lm, load_tokenizer
    from tether.rollout.types import Experience

    level = VARIANTS.index(variant)
    torch.set_num_threads(2)
    torch.manual_seed(0)
    if level < 2:
        Experience.trimmed = lambda self: self  # every micro-batch at the rollout's full width
    path = resolve_model("smollm2-135m-instruct")
    tokenizer = load_tokenizer(path)
    model = load_causal_lm(path, lora=LoraSettings(r=16, alpha=32) if level >= 3 else None)
    config = PPOConfig(batch_size=16, mini_batch_size=4, gradient_accumulation_steps=1, ppo_epochs=4,
                       value_model="head", reuse_freed_memory=level >= 1, max_new_tokens=50)
    trainer = PPOTrainer(config, model, tokenizer, reward_fn=lambda p, c: [0.0] * len(c))

    seconds = minibatch_steps(trainer, synthetic_experience(tokenizer), steps)
    Path(result).write_text(json.dumps({"variant": variant, "seconds": seconds}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="alternations of all variants")
    parser.add_argument("--steps", type=int, default=8, help="timed minibatch steps per run (after 1 warm-up)")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.steps, args.result)
        return
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for variant in VARIANTS:
                out = Path(tmp) / f"{r}-{VARIANTS.index(variant)}.json"
                subprocess.run([sys.executable, __file__, "--worker", variant, "--steps", str(args.steps),
                                "--result", str(out)], check=True, env={"OMP_NUM_THREADS": "2", **_env()})
                times[variant] += json.loads(out.read_text())["seconds"]
    base = sum(times["baseline"]) / len(times["baseline"])
    print(f"\ntether PPO minibatch step (SmolLM2-135M + value head, 4 rows, fp32, 2 threads), "
          f"{args.rounds} x {args.steps} steps per variant")
    print(f"{'variant':<10} {'s / step':>9} {'x baseline':>11} {'16 steps (s)':>13}")
    for variant in VARIANTS:
        mean = sum(times[variant]) / len(times[variant])
        print(f"{variant:<10} {mean:>9.2f} {mean / base:>11.2f} {16 * mean:>13.1f}")


def _env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}


if __name__ == "__main__":
    main()
