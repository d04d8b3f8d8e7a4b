"""PPO losses and their aggregation.

Every loss here takes per-token tensors ``[B, T]`` with a boolean ``mask`` and returns
``(loss, stats)``: ``loss`` a scalar already aggregated by ``aggregate`` with the given
normaliser, ``stats`` a dict of detached scalar tensors *summed* over valid tokens (divide by the
token count to get means), so that statistics from several micro-batches add up exactly.

[PPO] Schulman et al. 2017, "Proximal Policy Optimization Algorithms";
[DC] Ye et al. 2020, "Mastering Complex Control in MOBA Games with Deep RL" (dual clip);
[H24] Huang et al. 2024, "The N+ Implementation Details of RLHF with PPO".
"""

from __future__ import annotations

import torch

from .stats import masked_sum

LOSS_AGGREGATIONS = ("token-mean", "seq-mean-token-mean")


def aggregate(
    loss: torch.Tensor, mask: torch.Tensor, mode: str, num_tokens: float, num_seqs: float
) -> torch.Tensor:
    """Reduce a per-token loss ``[B, T]`` to a scalar.

    * ``token-mean``: ``Σ_valid loss / num_tokens``.
    * ``seq-mean-token-mean``: ``Σ_seq (Σ_t loss / n_seq) / num_seqs`` (each sequence weighs the same).

    ``num_tokens`` / ``num_seqs`` are the counts over the *whole optimiser step* (all micro-batches,
    all processes), not over this micro-batch: summing the micro-batch losses then gives exactly
    the loss of the full minibatch, whatever the split.
    """
    if mode == "token-mean":
        return masked_sum(loss, mask) / num_tokens
    if mode == "seq-mean-token-mean":
        per_seq = masked_sum(loss, mask, dim=1) / mask.sum(1).clamp(min=1)
        return per_seq.sum() / num_seqs
    raise ValueError(f"unknown loss aggregation {mode!r}; expected one of {LOSS_AGGREGATIONS}")


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float = 0.2,
    dual_clip: float | None = None,
    aggregation: str = "token-mean",
    num_tokens: float | None = None,
    num_seqs: float | None = None,
    is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate objective [PPO], optionally dual-clipped [DC].

    ``ρ_t = exp(logπ_new − logπ_old)``;  ``L_t = max(−A_t·ρ_t, −A_t·clip(ρ_t, 1−ε, 1+ε))``.
    With ``dual_clip = c > 1`` and ``A_t < 0`` the loss is further capped at ``−c·A_t``.

    logprobs (with grad), old_logprobs, advantages, mask: ``[B, T]``. ``num_tokens`` / ``num_seqs``
    default to this batch's counts. ``is_weights`` (``[B, T]``, no grad): per-token weights of the
    surrogate, ``w_t·L_t`` (truncated importance sampling of engine samples, ``tether.algo.offpolicy``). Stats (sums over valid tokens): ``clipped`` (tokens where
    the clipped term was the active one), ``approxkl`` (½(logπ_new − logπ_old)²), ``policykl``
    (logπ_old − logπ_new, TRL's "policykl"), ``ratio``.
    """
    num_tokens = mask.sum().item() if num_tokens is None else num_tokens
    num_seqs = mask.shape[0] if num_seqs is None else num_seqs
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    per_token = torch.maximum(unclipped, clipped)
    if dual_clip is not None:
        if dual_clip <= 1.0:
            raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
        capped = torch.minimum(per_token, -dual_clip * advantages)
        per_token = torch.where(advantages < 0, capped, per_token)
    if is_weights is not None:
        per_token = per_token * is_weights.detach()
    loss = aggregate(per_token, mask, aggregation, num_tokens, num_seqs)
    with torch.no_grad():
        stats = {
            "clipped": masked_sum((clipped > unclipped).float(), mask),
            "approxkl": masked_sum(0.5 * log_ratio.square(), mask),
            "policykl": masked_sum(-log_ratio, mask),
            "ratio": masked_sum(ratio, mask),
        }
    return loss, stats


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    cliprange_value: float | None = 0.2,
    aggregation: str = "token-mean",
    num_tokens: float | None = None,
    num_seqs: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss [H24]: ``½·max((V − R)², (clip(V, V_old − ε_v, V_old + ε_v) − R)²)``.

    values (with grad), old_values, returns, mask: ``[B, T]``. ``cliprange_value=None`` turns
    clipping off (plain ½(V − R)²). Stats (sums over valid tokens): ``clipped``, ``vpred``,
    ``error`` ((V − R)²).
    """
    num_tokens = mask.sum().item() if num_tokens is None else num_tokens
    num_seqs = mask.shape[0] if num_seqs is None else num_seqs
    unclipped = (values - returns).square()
    if cliprange_value is None:
        per_token, clipped_flags = unclipped, torch.zeros_like(unclipped)
    else:
        v_clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
        clipped = (v_clipped - returns).square()
        per_token = torch.maximum(unclipped, clipped)
        clipped_flags = (clipped > unclipped).float()
    loss = 0.5 * aggregate(per_token, mask, aggregation, num_tokens, num_seqs)
    with torch.no_grad():
        stats = {
            "clipped": masked_sum(clipped_flags, mask),
            "vpred": masked_sum(values.detach(), mask),
            "error": masked_sum(unclipped.detach(), mask),
        }
    return loss, stats
