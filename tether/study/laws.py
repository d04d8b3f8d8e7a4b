"""The arithmetic of the over-optimisation study (Gao, Schulman & Hilton 2022, arXiv 2210.10760): best-of-n
estimates, the KL of best-of-n, the two functional forms, their peaks, and prompt-bootstrap intervals.

Pure functions on float64 tensors; no models. Notation: ``d = √KL(π ‖ π_init)`` in √nats; ``R`` a score
re-centred so the initial policy scores 0.
  best-of-n   R(d) = d (α − β d)        peak d* = α / 2β,          R* = α² / 4β      (β > 0)
  RL          R(d) = d (α − β ln d)     peak d* = exp(α / β − 1),  R* = β d*         (β > 0)
Both are linear in (α, β): ordinary least squares on the columns [d, −d²] or [d, −d ln d], no intercept.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch


def kl_best_of_n(n: int) -> float:
    """KL(best-of-n ‖ base) = log n − (n − 1)/n nats (the analytic value for a continuous score; Stiennon et al.
    2020, used by Gao et al.). 0 at n = 1."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return math.log(n) - (n - 1) / n


def best_of_n_weights(k: int, n: int) -> torch.Tensor:
    """``[k]`` float64: the probability that the sample of rank i (0 = lowest selection score) is the best of n
    drawn without replacement from k: C(i, n−1) / C(k, n). Sums to 1; the unbiased best-of-n estimator of
    any quantity is its dot product with these weights (the samples sorted by the selection score)."""
    if not 1 <= n <= k:
        raise ValueError(f"best-of-n needs 1 <= n <= k samples, got n={n}, k={k}")
    total = math.comb(k, n)
    return torch.tensor([math.comb(i, n - 1) / total for i in range(k)], dtype=torch.float64)


def best_of_n(select: torch.Tensor, value: torch.Tensor, n: int) -> torch.Tensor:
    """Per prompt, the expected ``value`` of the sample with the highest ``select`` score among n of the k
    samples drawn without replacement — the unbiased estimator over all C(k, n) subsets.

    select, value: ``[P, k]`` (P prompts, k samples each). Returns ``[P]`` float64. Ties in ``select`` are
    broken by sample order (stable sort)."""
    select, value = torch.as_tensor(select, dtype=torch.float64), torch.as_tensor(value, dtype=torch.float64)
    if select.shape != value.shape or select.dim() != 2:
        raise ValueError(f"select and value must both be [prompts, samples], got {tuple(select.shape)} and "
                         f"{tuple(value.shape)}")
    order = torch.argsort(select, dim=1, stable=True)
    return value.gather(1, order) @ best_of_n_weights(select.shape[1], n)


def fit_law(d: Sequence[float] | torch.Tensor, r: Sequence[float] | torch.Tensor, form: str) -> tuple[float, float]:
    """``(α, β)`` by least squares of ``r`` on ``d`` for ``form`` "bon" (R = αd − βd²) or "rl" (R = αd − βd ln d);
    points with d = 0 carry no information about either and are dropped for "rl" (d ln d → 0)."""
    d, r = torch.as_tensor(d, dtype=torch.float64), torch.as_tensor(r, dtype=torch.float64)
    if form == "bon":
        columns = torch.stack([d, -d * d], dim=1)
    elif form == "rl":
        keep = d > 0
        d, r = d[keep], r[keep]
        columns = torch.stack([d, -d * torch.log(d)], dim=1)
    else:
        raise ValueError(f"form must be 'bon' or 'rl', got {form!r}")
    if columns.shape[0] < 2:
        raise ValueError(f"a fit needs at least 2 points with d > 0, got {columns.shape[0]}")
    solution = torch.linalg.lstsq(columns, r[:, None]).solution[:, 0]
    return float(solution[0]), float(solution[1])


def law(d: torch.Tensor | float, alpha: float, beta: float, form: str) -> torch.Tensor:
    """R(d) of the fitted form (``d ln d`` taken as 0 at d = 0)."""
    d = torch.as_tensor(d, dtype=torch.float64)
    if form == "bon":
        return d * (alpha - beta * d)
    safe = torch.where(d > 0, d, torch.ones_like(d))
    return torch.where(d > 0, d * (alpha - beta * torch.log(safe)), torch.zeros_like(d))


def peak(alpha: float, beta: float, form: str) -> tuple[float, float] | None:
    """``(d*, R*)`` of the fitted form, or None when β ≤ 0 (the curve never turns over)."""
    if beta <= 0:
        return None
    if form == "bon":
        return alpha / (2 * beta), alpha * alpha / (4 * beta)
    exponent = alpha / beta - 1
    if exponent > 700:  # beyond float range: no turn-over anywhere measurable
        return None
    d_star = math.exp(exponent)
    return d_star, beta * d_star


def r_squared(d, r, alpha: float, beta: float, form: str) -> float:
    """Share of the variance of ``r`` (about 0, the fits' fixed origin) explained by the fitted law."""
    r = torch.as_tensor(r, dtype=torch.float64)
    residual = ((r - law(d, alpha, beta, form)) ** 2).sum()
    total = (r ** 2).sum()
    return float(1 - residual / total) if total > 0 else float("nan")


def bootstrap(per_prompt: Callable[[torch.Tensor], dict[str, float]], prompts: int, rounds: int = 2000,
              seed: int = 0, level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile intervals of every statistic ``per_prompt(indices)`` returns, over ``rounds`` resamples of the
    prompt indices with replacement (a cluster bootstrap: a prompt's samples stay together). ``per_prompt``
    gets a ``[prompts]`` long tensor; statistics that are NaN in a resample (no peak) are left out of it."""
    generator = torch.Generator().manual_seed(seed)
    draws: dict[str, list[float]] = {}
    for _ in range(rounds):
        indices = torch.randint(0, prompts, (prompts,), generator=generator)
        for key, value in per_prompt(indices).items():
            if value == value:  # not NaN
                draws.setdefault(key, []).append(value)
    tail = (1 - level) / 2
    intervals = {}
    for key, values in draws.items():
        ordered = torch.tensor(sorted(values), dtype=torch.float64)
        intervals[key] = (float(torch.quantile(ordered, tail)), float(torch.quantile(ordered, 1 - tail)))
    return intervals
