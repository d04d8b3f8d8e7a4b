"""Masked statistics and log-probabilities.

Mask convention (one for the whole library): ``mask`` is a boolean tensor of the same shape as the
values; ``True`` marks a valid response token. Masked positions are *never* read: every reduction
multiplies by the mask or selects with it, so whatever sits in padded positions (zeros, garbage,
NaN-free sentinels) cannot leak into a statistic.
"""

from __future__ import annotations

from typing import Callable

import torch


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of ``values`` over positions where ``mask`` is True.

    values, mask: same shape (e.g. ``[B, T]``). Returns a scalar, or the sum along ``dim``.
    Uses ``where`` rather than multiplication so that inf/NaN in masked positions cannot leak.
    """
    zeros = torch.zeros((), dtype=values.dtype, device=values.device)
    kept = torch.where(mask, values, zeros)
    return kept.sum() if dim is None else kept.sum(dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``values`` over valid positions.

    values, mask: same shape. With ``dim=None`` returns a scalar; otherwise the mean along ``dim``
    (rows with no valid position give 0, not NaN).
    """
    count = mask.sum() if dim is None else mask.sum(dim)
    return masked_sum(values, mask, dim) / count.clamp(min=1)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True,
               all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Variance of ``values`` over all valid positions (scalar).

    ``unbiased`` applies Bessel's correction n/(n-1), as the reference implementations do.
    Raises ValueError when fewer than two positions are valid and ``unbiased`` is set.
    ``all_reduce``: sums a tensor over data-parallel processes, so mean and variance are those of
    the global batch (None: this process only).
    """
    reduce = all_reduce or (lambda t: t)
    n = reduce(mask.sum().to(values.dtype))
    mean = reduce(masked_sum(values, mask)) / n.clamp(min=1)
    var = reduce(masked_sum((values - mean) ** 2, mask)) / n.clamp(min=1)
    if unbiased:
        if n < 2:
            raise ValueError("masked_var: need at least 2 valid positions for an unbiased variance")
        var = var * n / (n - 1)
    return var


def whiten(
    values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8,
    all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Whiten ``values`` over the valid positions: ``(x - mean) / sqrt(var + eps)`` [H24].

    values, mask: ``[B, T]`` (any equal shapes). Mean and (unbiased) variance come from valid
    positions only — of the global batch when ``all_reduce`` sums over data-parallel processes.
    With ``shift_mean=False`` the mean is added back, so only the scale changes.
    Masked positions are set to 0 in the output.
    A single valid position cannot be whitened (variance undefined): it is returned centred to 0
    (or unchanged when ``shift_mean=False``).
    """
    reduce = all_reduce or (lambda t: t)
    n = reduce(mask.sum().to(values.dtype))
    mean = reduce(masked_sum(values, mask)) / n.clamp(min=1)
    if n < 2:
        out = values - mean if shift_mean else values
        return torch.where(mask, out, torch.zeros_like(out))
    var = masked_var(values, mask, all_reduce=all_reduce)
    out = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(mask, out, torch.zeros_like(out))


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Log-probability of each chosen token: ``log softmax(logits)[..., token]``.

    logits: ``[B, T, V]`` (already divided by the sampling temperature); tokens: ``[B, T]`` int.
    Returns ``[B, T]`` float32 (logits are upcast). Computed as ``logit[token] - logsumexp(logits)``
    so no ``[B, T, V]`` log-softmax tensor is materialised.
    """
    logits = logits.float()
    chosen = torch.gather(logits, -1, tokens.unsqueeze(-1)).squeeze(-1)
    return chosen - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution at each position, in nats.

    logits: ``[B, T, V]``. Returns ``[B, T]``: ``logsumexp(z) - sum softmax(z) * z``.
    """
    logits = logits.float()
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)


class RunningMoments:
    """Running mean and std of a stream of batches (Chan et al.'s parallel update), as TRL 0.11's
    ``use_score_scaling`` kept them for the scores.

    ``update(xs)`` folds in a batch ``xs`` (any shape; ``all_reduce`` sums over data-parallel
    processes) and returns the batch's ``(mean, unbiased std)``. Afterwards ``mean`` is the mean of
    everything seen, ``var`` its population variance and ``std`` its unbiased standard deviation.
    The state starts as one pseudo-observation of mean 0, variance 1 and weight 1e-24 (TRL's)."""

    def __init__(self):
        self.mean, self.var, self.std, self.count = 0.0, 1.0, 1.0, 1e-24

    @torch.no_grad()
    def update(self, xs: torch.Tensor, all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
               ) -> tuple[float, float]:
        reduce = all_reduce or (lambda t: t)
        xs = xs.double()
        count = reduce(torch.tensor(float(xs.numel()), dtype=torch.float64, device=xs.device)).item()
        mean = reduce(xs.sum()).item() / count
        var = reduce(((xs - mean) ** 2).sum()).item() / count
        delta = mean - self.mean
        total = self.count + count
        sum_sq = self.var * self.count + delta ** 2 * self.count * count / total + var * count
        self.mean += delta * count / total
        self.var = sum_sq / total
        self.std = (self.var * total / (total - 1)) ** 0.5
        self.count = total
        return mean, (var * count / (count - 1)) ** 0.5 if count > 1 else 0.0

    def state_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "var": self.var, "std": self.std, "count": self.count}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.mean, self.var, self.std, self.count = (float(state[k]) for k in ("mean", "var", "std", "count"))
