"""``tether study overopt``: reward-model over-optimisation (Gao, Schulman & Hilton 2022) on the demo's pieces.

A gold scorer (VADER, as in the demo) labels pairs of base-policy samples; proxy reward models learn from all
of them and from a quarter (optionally with flipped labels); then the policy is optimised against each proxy
and gold and proxy are followed as the policy moves away from its start (d = √KL). This module builds the
**best-of-n arm** (the pilot: does this gold bend at all?):

  1. pair pool     ``pair_prompts × samples_per_prompt`` base samples, gold-labelled (``pool/``)
  2. proxies       one reward model per variant, each with its held-out pair accuracy against gold (``proxies/``)
  3. best-of-n     ``heldout_prompts × pool_samples`` base samples of held-out prompts scored by gold and every
                   proxy; for n = 1 … pool_samples the unbiased best-of-n estimate of gold and proxy, at
                   d = √(log n − (n−1)/n) (``bon/``)
  4. report        ``report.md``, ``bon.png``, ``summary.json``: curves with 95 % prompt-bootstrap intervals, the
                   fitted R(d) = d(α − βd) with intervals of α, β and d*, and the verdict on curvature.

Every stage writes its results before the next starts and is skipped when they exist; sampling is cached in
chunks with per-chunk seeds, so a killed run continues where it stopped with the same samples.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import ConfigError, RewardConfig, RolloutConfig, to_dict
from ..demo import GoldSetup, config_with_overrides
from .laws import best_of_n, bootstrap, fit_law, kl_best_of_n, law, peak, r_squared

logger = logging.getLogger(__name__)


@dataclass
class ProxySpec:
    """One proxy reward model: which share of the training pairs it sees, and how many of its labels are flipped."""

    name: str
    data_fraction: float = 1.0
    label_noise: float = 0.0
    seed: int = 0


def _default_proxies() -> list[ProxySpec]:
    return [ProxySpec("all"), ProxySpec("quarter", 0.25), ProxySpec("quarter-noise", 0.25, 0.25)]


@dataclass
class OveroptConfig(GoldSetup):
    """`tether study overopt` (override any option: `tether study overopt pool_samples=16`)."""

    heldout_prompts: int = 64
    """Held-out prompts of the best-of-n pool (and later of every RL evaluation)."""
    pool_samples: int = 32
    """Base samples per held-out prompt: best-of-n for n = 1 … this."""
    pair_prompts: int = 192
    """Prompts whose base samples form the gold-labelled pairs."""
    samples_per_prompt: int = 4
    """Base samples per pair prompt."""
    rm_eval_fraction: float = 0.25
    """Share of the pair prompts whose pairs measure each proxy's accuracy against gold."""
    proxies: list[ProxySpec] = field(default_factory=_default_proxies)
    """Proxy variants (name, data_fraction, label_noise, seed)."""
    rm: RewardConfig = field(default_factory=lambda: RewardConfig(learning_rate=2e-4, epochs=2, max_length=128))
    """Training of every proxy."""
    temperature: float = 0.7
    """Sampling temperature of every sample (one temperature, so KL refers to one distribution)."""
    max_new_tokens: int = 32
    """Tokens per sample."""
    sample_batch_size: int = 128
    """Prompts per generate() call."""
    bootstrap_rounds: int = 2000
    """Prompt-bootstrap resamples for every interval."""
    seed: int = 0
    """Seed of the prompt split, sampling and label noise."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """The sampling engine (hf or vllm)."""

    def __post_init__(self):
        self.proxies = [p if isinstance(p, ProxySpec) else ProxySpec(**p) for p in self.proxies]
        for name in ("heldout_prompts", "pair_prompts", "sample_batch_size", "bootstrap_rounds", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.pool_samples < 2 or self.samples_per_prompt < 2:
            raise ConfigError(f"pool_samples and samples_per_prompt must be >= 2, got {self.pool_samples} and "
                              f"{self.samples_per_prompt}")
        if not self.proxies:
            raise ConfigError("proxies: at least one proxy reward model is needed")
        names = [p.name for p in self.proxies]
        if len(set(names)) != len(names):
            raise ConfigError(f"proxies: names must differ, got {names}")
        for p in self.proxies:
            if not 0 < p.data_fraction <= 1 or not 0 <= p.label_noise < 0.5:
                raise ConfigError(f"proxy {p.name!r}: data_fraction must be in (0, 1] and label_noise in [0, 0.5), "
                                  f"got {p.data_fraction} and {p.label_noise}")


def overopt_config(overrides: list[str] | tuple[str, ...] = ()) -> OveroptConfig:
    """The study's defaults with dotted overrides (``pool_samples=16``, ``rm.epochs=1``) applied."""
    return config_with_overrides(OveroptConfig, overrides)


