"""Memory and time of tether's PPO update with and without the fused LM-head log-prob, measured in one run.

    .venv/bin/python benchmarks/memory.py                          # ~4 min on 2 cores
    .venv/bin/python benchmarks/memory.py --rounds 2 --steps 4 --response 256

The work is the training phase of benchmarks/levers.py (SmolLM2-135M with a value head, 16 rows, minibatches
of 4, AdamW, 2 threads, tether's defaults otherwise): responses as SmolLM2 answers the built-in prompts
(up to 50 tokens), and optionally all ``--response`` tokens long, where the logits weigh more
(4 × 256 × 49,152 float32 = 192 MiB per tensor). Each variant runs in a fresh process and reports, after a
warm-up step, seconds per minibatch step and the process's peak resident memory (``ru_maxrss``) with its
resident memory before the first step (weights and runtime); above that: AdamW state (the same in both) and
the update's working set:
  full-logits  ``fused_logprobs=False``: [batch, tokens, vocabulary] logits, float32 log-softmax saved
  fused        ``fused_logprobs=True`` (the default): the LM head gives log-probs a chunk of rows at a time
  fused+release  + ``optimizer_in_backward`` (gradient release; ``max_grad_norm: null``): each parameter steps
               and frees its gradient during backward
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from levers import minibatch_steps, synthetic_experience

VARIANTS = ("full-logits", "fused", "fused+release")


def rss_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def worker(variant: str, steps: int, response: int, precision: str, result: str) -> None:
    import resource

    import torch

    from tether import PPOConfig, PPOTrainer
    from tether.assets import resolve_model
    from tether.models.loading import load_causal_lm, load_tokenizer

    torch.set_num_threads(2)
    torch.manual_seed(0)
    path = resolve_model("smollm2-135m-instruct")
    tokenizer = load_tokenizer(path)
    model = load_causal_lm(path)
    config = PPOConfig(batch_size=16, mini_batch_size=4, gradient_accumulation_steps=1, ppo_epochs=4,
                       value_model="head", max_new_tokens=max(50, response), precision=precision,
                       fused_logprobs=variant != "full-logits", optimizer_in_backward=variant == "fused+release",
                       max_grad_norm=None if variant == "fused+release" else 1.0)
    trainer = PPOTrainer(config, model, tokenizer, reward_fn=lambda p, c: [0.0] * len(c))

    experience = synthetic_experience(tokenizer, response)
    before = rss_gib()
    seconds = minibatch_steps(trainer, experience, steps)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    Path(result).write_text(json.dumps({"seconds": seconds, "peak": peak, "before": before,
                                        "precision": trainer.precision.mode}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the variants")
    parser.add_argument("--steps", type=int, default=6, help="timed minibatch steps per run (after 1 warm-up)")
    parser.add_argument("--response", type=int, default=0,
                        help="response length in tokens for every row (0: SmolLM2's answer lengths, ≤ 50)")
    parser.add_argument("--precision", default="auto", help="fp32 | bf16-mixed | auto (tether's default)")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.steps, args.response, args.precision, args.result)
        return
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for variant in VARIANTS:
                out = Path(tmp) / f"{r}-{variant}.json"
                subprocess.run([sys.executable, __file__, "--worker", variant, "--steps", str(args.steps),
                                "--response", str(args.response), "--precision", args.precision,
                                "--result", str(out)], check=True, env={"OMP_NUM_THREADS": "2", **_env()})
                runs[variant].append(json.loads(out.read_text()))
    import torch

    shape = f"responses of {args.response} tokens" if args.response else "SmolLM2's answer lengths (≤ 50 tokens)"
    print(f"\ntether PPO minibatch step (SmolLM2-135M + value head, 4 rows, {shape}, "
          f"{runs['fused'][0]['precision']}, 2 threads; CPU capability {torch.backends.cpu.get_cpu_capability()}), "
          f"{args.rounds} x {args.steps} steps per variant")
    print(f"{'variant':<12} {'s / step':>9} {'peak RSS GiB':>13} {'start GiB':>10} {'above start':>12}")
    summary = {}
    for variant in VARIANTS:
        seconds = [s for run in runs[variant] for s in run["seconds"]]
        peak = max(run["peak"] for run in runs[variant])
        before = max(run["before"] for run in runs[variant])
        summary[variant] = (sum(seconds) / len(seconds), peak, peak - before)
        print(f"{variant:<12} {summary[variant][0]:>9.2f} {peak:>13.2f} {before:>10.2f} {peak - before:>12.2f}")
    full = summary["full-logits"]
    for variant in VARIANTS[1:]:
        ours = summary[variant]
        print(f"{variant} / full-logits: time {ours[0] / full[0]:.2f}x, peak RSS {ours[1] / full[1]:.2f}x, "
              f"above start {ours[2] / full[2]:.2f}x ({full[1] - ours[1]:.2f} GiB of peak saved)")


def _env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}


if __name__ == "__main__":
    main()
