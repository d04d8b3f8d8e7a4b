"""``tether study overopt``: reward-model over-optimisation (Gao, Schulman & Hilton 2022) on the demo's pieces.

A gold scorer (VADER, as in the demo) labels pairs of base-policy samples; proxy reward models learn from all
of them and from a quarter (optionally with flipped labels); then the policy is optimised against each proxy
and gold and proxy are followed as the policy moves away from its start (d = √KL):

  1. pair pool     ``pair_prompts × samples_per_prompt`` base samples, gold-labelled (``pool/``)
  2. proxies       one reward model per variant, each with its held-out pair accuracy against gold (``proxies/``)
  3. best-of-n     ``heldout_prompts × pool_samples`` base samples of held-out prompts scored by gold and every
                   proxy; for n = 1 … pool_samples the unbiased best-of-n estimate of gold and proxy, at
                   d = √(log n − (n−1)/n) (``bon/``)
  4. RL arms       PPO with no KL penalty against each of ``rl_proxies``, evaluated every ``rl_eval_every``
                   iterations on the held-out prompts (``rl/NAME/``, ``study/rl_arm.py``)
  5. report        ``report.md``, ``bon.png``, ``rl.png``, ``summary.json``: curves with 95 % prompt-bootstrap
                   intervals, the fitted R(d) = d(α − βd) (best-of-n) and d(α − β ln d) (RL) with intervals of α,
                   β and d*, and a verdict per proxy. ``--stage bon`` stops after 3 (the pilot: does gold bend?).

Every stage writes its results before the next starts and is skipped when they exist; sampling is cached in
chunks with per-chunk seeds, so a killed run continues where it stopped with the same samples.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import ConfigError, PPOConfig, RewardConfig, RolloutConfig, to_dict
from ..demo import GoldSetup, config_with_overrides
from ..tracking.metrics import hardware_description
from .laws import best_of_n, bootstrap, fit_law, kl_best_of_n, peak, r_squared
from .report import plot_bon, plot_rl, write_report
from .rl_arm import GoldLog, analyse_rl, eval_points, run_rl_arm

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


def _study_ppo() -> PPOConfig:
    # the demo's PPO (LoRA adapters, value head) with Gao et al.'s setting: no KL penalty
    return PPOConfig(batch_size=16, mini_batch_size=8, gradient_accumulation_steps=1, ppo_epochs=2,
                     learning_rate=3e-4, critic_learning_rate=1e-3, value_model="head", kl_coef=0.0)


STAGES = ("bon", "all")
DEFAULT_MINUTES = 60.0
"""What the default sizes take on a 2-core AVX2 CPU (fp32); ``--minutes`` scales the sizes from there."""


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
    rl_proxies: list[str] = field(default_factory=lambda: ["all", "quarter"])
    """Proxies the RL arms optimise against (names from ``proxies``; one PPO run each)."""
    rl_iterations: int = 30
    """PPO iterations per RL arm (a multiple of rl_eval_every)."""
    rl_eval_every: int = 6
    """An RL arm is evaluated (and checkpointed) after every this many iterations."""
    rl_eval_samples: int = 4
    """Samples per held-out prompt at every RL evaluation point."""
    ppo: PPOConfig = field(default_factory=_study_ppo)
    """PPO of the RL arms (kl_coef 0: Gao et al.'s main setting); its temperature, max_new_tokens and seed are
    the study's."""

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
        unknown = [n for n in self.rl_proxies if n not in names]
        if unknown:
            raise ConfigError(f"rl_proxies: {unknown} not among the proxies {names}")
        try:
            eval_points(self.rl_iterations, self.rl_eval_every)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        if self.rl_eval_samples < 1:
            raise ConfigError(f"rl_eval_samples must be >= 1, got {self.rl_eval_samples}")
        for p in self.proxies:
            if not 0 < p.data_fraction <= 1 or not 0 <= p.label_noise < 0.5:
                raise ConfigError(f"proxy {p.name!r}: data_fraction must be in (0, 1] and label_noise in [0, 0.5), "
                                  f"got {p.data_fraction} and {p.label_noise}")


def scaled_sizes(minutes: float) -> list[str]:
    """Overrides that scale the default study to about ``minutes`` (the defaults take ``DEFAULT_MINUTES`` on a
    2-core AVX2 CPU): held-out prompts, pair prompts and RL iterations shrink or grow with the budget; the best-of-n
    range (pool_samples) and the samples per evaluation stay, so every point keeps its resolution."""
    if minutes <= 0:
        raise ConfigError(f"--minutes must be > 0, got {minutes}")
    base = OveroptConfig()
    factor = minutes / DEFAULT_MINUTES
    every = max(1, round(base.rl_eval_every * min(1.0, factor)))
    points = max(3, round(base.rl_iterations * factor / every))
    return [f"heldout_prompts={max(16, round(base.heldout_prompts * factor))}",
            f"pair_prompts={max(32, round(base.pair_prompts * factor))}",
            f"rl_eval_every={every}", f"rl_iterations={every * points}"]


def overopt_config(overrides: list[str] | tuple[str, ...] = (), minutes: float | None = None) -> OveroptConfig:
    """The study's defaults (scaled to ``minutes`` if given) with dotted overrides (``pool_samples=16``,
    ``rm.epochs=1``) applied on top."""
    return config_with_overrides(OveroptConfig, (scaled_sizes(minutes) if minutes else []) + list(overrides))


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
                stage: str = "all", minutes: float | None = None) -> dict:
    """Run the study into ``out`` (resumable: rerun to continue); returns the summary (also ``summary.json``).

    stage: ``all`` (best-of-n and RL arms) or ``bon`` (the pilot: pair pool, proxies, best-of-n). minutes: scale
    the default sizes to about this many minutes (``scaled_sizes``); ``overrides`` apply on top. ``gold_fn``: an
    annotator ``fn(prompts, completions) -> scores`` instead of the built-in rule named by ``gold``."""
    if stage not in STAGES:
        raise ConfigError(f"--stage {stage!r}: choose one of {list(STAGES)}")
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
    config = overopt_config(overrides, minutes)
    config.ppo.temperature, config.ppo.max_new_tokens, config.ppo.seed = (config.temperature, config.max_new_tokens,
                                                                         config.seed)
    config.ppo.total_steps = config.rl_iterations  # a schedule spans the arm, not one segment between evaluations
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    gold = gold_fn if gold_fn is not None else make_rule(config.gold)

    # 0. prompts, split once (held-out first: never in a pair) --------------------------------------
    prompts = load_prompts(config.prompts)
    random.Random(config.seed).shuffle(prompts)
    need = config.heldout_prompts + config.pair_prompts
    if len(prompts) < need:
        raise ConfigError(f"{config.prompts}: {len(prompts)} prompts, but heldout_prompts + pair_prompts = {need}")
    held_out, pair_prompts = prompts[:config.heldout_prompts], prompts[config.heldout_prompts:need]
    rl_prompts = prompts[config.heldout_prompts:]  # PPO sees every prompt but the held-out ones
    _check_same_study(out, config, held_out, pair_prompts)
    (out / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))

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
        logger.info("[1/5] pair pool: %d prompts x %d base samples, gold-labelled", len(pair_prompts), k)
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
            logger.info("[2/5] proxy %r: %d of %d training pairs, %.0f %% labels flipped", spec.name, len(rows),
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

    def proxy_scorer(name: str) -> RewardModelScorer:
        model_dir = out / "proxies" / name
        return RewardModelScorer(load_reward_backbone(model_dir), AutoTokenizer.from_pretrained(model_dir),
                                 max_length=config.rm.max_length, shift=proxies[name]["shift"],
                                 scale=proxies[name]["scale"])

    # 3. best-of-n pool --------------------------------------------------------------------------
    K = config.pool_samples
    pool_prompts = [p for p in held_out for _ in range(K)]
    scores_file = out / "bon" / "scores.json"
    if not scores_file.exists():
        logger.info("[3/5] best-of-n pool: %d held-out prompts x %d base samples", len(held_out), K)
        texts = cached_samples(policy(), pool_prompts, out / "bon" / "samples.jsonl", config.sample_batch_size,
                               config.seed + 2000, "best-of-n pool")
        scores = {"gold": [float(x) for x in gold(pool_prompts, texts)]}
        for spec in config.proxies:
            scores[spec.name] = [float(x) for x in proxy_scorer(spec.name)(pool_prompts, texts)]
        scores_file.write_text(json.dumps(scores))
    scores = json.loads(scores_file.read_text())
    if sampler is not None:
        sampler.close()

    gold_matrix = torch.tensor(scores["gold"], dtype=torch.float64).view(len(held_out), K)
    proxy_matrices = {spec.name: torch.tensor(scores[spec.name], dtype=torch.float64).view(len(held_out), K)
                      for spec in config.proxies}

    # 4. RL arms ---------------------------------------------------------------------------------
    rl: dict[str, dict] = {}
    if stage == "all":
        path = resolve_model(config.policy.name_or_path)

        def make_trainer() -> PPOTrainer:
            torch.manual_seed(config.seed)  # the same adapters and value head in every arm
            tokenizer = load_tokenizer(path, config.policy.gguf_file, config.policy.trust_remote_code)
            model = load_causal_lm(path, config.policy.gguf_file, config.policy.dtype,
                                   config.policy.trust_remote_code, config.policy.lora)
            return PPOTrainer(config.ppo, model, tokenizer, engine=config.rollout)

        for a, name in enumerate(config.rl_proxies):
            logger.info("[4/5] RL arm %d/%d: PPO against proxy %r, %d iterations (no KL penalty), evaluated at "
                        "iterations %s", a + 1, len(config.rl_proxies), name, config.rl_iterations,
                        eval_points(config.rl_iterations, config.rl_eval_every))
            points = run_rl_arm(out / "rl" / name, make_trainer, proxy_scorer(name), gold, rl_prompts, held_out,
                                iterations=config.rl_iterations, every=config.rl_eval_every,
                                samples=config.rl_eval_samples, batch_size=config.sample_batch_size,
                                seed=config.seed + 3000)
            rl[name] = {"proxy_accuracy": proxies[name]["accuracy"],
                        **analyse_rl(points, gold_matrix.mean(1), proxy_matrices[name].mean(1),
                                     config.bootstrap_rounds, config.seed),
                        "train": GoldLog.read(out / "rl" / name / "iterations.jsonl", config.rl_iterations)}
            logger.info("      proxy %r: d %.2f at the end; gold %+.3f (best %+.3f at iteration %d), proxy %+.3f",
                        name, rl[name]["d"][-1], rl[name]["gold"]["R"][-1], max(rl[name]["gold"]["R"]),
                        rl[name]["gold"]["best_iteration"], rl[name]["proxy"]["R"][-1])

    # 5. analysis and report ----------------------------------------------------------------------
    logger.info("[5/5] best-of-n curves, fits and %d-round prompt bootstrap", config.bootstrap_rounds)
    arms = {}
    for spec in config.proxies:
        arms[spec.name] = {"proxy_accuracy": proxies[spec.name]["accuracy"], "pairs": proxies[spec.name]["pairs"],
                           "data_fraction": spec.data_fraction, "label_noise": spec.label_noise,
                           **analyse_bon(proxy_matrices[spec.name], gold_matrix, config.bootstrap_rounds, config.seed)}
    # a study resumed or extended over several calls: its time is the sum of theirs
    elapsed = out / "elapsed.json"
    calls = json.loads(elapsed.read_text()) if elapsed.exists() else []
    calls.append(round(time.perf_counter() - start, 1))
    elapsed.write_text(json.dumps(calls))
    summary = {"stage": stage, "heldout_prompts": len(held_out), "pool_samples": K,
               "gold_base_mean": float(gold_matrix.mean()), "bon": arms, "rl": rl,
               "hardware": hardware_description(torch.device("cpu")),
               "wall_seconds": round(sum(calls), 1), "calls_seconds": calls}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    plot_bon(out / "bon.png", arms)
    if rl:
        plot_rl(out / "rl.png", rl)
    write_report(out / "report.md", summary, config)
    return summary


def _check_same_study(out: Path, config: OveroptConfig, held_out: list, pair_prompts: list) -> None:
    """Refuse to continue a study directory written for other prompts or pool sizes (its caches would mix)."""
    key = {"held_out": json.dumps(held_out), "pair_prompts": json.dumps(pair_prompts),
           "pool_samples": config.pool_samples, "samples_per_prompt": config.samples_per_prompt,
           "temperature": config.temperature, "max_new_tokens": config.max_new_tokens, "gold": config.gold,
           "policy": config.policy.name_or_path}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    marker = out / "study-key.txt"
    if marker.exists() and marker.read_text().strip() != digest:
        raise ConfigError(f"{out} holds a study of other prompts or sampling options (its caches would mix with "
                          "this one's): choose another --out, or delete the directory to start over")
    marker.write_text(digest + "\n")
