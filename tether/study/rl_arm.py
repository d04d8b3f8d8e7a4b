"""The over-optimisation study's RL arms: PPO against one proxy with no KL penalty, evaluated at fixed points.

An arm trains the policy (LoRA adapters; the reference is the adapters switched off) against one proxy reward
model and, every ``rl_eval_every`` iterations, samples ``rl_eval_samples`` answers to each held-out prompt (the
best-of-n pool's prompts, whose base samples give every prompt's base gold and proxy means). At each point:

  gold, proxy   mean over the prompt's samples − the prompt's base mean (so the base policy is R = 0 exactly)
  KL            ``Σ_t log π − log π_ref`` per sample (k1 on the policy's own samples, at the sampling
                temperature), averaged per prompt; d = √(mean KL)

``analyse_rl`` fits Gao et al.'s RL form R(d) = d(α − β ln d) and bootstraps prompts for every interval.

Resumable: the arm checkpoints at every evaluation point (``checkpoints/step-N``, the newest two kept) and writes ``eval-N.json``; a
rerun skips the written points and resumes training from the newest checkpoint — exactly, data order and RNG
streams included, so a killed arm ends where an uninterrupted one would.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .laws import bootstrap, fit_law, law, peak, r_squared

logger = logging.getLogger(__name__)


def eval_points(iterations: int, every: int) -> list[int]:
    """The iterations after which an arm is evaluated (and checkpointed): every ``every``-th; ``iterations``
    must be a multiple of ``every``."""
    if every < 1 or iterations < every or iterations % every:
        raise ValueError(f"rl_iterations ({iterations}) must be a positive multiple of rl_eval_every ({every})")
    return list(range(every, iterations + 1, every))


class GoldLog:
    """The reward PPO sees (a proxy), logging the gold score of the same answers per iteration to a JSONL file
    (for the training curve only: PPO never receives gold). Rows of iterations past a resumed checkpoint are
    superseded by the rerun's rows (``read`` keeps each iteration's last row)."""

    def __init__(self, proxy: Callable, gold: Callable, path: Path, trainer):
        self.proxy, self.gold, self.path, self.trainer = proxy, gold, path, trainer

    def __call__(self, prompts, completions):
        gold = [float(x) for x in self.gold(prompts, completions)]
        scores = self.proxy(prompts, completions)
        row = {"iteration": self.trainer.iteration + 1, "gold": sum(gold) / len(gold),
               "proxy": float(torch.as_tensor(scores, dtype=torch.float64).mean())}
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
        return scores

    @staticmethod
    def read(path: Path, iterations: int) -> list[dict]:
        """One row per iteration 1 … ``iterations`` (the last written for each)."""
        rows: dict[int, dict] = {}
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    row = json.loads(line)
                    rows[row["iteration"]] = row
        return [rows[i] for i in sorted(rows) if i <= iterations]


def run_rl_arm(directory: Path, make_trainer: Callable[[], Any], proxy: Callable, gold: Callable,
               train_prompts: Sequence, held_out: Sequence, *, iterations: int, every: int, samples: int,
               batch_size: int, seed: int) -> list[dict]:
    """Train one arm into ``directory`` (resumable) and return its evaluation points (``eval-N.json`` contents:
    iteration, per-sample prompt index, gold, proxy, kl, completion)."""
    from ..demo import sample

    directory.mkdir(parents=True, exist_ok=True)
    points = eval_points(iterations, every)
    files = {i: directory / f"eval-{i}.json" for i in points}
    trainer = None
    for i in points:
        if files[i].exists():
            continue
        if trainer is None:
            trainer = make_trainer()
        has_checkpoint = any((directory / "checkpoints").glob("step-*"))
        tap = GoldLog(proxy, gold, directory / "iterations.jsonl", trainer)
        trainer.train(list(train_prompts), reward_fn=tap, epochs=iterations, max_iterations=i, output_dir=directory,
                      save_every=every,
                      keep_checkpoints=2, resume="latest" if has_checkpoint else None)
        logger.info("      evaluating after iteration %d: %d held-out prompts x %d samples", i, len(held_out),
                    samples)
        flat = [p for p in held_out for _ in range(samples)]
        torch.manual_seed(seed + i)
        texts = sample(trainer, flat, batch_size, f"held-out, iteration {i}")
        row = {"iteration": i, "prompt": [j for j in range(len(held_out)) for _ in range(samples)],
               "gold": [float(x) for x in gold(flat, texts)],
               "proxy": [float(x) for x in proxy(flat, texts)],
               "kl": [float(x) for x in trainer.sequence_kl(flat, texts)], "completion": texts}
        tmp = files[i].with_suffix(".tmp")
        tmp.write_text(json.dumps(row))
        tmp.replace(files[i])
    if trainer is not None:
        trainer.close()
    return [json.loads(files[i].read_text()) for i in points]


def per_prompt_means(values: Sequence[float], prompt: Sequence[int], prompts: int) -> torch.Tensor:
    """``[prompts]`` mean of ``values`` per prompt index."""
    values = torch.tensor(values, dtype=torch.float64)
    index = torch.tensor(prompt, dtype=torch.long)
    sums = torch.zeros(prompts, dtype=torch.float64).index_add_(0, index, values)
    counts = torch.zeros(prompts, dtype=torch.float64).index_add_(0, index, torch.ones_like(values))
    return sums / counts


def analyse_rl(points: list[dict], base_gold: torch.Tensor, base_proxy: torch.Tensor, rounds: int,
               seed: int = 0) -> dict[str, Any]:
    """Gold and proxy against d for one arm, the fitted RL law and prompt-bootstrap intervals.

    points: ``run_rl_arm``'s evaluation rows; base_gold, base_proxy: ``[P]`` base-policy means per held-out
    prompt. Gold (or proxy) at a point is the mean over prompts of (the prompt's mean − its base mean); d =
    √(mean KL) (a negative KL estimate, possible near the start, counts as 0). ``falls``: the paired interval of
    (gold at the last point − gold at the best point) lies below 0. ``extrapolation``: the gold law fitted on
    the points of the run's first two thirds (by iteration) predicts each later point; ``holds`` when every
    later point's interval of (measured − predicted), fit and measurement resampled together, contains 0."""
    P = base_gold.shape[0]
    early = [c for c, p in enumerate(points) if p["iteration"] <= points[-1]["iteration"] * 2 / 3]
    late = [c for c in range(len(points)) if c not in early]
    gold = torch.stack([per_prompt_means(p["gold"], p["prompt"], P) - base_gold for p in points])  # [C, P]
    proxy = torch.stack([per_prompt_means(p["proxy"], p["prompt"], P) - base_proxy for p in points])
    kl = torch.stack([per_prompt_means(p["kl"], p["prompt"], P) for p in points])
    best = int(gold.mean(1).argmax())

    def stats(rows: torch.Tensor) -> dict[str, float]:
        d = kl[:, rows].mean(1).clamp(min=0).sqrt()
        out: dict[str, float] = {f"d@{c}": float(d[c]) for c in range(len(points))}
        for name, matrix in (("gold", gold), ("proxy", proxy)):
            mean = matrix[:, rows].mean(1)
            out.update({f"{name}@{c}": float(mean[c]) for c in range(len(points))})
            if int((d > 0).sum()) >= 2:
                alpha, beta = fit_law(d, mean, "rl")
                top = peak(alpha, beta, "rl")
                out.update({f"{name}/alpha": alpha, f"{name}/beta": beta,
                            f"{name}/d_star": top[0] if top else float("nan")})
        out["gold/last_minus_best"] = float((gold[-1, rows] - gold[best, rows]).mean())
        first = torch.tensor(early, dtype=torch.long)
        if late and int((d[first] > 0).sum()) >= 2:
            alpha, beta = fit_law(d[first], gold[first][:, rows].mean(1), "rl")
            out.update({"early/alpha": alpha, "early/beta": beta})
            for c in late:
                predicted = float(law(d[c], alpha, beta, "rl"))
                out[f"early/predicted@{c}"] = predicted
                out[f"early/residual@{c}"] = float(gold[c, rows].mean()) - predicted
        return out

    point = stats(torch.arange(P))
    intervals = bootstrap(stats, P, rounds=rounds, seed=seed)
    d = [point[f"d@{c}"] for c in range(len(points))]
    result: dict[str, Any] = {
        "iteration": [p["iteration"] for p in points], "d": d,
        "d_ci95": [list(intervals[f"d@{c}"]) for c in range(len(points))],
        "kl": [float(kl[c].mean()) for c in range(len(points))],
    }
    for name in ("gold", "proxy"):
        values = [point[f"{name}@{c}"] for c in range(len(points))]
        entry: dict[str, Any] = {"R": values, "R_ci95": [list(intervals[f"{name}@{c}"]) for c in range(len(points))]}
        if f"{name}/alpha" in point:
            alpha, beta = point[f"{name}/alpha"], point[f"{name}/beta"]
            top = peak(alpha, beta, "rl")
            entry.update({"alpha": alpha, "alpha_ci95": list(intervals.get(f"{name}/alpha", (alpha, alpha))),
                          "beta": beta, "beta_ci95": list(intervals.get(f"{name}/beta", (beta, beta))),
                          "r_squared": r_squared(torch.tensor(d), torch.tensor(values), alpha, beta, "rl"),
                          "d_star": top[0] if top else None, "R_star": top[1] if top else None,
                          "d_star_ci95": list(intervals[f"{name}/d_star"]) if f"{name}/d_star" in intervals else None})
        result[name] = entry
    drop = intervals["gold/last_minus_best"]
    result["gold"].update({"best_iteration": points[best]["iteration"], "last_minus_best": point["gold/last_minus_best"],
                           "last_minus_best_ci95": list(drop), "falls": best != len(points) - 1 and drop[1] < 0})
    if "early/alpha" in point:
        later = [{"iteration": points[c]["iteration"], "d": d[c], "measured": point[f"gold@{c}"],
                  "predicted": point[f"early/predicted@{c}"], "predicted_ci95": list(intervals[f"early/predicted@{c}"]),
                  "residual_ci95": list(intervals[f"early/residual@{c}"])} for c in late]
        result["gold"]["extrapolation"] = {
            "fit_iterations": [points[c]["iteration"] for c in early], "alpha": point["early/alpha"],
            "beta": point["early/beta"], "later": later,
            "holds": all(row["residual_ci95"][0] <= 0 <= row["residual_ci95"][1] for row in later)}
    return result


def rl_law_curve(arm: dict, samples: int = 100) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(d, R)`` of an arm's fitted gold law for plotting, or None without a fit."""
    if "alpha" not in arm["gold"]:
        return None
    fine = torch.linspace(0, max(arm["d"]) * 1.05, samples, dtype=torch.float64)
    return fine, law(fine, arm["gold"]["alpha"], arm["gold"]["beta"], "rl")
