"""PPO vs GRPO vs RLOO vs REINFORCE++ on the demo task, under the same wall-clock budget.

Needs a finished `tether demo` run (its learned reward model and held-out split):

    .venv/bin/python benchmarks/compare_algorithms.py --run runs/demo --minutes 4

Each algorithm runs in its own process (so peak memory is its own) with the same policy, LoRA
settings, learning rate, prompts, response length and reward model; only the advantage estimator
(and the group size it needs) differs. The gold scorer (VADER) is logged on every training batch,
never trained on. Prints a table and writes ``algorithms.png`` (gold score and KL against time)
and ``algorithms.json`` under the run directory. ``--full`` trains all weights instead of LoRA,
with PPO's separate critic, to measure the memory a critic costs.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

ALGORITHMS = ("ppo", "grpo", "rloo", "reinforce_pp")


def run_one(algorithm: str, run_dir: Path, minutes: float, full: bool, seed: int) -> dict:
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
    group = 4 if algorithm in ("grpo", "rloo") else 1
    base = demo.ppo
    config = PPOConfig(algorithm=algorithm, num_generations=group, batch_size=base.batch_size,
                       mini_batch_size=base.mini_batch_size, gradient_accumulation_steps=1,
                       ppo_epochs=base.ppo_epochs, learning_rate=1e-5 if full else base.learning_rate,
                       critic_learning_rate=None if full else base.critic_learning_rate,
                       max_new_tokens=base.max_new_tokens, value_model="separate" if full else "head",
                       kl_coef=base.kl_coef, seed=seed)
    trainer = PPOTrainer(config, model, tokenizer)
    reward = RewardModelScorer.from_pretrained(str(run_dir / "reward_model"))
    gold = make_rule(demo.gold)
    prompts = load_prompts(demo.prompts)
    random.Random(base.seed).shuffle(prompts)
    train_prompts = prompts[demo.heldout_prompts:]  # the demo's split: held-out prompts stay unseen
    rng = random.Random(seed)
    per_iteration = config.batch_size // group
    rows, start = [], time.perf_counter()
    while time.perf_counter() - start < minutes * 60:
        batch = [p for p in rng.sample(train_prompts, per_iteration) for _ in range(group)]
        completions = trainer.generate(batch)
        scores = reward(batch, completions)
        gold_scores = gold(batch, completions)
        stats = trainer.step(batch, completions, scores)
        rows.append({"seconds": time.perf_counter() - start, "reward": sum(scores) / len(scores),
                     "gold": sum(gold_scores) / len(gold_scores), "kl": stats["objective/kl"]})
        print(f"{algorithm}: {rows[-1]['seconds']:.0f}s reward {rows[-1]['reward']:.3f} gold {rows[-1]['gold']:.3f} "
              f"kl {rows[-1]['kl']:.2f}", file=sys.stderr, flush=True)
    return {"algorithm": algorithm, "iterations": len(rows), "curve": rows,
            "critic": trainer.critic is not None or trainer.value_head is not None,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/demo", help="a finished `tether demo` run directory")
    parser.add_argument("--minutes", type=float, default=4.0, help="wall-clock budget per algorithm")
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS), choices=ALGORITHMS)
    parser.add_argument("--full", action="store_true", help="full fine-tuning, separate critic for PPO")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    run_dir = Path(args.run)
    if args.one:
        print(json.dumps(run_one(args.one, run_dir, args.minutes, args.full, args.seed)))
        return
    if not (run_dir / "reward_model").exists():
        sys.exit(f"{run_dir}/reward_model not found: run `tether demo --out {run_dir}` first")
    results = []
    for algorithm in args.algorithms:
        cmd = [sys.executable, __file__, "--one", algorithm, "--run", str(run_dir), "--minutes", str(args.minutes),
               "--seed", str(args.seed)] + (["--full"] if args.full else [])
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))

    def tail_mean(rows, key, n=3):
        tail = rows[-n:]
        return sum(r[key] for r in tail) / len(tail)

    print(f"\n{'algorithm':<14}{'critic':>7}{'iters':>7}{'gold first3':>13}{'gold last3':>12}{'KL last3':>10}"
          f"{'peak RSS MiB':>14}")
    for r in results:
        c = r["curve"]
        first = sum(x["gold"] for x in c[:3]) / len(c[:3])
        print(f"{r['algorithm']:<14}{'yes' if r['critic'] else 'no':>7}{r['iterations']:>7}{first:>13.3f}"
              f"{tail_mean(c, 'gold'):>12.3f}{tail_mean(c, 'kl'):>10.2f}{r['peak_rss_mib']:>14.0f}")
    name = "algorithms-full" if args.full else "algorithms"
    (run_dir / f"{name}.json").write_text(json.dumps(results, indent=2))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for r in results:
        t = [x["seconds"] / 60 for x in r["curve"]]
        axes[0].plot(t, [x["gold"] for x in r["curve"]], marker="o", markersize=3, label=r["algorithm"])
        axes[1].plot(t, [x["kl"] for x in r["curve"]], marker="o", markersize=3, label=r["algorithm"])
    for ax, title in zip(axes, ("gold score (VADER) of training batches", "KL to reference (nats / response)")):
        ax.set_title(title)
        ax.set_xlabel("wall-clock minutes")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(run_dir / f"{name}.png", dpi=110)
    print(f"\nwrote {run_dir / (name + '.png')} and {run_dir / (name + '.json')}")


if __name__ == "__main__":
    main()
