"""Every estimator and policy loss on the demo task, one option each, from the same loop.

Needs a finished `tether demo` run (its learned reward model and held-out split):

    .venv/bin/python benchmarks/compare_algorithms.py --run runs/demo --iterations 6

Each variant runs ``trainer.train()`` for the same number of iterations in its own process (so peak
memory is its own) with the same policy, LoRA settings, learning rate, prompts, response length and
reward model; only the option(s) of the variant differ (``VARIANTS``), and the group size the group
estimators need (4). The gold scorer (VADER) is logged on every scored batch, never trained on.
Prints a table (seconds per iteration: generation + reward + update, median over iterations) and
writes ``algorithms.png`` (gold score and KL against time) and ``algorithms.json`` under the run
directory. ``--full`` trains all weights instead of LoRA, with PPO's separate critic, to measure the
memory a critic costs. Under dynamic sampling (dapo) an iteration may draw several batches: its time
and its ``rounds`` column count them all.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

GROUP = 4
VARIANTS = {
    "ppo": dict(algorithm="ppo"),
    "grpo": dict(algorithm="grpo"),
    "dr_grpo": dict(algorithm="dr_grpo"),
    "dapo": dict(algorithm="dapo"),
    "rloo": dict(algorithm="rloo"),
    "reinforce_pp": dict(algorithm="reinforce_pp"),
    "reinforce_pp_baseline": dict(algorithm="reinforce_pp_baseline"),
    "grpo+gspo": dict(algorithm="grpo", policy_loss="gspo"),
    "grpo+cispo": dict(algorithm="grpo", policy_loss="cispo"),
    "grpo+k3+": dict(algorithm="grpo", kl_loss_estimator="k3+"),
}
"""Variant name -> the PPOConfig options that make it (the rest is the demo's configuration)."""


def run_one(variant: str, run_dir: Path, iterations: int, full: bool, seed: int) -> dict:
    import torch

    from tether import PPOConfig, PPOTrainer
    from tether.assets import resolve_model
    from tether.data.prompts import load_prompts
    from tether.demo import demo_config
    from tether.models.loading import LoraSettings, load_causal_lm, load_tokenizer
    from tether.rewards import RewardModelScorer, make_rule

    demo = demo_config()
    torch.manual_seed(seed)
    path = resolve_model(demo.policy.name_or_path)
    tokenizer = load_tokenizer(path)
    lora = LoraSettings() if full else demo.policy.lora
    model = load_causal_lm(path, lora=lora)
    options = VARIANTS[variant]
    group = GROUP if options["algorithm"] not in ("ppo", "reinforce_pp") else 1
    base = demo.ppo
    config = PPOConfig(num_generations=group, batch_size=base.batch_size,
                       mini_batch_size=base.mini_batch_size, gradient_accumulation_steps=1,
                       ppo_epochs=base.ppo_epochs, learning_rate=1e-5 if full else base.learning_rate,
                       critic_learning_rate=None if full else base.critic_learning_rate,
                       max_new_tokens=base.max_new_tokens, value_model="separate" if full else "head",
                       kl_coef=base.kl_coef, seed=seed, **options)
    reward_model = RewardModelScorer.from_pretrained(str(run_dir / "reward_model"))
    gold = make_rule(demo.gold)
    prompts = load_prompts(demo.prompts)
    random.Random(base.seed).shuffle(prompts)
    train_prompts = prompts[demo.heldout_prompts:]  # the demo's split: held-out prompts stay unseen
    golds: dict[int, list[float]] = {}

    def reward(batch, completions):  # gold of every scored batch (several per iteration under dynamic sampling)
        golds.setdefault(trainer.iteration, []).extend(gold(batch, completions))
        return reward_model(batch, completions)

    trainer = PPOTrainer(config, model, tokenizer, reward_fn=reward)
    start = time.perf_counter()
    history = trainer.train(train_prompts, epochs=100, max_iterations=iterations, progress=False)
    rows, elapsed = [], 0.0
    for h in history:
        elapsed += h["time/generate"] + h["time/reward"] + h["time/step"]
        rows.append({"seconds": elapsed, "reward": h["env/reward_mean"], "kl": h["objective/kl"],
                     "iteration_seconds": h["time/generate"] + h["time/reward"] + h["time/step"],
                     "rounds": h.get("dynamic_sampling/rounds", 1.0)})
    for i, row in enumerate(rows):
        row["gold"] = sum(golds[i]) / len(golds[i])
    return {"variant": variant, "options": options, "iterations": len(rows), "curve": rows,
            "wall_seconds": time.perf_counter() - start,
            "critic": trainer.critic is not None or trainer.value_head is not None,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/demo", help="a finished `tether demo` run directory")
    parser.add_argument("--iterations", type=int, default=6, help="PPO iterations per variant")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--full", action="store_true", help="full fine-tuning, separate critic for PPO")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    run_dir = Path(args.run)
    if args.one:
        print(json.dumps(run_one(args.one, run_dir, args.iterations, args.full, args.seed)))
        return
    if not (run_dir / "reward_model").exists():
        sys.exit(f"{run_dir}/reward_model not found: run `tether demo --out {run_dir}` first")
    results = []
    for variant in args.variants:
        cmd = [sys.executable, __file__, "--one", variant, "--run", str(run_dir), "--iterations", str(args.iterations),
               "--seed", str(args.seed)] + (["--full"] if args.full else [])
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))

    def tail_mean(rows, key, n=3):
        tail = rows[-n:]
        return sum(r[key] for r in tail) / len(tail)

    import torch

    print(f"\nCPU capability {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads")
    print(f"{'variant':<24}{'critic':>7}{'iters':>6}{'s/iter':>8}{'rounds':>8}{'gold first3':>13}{'gold last3':>12}"
          f"{'KL last3':>10}{'peak RSS MiB':>14}")
    for r in results:
        c = r["curve"]
        first = sum(x["gold"] for x in c[:3]) / len(c[:3])
        per_iteration = statistics.median(x["iteration_seconds"] for x in c)
        rounds = sum(x["rounds"] for x in c) / len(c)
        print(f"{r['variant']:<24}{'yes' if r['critic'] else 'no':>7}{r['iterations']:>6}{per_iteration:>8.1f}"
              f"{rounds:>8.2f}{first:>13.3f}{tail_mean(c, 'gold'):>12.3f}{tail_mean(c, 'kl'):>10.2f}"
              f"{r['peak_rss_mib']:>14.0f}")
    name = "algorithms-full" if args.full else "algorithms"
    (run_dir / f"{name}.json").write_text(json.dumps(results, indent=2))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for r in results:
        t = [x["seconds"] / 60 for x in r["curve"]]
        axes[0].plot(t, [x["gold"] for x in r["curve"]], marker="o", markersize=3, label=r["variant"])
        axes[1].plot(t, [x["kl"] for x in r["curve"]], marker="o", markersize=3, label=r["variant"])
    for ax, title in zip(axes, ("gold score (VADER) of scored batches", "KL to reference (nats / response)")):
        ax.set_title(title)
        ax.set_xlabel("wall-clock minutes")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(run_dir / f"{name}.png", dpi=110)
    print(f"\nwrote {run_dir / (name + '.png')} and {run_dir / (name + '.json')}")


if __name__ == "__main__":
    main()