# ---------------------------------------------------------------- cached stages


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def cached_samples(trainer, prompts: list, path: Path, batch_size: int, seed: int, desc: str) -> list[str]:
    """One sample per entry of ``prompts`` from the trainer's policy, cached chunk by chunk in ``path`` (JSONL).
    Chunk ``c`` is sampled under seed ``seed + c``: a run resumed after a kill draws exactly the samples an
    uninterrupted one would have."""
    from tqdm.auto import tqdm

    from ..train.loop import show_progress

    done = _read_jsonl(path) if path.exists() else []
    chunks = range(0, len(prompts), batch_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tqdm(total=len(prompts), initial=min(len(done), len(prompts)), desc=desc, unit="sample",
              disable=not show_progress(None)) as bar, path.open("a", encoding="utf-8") as handle:
        for c, begin in enumerate(chunks):
            if begin < len(done):
                continue
            torch.manual_seed(seed + c)
            texts = trainer.generate(list(prompts[begin:begin + batch_size]))
            handle.write("".join(json.dumps({"completion": t}) + "\n" for t in texts))
            handle.flush()
            done += [{"completion": t} for t in texts]
            bar.update(len(texts))
    return [row["completion"] for row in done[:len(prompts)]]


def noisy_subset(rows: list[dict], spec: ProxySpec, seed: int) -> list[dict]:
    """The training pairs a proxy sees: the pairs of a ``data_fraction`` share of the prompts (whole prompts, so
    a quarter of the data is a quarter of the prompts), with ``label_noise`` of them swapped (chosen ↔ rejected)."""
    rng = random.Random(f"{seed}-{spec.name}-{spec.seed}")
    prompts = sorted({json.dumps(r["prompt"]) for r in rows})
    rng.shuffle(prompts)
    keep = set(prompts[:max(1, round(spec.data_fraction * len(prompts)))])
    chosen = [dict(r) for r in rows if json.dumps(r["prompt"]) in keep]
    flips = set(rng.sample(range(len(chosen)), round(spec.label_noise * len(chosen))))
    for i in flips:
        chosen[i]["chosen"], chosen[i]["rejected"] = chosen[i]["rejected"], chosen[i]["chosen"]
    return chosen


def bon_curves(proxy: torch.Tensor, gold: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per prompt and n: the best-of-n (selected by ``proxy``) estimates of gold and proxy, re-centred on n = 1.

    proxy, gold: ``[P, K]``. Returns ``gold``, ``proxy``: ``[P, K]`` (column n−1 is best-of-n) and ``d``: ``[K]``."""
    k = proxy.shape[1]
    g = torch.stack([best_of_n(proxy, gold, n) for n in range(1, k + 1)], dim=1)
    r = torch.stack([best_of_n(proxy, proxy, n) for n in range(1, k + 1)], dim=1)
    d = torch.tensor([kl_best_of_n(n) ** 0.5 for n in range(1, k + 1)], dtype=torch.float64)
    return {"gold": g - g[:, :1], "proxy": r - r[:, :1], "d": d}


def analyse_bon(proxy: torch.Tensor, gold: torch.Tensor, rounds: int, seed: int = 0) -> dict[str, Any]:
    """Curves, fitted best-of-n laws and prompt-bootstrap intervals for one proxy. ``proxy``, ``gold``: ``[P, K]``."""
    curves = bon_curves(proxy, gold)
    d = curves["d"]

    def stats(rows: torch.Tensor) -> dict[str, float]:
        out: dict[str, float] = {}
        for name in ("gold", "proxy"):
            mean = curves[name][rows].mean(0)
            alpha, beta = fit_law(d, mean, "bon")
            top = peak(alpha, beta, "bon")
            out.update({f"{name}/alpha": alpha, f"{name}/beta": beta,
                        f"{name}/d_star": top[0] if top else float("nan")})
            out.update({f"{name}/R@{n}": float(mean[n - 1]) for n in range(1, len(d) + 1)})
        return out

    everything = torch.arange(proxy.shape[0])
    point = stats(everything)
    intervals = bootstrap(stats, proxy.shape[0], rounds=rounds, seed=seed)
    result: dict[str, Any] = {"d": d.tolist(), "n": list(range(1, len(d) + 1))}
    for name in ("gold", "proxy"):
        mean = curves[name].mean(0)
        alpha, beta = point[f"{name}/alpha"], point[f"{name}/beta"]
        top = peak(alpha, beta, "bon")
        result[name] = {
            "R": mean.tolist(),
            "R_ci95": [list(intervals[f"{name}/R@{n}"]) for n in range(1, len(d) + 1)],
            "alpha": alpha, "alpha_ci95": list(intervals[f"{name}/alpha"]),
            "beta": beta, "beta_ci95": list(intervals[f"{name}/beta"]),
            "r_squared": r_squared(d, mean, alpha, beta, "bon"),
            "d_star": top[0] if top else None, "R_star": top[1] if top else None,
            "d_star_ci95": list(intervals[f"{name}/d_star"]) if f"{name}/d_star" in intervals else None,
            "bends": intervals[f"{name}/beta"][0] > 0,  # β's interval excludes 0 (above it)
        }
    return result


def run_overopt(out: str | Path, overrides: list[str] | tuple[str, ...] = (), gold_fn=None,
                stage: str = "bon") -> dict:
    """Run the study's best-of-n arm into ``out`` (resumable); returns the summary (also ``summary.json``)."""
    if stage != "bon":
        raise ConfigError(f"--stage {stage!r}: this version runs the best-of-n arm (--stage bon)")
    from transformers import AutoTokenizer

    from ..assets import resolve_model
    from ..config import PPOConfig
    from ..data.prompts import load_prompts
    from ..demo import gold_pairs
    from ..models.loading import load_causal_lm, load_reward_backbone, load_tokenizer
    from ..rewards import RewardModelScorer, make_rule
    from ..train.reward import RewardTrainer
    from ..train.trainer import PPOTrainer
    import yaml

    start = time.perf_counter()
    config = overopt_config(overrides)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    gold = gold_fn if gold_fn is not None else make_rule(config.gold)

    # 0. prompts, split once (held-out first: never in a pair) --------------------------------------
    prompts = load_prompts(config.prompts)
    random.Random(config.seed).shuffle(prompts)
    need = config.heldout_prompts + config.pair_prompts
    if len(prompts) < need:
        raise ConfigError(f"{config.prompts}: {len(prompts)} prompts, but heldout_prompts + pair_prompts = {need}")
    held_out, pair_prompts = prompts[:config.heldout_prompts], prompts[config.heldout_prompts:need]

    # 1-3 need samples of the base policy: loaded once, lazily (a finished run reloads nothing)
    sampler = None

    def policy():
        nonlocal sampler
        if sampler is None:
            logger.info("loading the policy %s", config.policy.name_or_path)
            path = resolve_model(config.policy.name_or_path)
            tokenizer = load_tokenizer(path, config.policy.gguf_file, config.policy.trust_remote_code)
            model = load_causal_lm(path, config.policy.gguf_file, config.policy.dtype,
                                   config.policy.trust_remote_code, None)  # samples of the base: no adapters
            ppo = PPOConfig(max_new_tokens=config.max_new_tokens, temperature=config.temperature, seed=config.seed,
                            batch_size=16, mini_batch_size=16)
            sampler = PPOTrainer(ppo, model, tokenizer, engine=config.rollout)
        return sampler

    # 1. pair pool -----------------------------------------------------------------------------
    k = config.samples_per_prompt
    pairs_file = out / "pool" / "pairs.json"
    if not pairs_file.exists():
        logger.info("[1/4] pair pool: %d prompts x %d base samples, gold-labelled", len(pair_prompts), k)
        flat_prompts = [p for p in pair_prompts for _ in range(k)]
        flat = cached_samples(policy(), flat_prompts, out / "pool" / "samples.jsonl", config.sample_batch_size,
                              config.seed + 1000, "pair samples")
        flat_gold = [float(x) for x in gold(flat_prompts, flat)]
        per_prompt = [flat[i * k:(i + 1) * k] for i in range(len(pair_prompts))]
        per_gold = [flat_gold[i * k:(i + 1) * k] for i in range(len(pair_prompts))]
        n_eval = max(1, round(config.rm_eval_fraction * len(pair_prompts)))
        train_rows = gold_pairs(pair_prompts[n_eval:], per_prompt[n_eval:], per_gold[n_eval:], config.gold_tie_margin)
        eval_rows = gold_pairs(pair_prompts[:n_eval], per_prompt[:n_eval], per_gold[:n_eval], config.gold_tie_margin)
        if not train_rows or not eval_rows:
            raise RuntimeError(f"the gold scorer '{config.gold}' ranked no pair of samples (all ties)")
        pairs_file.write_text(json.dumps({"train": train_rows, "eval": eval_rows, "normalise_prompts": flat_prompts,
                                          "normalise_completions": flat}))
    pool = json.loads(pairs_file.read_text())
    logger.info("      %d training pairs, %d held-out pairs", len(pool["train"]), len(pool["eval"]))

    # 2. proxies -------------------------------------------------------------------------------
    rm_path = resolve_model(config.reward_backbone)
    proxies: dict[str, dict] = {}
    for i, spec in enumerate(config.proxies):
        directory = out / "proxies" / spec.name
        info_file = directory / "study.json"
        if not info_file.exists():
            rows = noisy_subset(pool["train"], spec, config.seed)
            logger.info("[2/4] proxy %r: %d of %d training pairs, %.0f %% labels flipped", spec.name, len(rows),
                        len(pool["train"]), 100 * spec.label_noise)
            torch.manual_seed(config.rm.seed + spec.seed)
            rm = RewardTrainer(config.rm, load_reward_backbone(rm_path), AutoTokenizer.from_pretrained(rm_path), rows,
                               pool["eval"])
            history = rm.train()
            shift, scale = rm.fit_normalization(pool["normalise_prompts"], pool["normalise_completions"])
            rm.save_pretrained(directory, info={"gold": config.gold, **history[-1]})
            info_file.write_text(json.dumps({"pairs": len(rows), "accuracy": history[-1]["eval/accuracy"],
                                             "shift": shift, "scale": scale, **to_dict(spec)}))
        proxies[spec.name] = json.loads(info_file.read_text())
        logger.info("      proxy %r: held-out pair accuracy against gold %.3f", spec.name, proxies[spec.name]["accuracy"])

    # 3. best-of-n pool --------------------------------------------------------------------------
    K = config.pool_samples
    pool_prompts = [p for p in held_out for _ in range(K)]
    scores_file = out / "bon" / "scores.json"
    if not scores_file.exists():
        logger.info("[3/4] best-of-n pool: %d held-out prompts x %d base samples", len(held_out), K)
        texts = cached_samples(policy(), pool_prompts, out / "bon" / "samples.jsonl", config.sample_batch_size,
                               config.seed + 2000, "best-of-n pool")
        scores = {"gold": [float(x) for x in gold(pool_prompts, texts)]}
        for spec in config.proxies:
            model_dir = out / "proxies" / spec.name
            scorer = RewardModelScorer(load_reward_backbone(model_dir), AutoTokenizer.from_pretrained(model_dir),
                                       max_length=config.rm.max_length, shift=proxies[spec.name]["shift"],
                                       scale=proxies[spec.name]["scale"])
            scores[spec.name] = [float(x) for x in scorer(pool_prompts, texts)]
        scores_file.write_text(json.dumps(scores))
    scores = json.loads(scores_file.read_text())
    if sampler is not None:
        sampler.close()

    # 4. analysis and report ----------------------------------------------------------------------
    logger.info("[4/4] best-of-n curves, fits and %d-round prompt bootstrap", config.bootstrap_rounds)
    gold_matrix = torch.tensor(scores["gold"], dtype=torch.float64).view(len(held_out), K)
    arms = {}
    for spec in config.proxies:
        proxy_matrix = torch.tensor(scores[spec.name], dtype=torch.float64).view(len(held_out), K)
        arms[spec.name] = {"proxy_accuracy": proxies[spec.name]["accuracy"], "pairs": proxies[spec.name]["pairs"],
                           "data_fraction": spec.data_fraction, "label_noise": spec.label_noise,
                           **analyse_bon(proxy_matrix, gold_matrix, config.bootstrap_rounds, config.seed)}
    summary = {"stage": "bon", "heldout_prompts": len(held_out), "pool_samples": K,
               "gold_base_mean": float(gold_matrix.mean()), "bon": arms,
               "wall_seconds": round(time.perf_counter() - start, 1)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    plot_bon(out / "bon.png", arms)
    write_bon_report(out / "report.md", summary, config)
    return summary


def plot_bon(path: Path, arms: dict) -> None:
    """Gold and proxy best-of-n curves against d, one panel per proxy, with 95 % bands and the fitted gold law."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(arms), figsize=(4.5 * len(arms), 3.6), squeeze=False)
    for ax, (name, arm) in zip(axes[0], arms.items()):
        d = torch.tensor(arm["d"])
        for key, colour in (("proxy", "tab:blue"), ("gold", "tab:orange")):
            low, high = zip(*arm[key]["R_ci95"])
            ax.plot(d, arm[key]["R"], color=colour, label=f"{key} (best-of-n)")
            ax.fill_between(d, low, high, color=colour, alpha=0.2)
        fine = torch.linspace(0, float(d.max()), 100)
        ax.plot(fine, law(fine, arm["gold"]["alpha"], arm["gold"]["beta"], "bon"), "--", color="tab:orange",
                label="gold fit d(α − βd)")
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_title(f"proxy '{name}' (accuracy {arm['proxy_accuracy']:.2f})")
        ax.set_xlabel("d = √KL (nats^½)")
        ax.set_ylabel("score − base")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _interval(pair) -> str:
    return "—" if pair is None else f"[{pair[0]:.3f}, {pair[1]:.3f}]"


def write_bon_report(path: Path, summary: dict, config: OveroptConfig) -> None:
    lines = ["# Reward-model over-optimisation: best-of-n arm", "",
             f"{summary['heldout_prompts']} held-out prompts × {summary['pool_samples']} base samples (temperature "
             f"{config.temperature}, {config.max_new_tokens} tokens), gold = {config.gold}, every interval a 95 % "
             f"prompt bootstrap ({config.bootstrap_rounds} resamples). Gold and proxy are re-centred on the base "
             f"policy (n = 1); d = √(log n − (n−1)/n).", "",
             "| proxy | pairs | accuracy vs gold | gold α | gold β | gold d* | gold R² | proxy β | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, arm in summary["bon"].items():
        g, p = arm["gold"], arm["proxy"]
        d_star = "none (β ≤ 0)" if g["d_star"] is None else f"{g['d_star']:.2f} {_interval(g['d_star_ci95'])}"
        verdict = ("gold bends (β > 0)" if g["bends"] else "no curvature: β's interval includes 0")
        lines.append(f"| {name} | {arm['pairs']} | {arm['proxy_accuracy']:.3f} | {g['alpha']:.3f} "
                     f"{_interval(g['alpha_ci95'])} | {g['beta']:.3f} {_interval(g['beta_ci95'])} | {d_star} | "
                     f"{g['r_squared']:.2f} | {p['beta']:.3f} {_interval(p['beta_ci95'])} | {verdict} |")
    d_max = max(arm["d"][-1] for arm in summary["bon"].values())
    bending = [n for n, arm in summary["bon"].items() if arm["gold"]["bends"]]
    lines += ["", ("Best-of-n over-optimisation signal (gold's fitted β above 0) for: " + ", ".join(bending) + "."
                   if bending else f"No proxy bends gold within d ≤ {d_max:.2f} on this gold: make the proxy weaker "
                                   "(less data, label noise) before spending the RL budget."),
              "", "![best-of-n](bon.png)", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
