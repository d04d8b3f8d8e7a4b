"""`tether demo`: the whole RLHF pipeline on a CPU, offline, with a simulated annotator.

The set-up of the reward-model over-optimisation studies (Gao et al. 2022, "Scaling Laws for Reward
Model Overoptimization"): a *gold* scorer stands in for human annotators. Here it is VADER sentiment
(the task: "answer warmly"), which the training never sees directly:

1. load SmolLM2-135M-Instruct (the policy) and split tether's prompt set into train / held-out;
2. sample the base policy several times per prompt; the gold scorer labels every pair of samples of
   the same prompt (ties dropped) -> preference pairs;
3. train an all-MiniLM-L6-v2 reward model on those pairs (Bradley–Terry), measure its held-out pair
   accuracy against the gold labels, normalise it to mean 0 / std 1 on the base policy's samples;
4. PPO (LoRA policy + value head) against the learned reward model;
5. held-out prompts, base vs trained: gold score, learned reward, KL to the reference, gold win rate;
6. write config, metrics, preference data, reward model, policy checkpoint, a PNG of the curves, a
   Markdown report and summary.json under one run directory.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from .config import ConfigError, ModelConfig, PPOConfig, RewardConfig, RolloutConfig, from_dict, parse_override, to_dict
from .evaluation import win_rate_interval
from .tracking.metrics import hardware_description, peak_rss_mib
from .models.loading import LoraSettings

logger = logging.getLogger(__name__)


def _demo_ppo() -> PPOConfig:
    # LoRA adapters and a value head keep one PPO iteration near half a minute on two CPU cores.
    return PPOConfig(batch_size=16, mini_batch_size=8, gradient_accumulation_steps=1, ppo_epochs=2,
                     learning_rate=3e-4, critic_learning_rate=1e-3, max_new_tokens=32, value_model="head",
                     kl_coef=0.05)


@dataclass
class GoldSetup:
    """What a simulated-annotator pipeline is made of (the demo's and the over-optimisation study's)."""

    policy: ModelConfig = field(default_factory=lambda: ModelConfig(lora=LoraSettings(r=16, alpha=32)))
    """The policy: packaged SmolLM2-135M-Instruct, trained through LoRA adapters."""
    reward_backbone: str = "all-minilm-l6-v2"
    """Backbone of the learned reward model (the packaged MiniLM encoder, or any HF id / directory)."""
    gold: str = "sentiment"
    """Built-in rule that plays the annotator (sentiment = VADER compound score)."""
    gold_tie_margin: float = 0.1
    """The annotator states no preference (no pair) when two gold scores differ by less than this
    (VADER compound scores saturate near ±1, where small differences are noise of its lexicon)."""
    prompts: str = "builtin:instructions"
    """Prompt set (anything `data.path` accepts)."""


@dataclass
class DemoConfig(GoldSetup):
    """The `tether demo` pipeline (override any option: `tether demo ppo.learning_rate=1e-4`)."""

    prompts: str = "builtin:instructions+everyday"
    """Prompt set (anything `data.path` accepts): the hand-made instructions and the templated everyday set,
    640 prompts, so 128 held out leave 512 (32 full batches) for the pairs and PPO."""
    heldout_prompts: int = 128
    """Prompts kept out of reward-model and PPO training, for the before/after evaluation (mean gold with a
    paired bootstrap interval, win rate with ties as half)."""
    pair_prompts: int = 192
    """Training prompts sampled for the annotator's preference pairs."""
    samples_per_prompt: int = 4
    """Base-policy samples per pair prompt; every pair of them with different gold scores is a pair."""
    rm_eval_fraction: float = 0.25
    """Share of the pair prompts whose pairs are held out to measure reward-model accuracy."""
    rm: RewardConfig = field(default_factory=lambda: RewardConfig(learning_rate=2e-4, epochs=2, max_length=128))
    """Reward-model training."""
    ppo: PPOConfig = field(default_factory=_demo_ppo)
    """PPO against the learned reward model."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """The engine that samples (every sampling stage and PPO): hf or vllm."""
    iterations: int = 14
    """PPO iterations."""
    sample_batch_size: int = 128
    """Prompts per generate() call when sampling outside PPO (on CPU, 128 samples ~25% faster per
    sample than 32)."""
    report_samples: int = 8
    """Held-out prompts shown in the report's before/after table."""

    def __post_init__(self):
        if self.samples_per_prompt < 2:
            raise ConfigError(f"samples_per_prompt must be >= 2 to form pairs, got {self.samples_per_prompt}")
        for name in ("heldout_prompts", "pair_prompts", "iterations", "sample_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.rm_eval_fraction < 1:
            raise ConfigError(f"rm_eval_fraction must be in (0, 1), got {self.rm_eval_fraction}")


def demo_config(overrides: Sequence[str] = ()) -> DemoConfig:
    """The demo's defaults with dotted overrides (``ppo.learning_rate=1e-4``) applied."""
    return config_with_overrides(DemoConfig, overrides)


def config_with_overrides(cls, overrides: Sequence[str] = ()):
    """``cls``'s defaults with dotted overrides applied; a nested override (``rm.epochs=1``) changes that option
    and keeps the section's other defaults."""
    data: dict = {}
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return from_dict(cls, _merge(to_dict(cls()), data))


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def sample(trainer, prompts: Sequence[Any], batch_size: int, desc: str = "sampling") -> list[str]:
    """One sampled completion per prompt from the trainer's current policy (with a progress bar)."""
    from tqdm.auto import tqdm

    from .train.loop import show_progress

    completions: list[str] = []
    with tqdm(total=len(prompts), desc=desc, unit="sample", disable=not show_progress(None)) as bar:
        for begin in range(0, len(prompts), batch_size):
            completions += trainer.generate(list(prompts[begin : begin + batch_size]))
            bar.update(min(batch_size, len(prompts) - begin))
    return completions


def paired_interval(before: Sequence[float], after: Sequence[float], rounds: int = 2000,
                    seed: int = 0) -> tuple[float, float]:
    """95 % prompt-bootstrap interval of ``mean(after) − mean(before)``, resampling prompts with both their scores."""
    from .study.laws import bootstrap

    diff = torch.tensor(after, dtype=torch.float64) - torch.tensor(before, dtype=torch.float64)
    return bootstrap(lambda rows: {"change": float(diff[rows].mean())}, len(diff), rounds, seed)["change"]


def gold_pairs(prompts: Sequence[Any], completions: Sequence[Sequence[str]],
               gold: Sequence[Sequence[float]], tie_margin: float = 0.0) -> list[dict]:
    """Every pair of samples of the same prompt that the gold scorer ranks; pairs whose gold scores
    differ by less than ``tie_margin`` (or not at all) are ties and carry no label, and blank
    completions are not shown to the annotator."""
    rows = []
    for prompt, texts, scores in zip(prompts, completions, gold):
        for i in range(len(texts)):
            for j in range(i + 1, len(texts)):
                if abs(scores[i] - scores[j]) < tie_margin or scores[i] == scores[j] \
                        or texts[i].strip() == texts[j].strip() or not texts[i].strip() or not texts[j].strip():
                    continue
                hi, lo = (i, j) if scores[i] > scores[j] else (j, i)
                rows.append({"prompt": prompt, "chosen": texts[hi], "rejected": texts[lo],
                             "gold_chosen": scores[hi], "gold_rejected": scores[lo]})
    return rows


class GoldTap:
    """The reward PPO sees (the learned reward model), recording on the side what the gold scorer
    thinks of the same completions — for the curves only; PPO never receives it."""

    def __init__(self, reward, gold):
        self.reward, self.gold = reward, gold
        self.gold_means: list[float] = []

    def __call__(self, prompts, completions):
        self.gold_means.append(_mean(self.gold(prompts, completions)))
        return self.reward(prompts, completions)


def _write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def run_demo(out: str | Path, overrides: Sequence[str] = (), gold_fn=None) -> dict:
    """Run the pipeline into directory ``out``; returns the summary (also in ``summary.json``).

    ``gold_fn``: an annotator ``fn(prompts, completions) -> scores`` to use instead of the built-in
    rule named by ``gold``."""
    import yaml

    from .assets import PACKAGED, is_cached, resolve_model
    from .data.prompts import load_prompts
    from .models.loading import load_causal_lm, load_reward_backbone, load_tokenizer
    from .rewards import RewardModelScorer, make_rule
    from .train.trainer import PPOTrainer
    from .train.reward import RewardTrainer

    start = time.perf_counter()
    stage_seconds: dict[str, float] = {}
    config = demo_config(overrides)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    gold = gold_fn if gold_fn is not None else make_rule(config.gold)

    def stage(name: str, t0: float) -> float:
        stage_seconds[name] = round(time.perf_counter() - t0, 1)
        return time.perf_counter()

    # 1. policy and prompts --------------------------------------------------------------------
    t = time.perf_counter()
    name = config.policy.name_or_path
    fetch = name in PACKAGED and not is_cached(name)
    logger.info("[1/6] loading the policy %s%s", name, " (first run: fetched from the package registry, once)" if fetch else "")
    path = resolve_model(config.policy.name_or_path)
    tokenizer = load_tokenizer(path, config.policy.gguf_file, config.policy.trust_remote_code)
    model = load_causal_lm(path, config.policy.gguf_file, config.policy.dtype, config.policy.trust_remote_code,
                           config.policy.lora)
    config.ppo.model_name = config.policy.name_or_path
    trainer = PPOTrainer(config.ppo, model, tokenizer, engine=config.rollout)
    prompts = load_prompts(config.prompts)
    random.Random(config.ppo.seed).shuffle(prompts)
    need = config.heldout_prompts + config.pair_prompts
    if len(prompts) < need:
        raise ConfigError(f"{config.prompts}: {len(prompts)} prompts, but heldout_prompts + pair_prompts = {need}")
    held_out, train_prompts = prompts[: config.heldout_prompts], prompts[config.heldout_prompts :]
    pair_prompts = train_prompts[: config.pair_prompts]
    t = stage("load", t)

    # 2. the annotator labels pairs of base-policy samples ------------------------------------
    k = config.samples_per_prompt
    logger.info("[2/6] sampling the base policy: %d prompts x %d samples for preference pairs, %d held-out prompts",
                len(pair_prompts), k, len(held_out))
    torch.manual_seed(config.ppo.seed + 1)
    flat = sample(trainer, [p for p in pair_prompts for _ in range(k)], config.sample_batch_size, "pair samples")
    base_completions = sample(trainer, held_out, config.sample_batch_size, "held-out, base")
    per_prompt = [flat[i * k : (i + 1) * k] for i in range(len(pair_prompts))]
    flat_gold = gold([p for p in pair_prompts for _ in range(k)], flat)
    per_prompt_gold = [flat_gold[i * k : (i + 1) * k] for i in range(len(pair_prompts))]
    n_eval = max(1, round(config.rm_eval_fraction * len(pair_prompts)))
    tie = config.gold_tie_margin
    rm_train_rows = gold_pairs(pair_prompts[n_eval:], per_prompt[n_eval:], per_prompt_gold[n_eval:], tie)
    rm_eval_rows = gold_pairs(pair_prompts[:n_eval], per_prompt[:n_eval], per_prompt_gold[:n_eval], tie)
    if not rm_train_rows or not rm_eval_rows:
        raise RuntimeError(f"the gold scorer '{config.gold}' ranked no pair of samples (all ties): "
                           f"{len(rm_train_rows)} training / {len(rm_eval_rows)} held-out pairs")
    _write_jsonl(out / "preferences" / "train.jsonl", rm_train_rows)
    _write_jsonl(out / "preferences" / "eval.jsonl", rm_eval_rows)
    logger.info("      %d training pairs, %d held-out pairs (gold score of base samples: mean %.3f)",
                len(rm_train_rows), len(rm_eval_rows), _mean(flat_gold))
    t = stage("sample_pairs", t)

    # 3. reward model ----------------------------------------------------------------------------
    logger.info("[3/6] training the reward model (%s) on %d pairs", config.reward_backbone, len(rm_train_rows))
    torch.manual_seed(config.rm.seed)
    rm_path = resolve_model(config.reward_backbone)
    from transformers import AutoTokenizer

    rm_trainer = RewardTrainer(config.rm, load_reward_backbone(rm_path), AutoTokenizer.from_pretrained(rm_path),
                               out / "preferences" / "train.jsonl", out / "preferences" / "eval.jsonl",
                               log_dir=out / "reward_model_logs")
    rm_before = rm_trainer.evaluate()
    rm_history = rm_trainer.train()
    rm_eval = rm_history[-1]
    shift, scale = rm_trainer.fit_normalization([p for p in pair_prompts for _ in range(k)], flat)
    rm_trainer.save_pretrained(out / "reward_model", info={"gold": config.gold, **rm_eval})
    logger.info("      held-out pair accuracy %.3f (before training %.3f), reward gap %.2f; "
                "normalised on %d base samples (shift %.3f, scale %.3f)", rm_eval["eval/accuracy"],
                rm_before["eval/accuracy"], rm_eval["eval/reward_gap"], len(flat), shift, scale)
    scorer = RewardModelScorer(rm_trainer.model, rm_trainer.tokenizer, max_length=config.rm.max_length,
                               shift=shift, scale=scale)
    t = stage("reward_model", t)

    # 4. PPO against the learned reward ---------------------------------------------------------
    logger.info("[4/6] PPO: %d iterations of %d prompts against the learned reward", config.iterations,
                config.ppo.batch_size)
    tap = GoldTap(scorer, gold)
    history = trainer.train(train_prompts, reward_fn=tap, max_iterations=config.iterations, output_dir=out)
    t = stage("ppo", t)

    # 5. evaluation on held-out prompts -----------------------------------------------------------
    logger.info("[5/6] evaluating base vs trained on %d held-out prompts", len(held_out))
    torch.manual_seed(config.ppo.seed + 2)
    trained_completions = sample(trainer, held_out, config.sample_batch_size, "held-out, trained")
    kls = trainer.sequence_kl(held_out, trained_completions)
    gold_base, gold_trained = gold(held_out, base_completions), gold(held_out, trained_completions)
    rm_base, rm_trained = scorer(held_out, base_completions), scorer(held_out, trained_completions)
    outcomes = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(gold_trained, gold_base)]
    wins, (win_low, win_high) = sum(outcomes), win_rate_interval(outcomes)
    engine_start = getattr(trainer.engine, "start_seconds", 0.0)
    trainer.close()
    t = stage("evaluate", t)

    # 6. outputs -----------------------------------------------------------------------------------
    logger.info("[6/6] writing the report")
    summary = {
        "rm_accuracy": round(rm_eval["eval/accuracy"], 4),
        "rm_accuracy_untrained": round(rm_before["eval/accuracy"], 4),
        "rm_reward_gap": round(rm_eval["eval/reward_gap"], 4),
        "rm_pairs_train": len(rm_train_rows),
        "rm_pairs_eval": len(rm_eval_rows),
        "gold_score_base": round(_mean(gold_base), 4),
        "gold_score_trained": round(_mean(gold_trained), 4),
        "gold_change": round(_mean(gold_trained) - _mean(gold_base), 4),
        "gold_change_ci95": [round(x, 4) for x in paired_interval(gold_base, gold_trained)],
        "gold_win_rate": round(wins / len(held_out), 4),
        "gold_win_rate_ci95": [round(win_low, 4), round(win_high, 4)],
        "rm_score_base": round(_mean(rm_base), 4),
        "rm_score_trained": round(_mean(rm_trained), 4),
        "kl": round(_mean(kls), 4),
        "iterations": len(history),
        "heldout_prompts": len(held_out),
        "wall_seconds": round(time.perf_counter() - start, 1),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "stage_seconds": stage_seconds,
        "precision": trainer.precision.mode,
        "engine": config.rollout.engine,
        "engine_start_seconds": round(engine_start, 1),
        "hardware": hardware_description(trainer.device),
    }
    from .tracking.plots import plot_curves

    plot_curves(out / "curves.png", {
        "reward (learned RM, normalised)": {"train batch": [h["env/reward_mean"] for h in history]},
        "gold score (VADER, never trained on)" if gold_fn is None and config.gold == "sentiment" else "gold score":
            {"train batch": tap.gold_means},
        "KL to reference (nats / response)": {"train batch": [h["objective/kl"] for h in history]},
    })
    _write_jsonl(out / "gold_curve.jsonl", [{"iteration": i + 1, "gold_score": g} for i, g in enumerate(tap.gold_means)])
    _write_jsonl(out / "heldout_samples.jsonl", [
        {"prompt": p, "base": b, "trained": tr, "gold_base": gb, "gold_trained": gt, "rm_base": rb,
         "rm_trained": rt, "kl": kl}
        for p, b, tr, gb, gt, rb, rt, kl in zip(held_out, base_completions, trained_completions, gold_base,
                                                gold_trained, rm_base, rm_trained, kls)])
    summary["wall_seconds"] = round(time.perf_counter() - start, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    write_report(out / "report.md", summary, config, held_out, base_completions, trained_completions,
                 gold_base, gold_trained, rm_base, rm_trained)
    logger.info("done in %.0f s: reward-model accuracy %.2f; gold score %.3f -> %.3f, win rate %.2f, KL %.2f nats; "
                "report: %s", summary["wall_seconds"], summary["rm_accuracy"], summary["gold_score_base"],
                summary["gold_score_trained"], summary["gold_win_rate"], summary["kl"], out / "report.md")
    return summary


def write_report(path: Path, summary: dict, config: DemoConfig, prompts, base, trained, gold_base, gold_trained,
                 rm_base, rm_trained) -> None:
    """The run's Markdown report: summary table, curves, and held-out samples before and after."""

    def cell(text: Any) -> str:
        return " ".join(str(text).split()).replace("|", "\\|")

    rows = [
        ("reward model: held-out pair accuracy vs gold", f"{summary['rm_accuracy']:.3f} "
         f"(untrained {summary['rm_accuracy_untrained']:.3f}; {summary['rm_pairs_train']} train / "
         f"{summary['rm_pairs_eval']} held-out pairs)"),
        ("gold score, base → trained", f"{summary['gold_score_base']:.3f} → {summary['gold_score_trained']:.3f} "
         f"(change {summary['gold_change']:+.3f}, paired 95 % interval {summary['gold_change_ci95'][0]:+.3f} to "
         f"{summary['gold_change_ci95'][1]:+.3f})"),
        ("gold win rate, trained vs base", f"{summary['gold_win_rate']:.3f} (95 % interval "
         f"{summary['gold_win_rate_ci95'][0]:.2f}–{summary['gold_win_rate_ci95'][1]:.2f}, "
         f"{summary['heldout_prompts']} prompts)"),
        ("learned reward, base → trained", f"{summary['rm_score_base']:.3f} → {summary['rm_score_trained']:.3f}"),
        ("KL(trained ‖ reference), nats per response", f"{summary['kl']:.3f}"),
        ("PPO iterations", str(summary["iterations"])),
        ("wall clock", f"{summary['wall_seconds']:.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in summary['stage_seconds'].items())})"),
        ("peak memory", f"{summary['peak_rss_mib']:.0f} MiB"),
    ]
    lines = ["# tether demo: RLHF with a simulated annotator", "",
             f"Policy `{config.policy.name_or_path}` (LoRA r={config.policy.lora.r}), reward model on "
             f"`{config.reward_backbone}`, gold annotator `{config.gold}`, "
             f"{summary['heldout_prompts']} held-out prompts.", "",
             "| measure | value |", "|---|---|"]
    lines += [f"| {a} | {b} |" for a, b in rows]
    lines += ["", "![reward, gold score and KL over PPO iterations](curves.png)", "",
              "## Held-out samples, before and after (gold / learned reward)", "",
              "| prompt | base | trained |", "|---|---|---|"]
    for p, b, t, gb, gt, rb, rt in list(zip(prompts, base, trained, gold_base, gold_trained, rm_base,
                                            rm_trained))[: config.report_samples]:
        lines.append(f"| {cell(p)} | {cell(b)} ({gb:+.2f} / {rb:+.2f}) | {cell(t)} ({gt:+.2f} / {rt:+.2f}) |")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


__all__ = ["DemoConfig", "demo_config", "gold_pairs", "run_demo"]
