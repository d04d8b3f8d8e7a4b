"""PPO losses and their aggregation.

Every loss here takes per-token tensors ``[B, T]`` with a boolean ``mask`` and returns
``(loss, stats)``: ``loss`` a scalar already aggregated by ``aggregate`` with the given
normaliser, ``stats`` a dict of detached scalar tensors *summed* over valid tokens (divide by the
token count to get means), so that statistics from several micro-batches add up exactly.

[PPO] Schulman et al. 2017, "Proximal Policy Optimization Algorithms";
[DC] Ye et al. 2020, "Mastering Complex Control in MOBA Games with Deep RL" (dual clip);
[H24] Huang et al. 2024, "The N+ Implementation Details of RLHF with PPO";
[DAPO] Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning System at Scale" (clip-higher,
token-level normalisation over the batch);
[GSPO] Zheng et al. 2025, "Group Sequence Policy Optimization";
[CISPO] MiniMax 2025, "MiniMax-M1: Scaling Test-Time Compute Efficiently with Lightning Attention";
[DRG] Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical Perspective" (Dr. GRPO).

The policy losses take the same arguments, ``(logprobs, old_logprobs, advantages, mask, cliprange=,
cliprange_high=, aggregation=, num_tokens=, num_seqs=, norm_length=, is_weights=) -> (loss, stats)``,
return the same stats keys (``clipped``, ``approxkl``, ``policykl``, ``ratio``), and are listed by
name in ``POLICY_LOSSES``.
"""

from __future__ import annotations

import torch

from .stats import masked_sum

LOSS_AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def aggregate(
    loss: torch.Tensor, mask: torch.Tensor, mode: str, num_tokens: float, num_seqs: float,
    norm_length: float | None = None,
) -> torch.Tensor:
    """Reduce a per-token loss ``[B, T]`` to a scalar.

    * ``token-mean``: ``Σ_valid loss / num_tokens`` (every token weighs the same: DAPO's token-level
      normalisation over the global batch [DAPO]).
    * ``seq-mean-token-mean``: ``Σ_seq (Σ_t loss / n_seq) / num_seqs`` (each sequence weighs the same,
      GRPO's and GSPO's objective).
    * ``seq-mean-token-sum-norm``: ``Σ_valid loss / (num_seqs · norm_length)`` with a constant
      ``norm_length`` (the longest response): Dr. GRPO's normalisation [DRG], free of the length bias of
      dividing by a response's own length and of the batch dependence of dividing by its token count.

    ``num_tokens`` / ``num_seqs`` are the counts over the *whole optimiser step* (all micro-batches,
    all processes), not over this micro-batch: summing the micro-batch losses then gives exactly
    the loss of the full minibatch, whatever the split. Counts of 0 (a step whose rows are all left
    out of the loss) give a loss of 0.
    """
    if mode == "token-mean":
        return masked_sum(loss, mask) / max(num_tokens, 1)
    if mode == "seq-mean-token-mean":
        per_seq = masked_sum(loss, mask, dim=1) / mask.sum(1).clamp(min=1)
        return per_seq.sum() / max(num_seqs, 1)
    if mode == "seq-mean-token-sum-norm":
        if not norm_length or norm_length <= 0:
            raise ValueError("seq-mean-token-sum-norm needs norm_length > 0 (the longest response in tokens)")
        return masked_sum(loss, mask) / (max(num_seqs, 1) * norm_length)
    raise ValueError(f"unknown loss aggregation {mode!r}; expected one of {LOSS_AGGREGATIONS}")


def _ratio_stats(log_ratio: torch.Tensor, ratio: torch.Tensor, clipped: torch.Tensor,
                 mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """The stats every policy loss returns (sums over valid tokens, detached)."""
    with torch.no_grad():
        return {
            "clipped": masked_sum(clipped.float(), mask),
            "approxkl": masked_sum(0.5 * log_ratio.square(), mask),
            "policykl": masked_sum(-log_ratio, mask),
            "ratio": masked_sum(ratio, mask),
        }


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
    cliprange_high: float | None = None,
    norm_length: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate objective [PPO], with DAPO's decoupled clip range [DAPO], optionally
    dual-clipped [DC].

    ``ρ_t = exp(logπ_new − logπ_old)``;  ``L_t = max(−A_t·ρ_t, −A_t·clip(ρ_t, 1−ε_low, 1+ε_high))``
    with ``ε_low = cliprange`` and ``ε_high = cliprange_high`` (None: ``cliprange``). A larger ε_high
    ("clip-higher", 0.28 in DAPO) lets low-probability tokens with ``A > 0`` grow further before their
    gradient is cut, against entropy collapse. With ``dual_clip = c > 1`` and ``A_t < 0`` the loss is
    further capped at ``−c·A_t``. A token whose clipped term is the active one gets no gradient.

    logprobs (with grad), old_logprobs, advantages, mask: ``[B, T]``. ``num_tokens`` / ``num_seqs``
    default to this batch's counts. ``is_weights`` (``[B, T]``, no grad): per-token weights of the
    surrogate, ``w_t·L_t`` (truncated importance sampling of engine samples, ``tether.algo.offpolicy``).
    Stats (sums over valid tokens): ``clipped`` (tokens where the clipped term was the active one),
    ``approxkl`` (½(logπ_new − logπ_old)²), ``policykl`` (logπ_old − logπ_new, TRL's "policykl"),
    ``ratio``.
    """
    num_tokens = mask.sum().item() if num_tokens is None else num_tokens
    num_seqs = mask.shape[0] if num_seqs is None else num_seqs
    high = cliprange if cliprange_high is None else cliprange_high
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + high)
    per_token = torch.maximum(unclipped, clipped)
    if dual_clip is not None:
        if dual_clip <= 1.0:
            raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
        capped = torch.minimum(per_token, -dual_clip * advantages)
        per_token = torch.where(advantages < 0, capped, per_token)
    if is_weights is not None:
        per_token = per_token * is_weights.detach()
    loss = aggregate(per_token, mask, aggregation, num_tokens, num_seqs, norm_length)
    return loss, _ratio_stats(log_ratio, ratio, clipped > unclipped, mask)


def _sequence_log_ratio(logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``log s_i = (1/|y_i|) Σ_t (logπ − logπ_old)`` over the valid tokens of each row: ``[B, 1]``."""
    log_ratio = torch.where(mask, logprobs - old_logprobs, torch.zeros_like(logprobs))
    return log_ratio.sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp(min=1)


def gspo_policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
    cliprange: float = 3e-4, cliprange_high: float | None = 4e-4, *, aggregation: str = "seq-mean-token-mean",
    num_tokens: float | None = None, num_seqs: float | None = None, norm_length: float | None = None,
    is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GSPO, the sequence-level clipped objective [GSPO, eq. 5-7].

    ``s_i = (π(y_i|x)/π_old(y_i|x))^(1/|y_i|) = exp((1/|y_i|) Σ_t log ρ_{i,t})``, the geometric mean of
    the token ratios; ``L_i = max(−Â_i·s_i, −Â_i·clip(s_i, 1−ε_low, 1+ε_high))`` with ``Â_i`` the
    response's advantage (the mean of its token advantages: the same number on every token for the
    group estimators it is meant for). ``L_i`` is placed on every valid token of response ``i`` and
    reduced by ``aggregation``: ``seq-mean-token-mean`` gives the paper's ``(1/G) Σ_i L_i``. A response
    whose ratio is clipped gets no gradient on any token; the paper's ranges are ε_low = 3e-4,
    ε_high = 4e-4 (sequence ratios move far less than token ratios).

    Shapes as ``ppo_policy_loss`` (``[B, T]``); ``is_weights`` multiplies the per-token loss. Stats
    count tokens (``clipped``: tokens of clipped responses; ``ratio``: ``s_i`` summed over tokens).
    """
    num_tokens = mask.sum().item() if num_tokens is None else num_tokens
    num_seqs = mask.shape[0] if num_seqs is None else num_seqs
    high = cliprange if cliprange_high is None else cliprange_high
    seq_adv = (torch.where(mask, advantages, torch.zeros_like(advantages)).sum(1, keepdim=True)
               / mask.sum(1, keepdim=True).clamp(min=1))
    log_s = _sequence_log_ratio(logprobs, old_logprobs, mask)
    s = torch.exp(log_s.clamp(max=10.0))  # [B, 1]; the clamp only guards exp() against wild off-policy rows
    unclipped = -seq_adv * s
    clipped = -seq_adv * torch.clamp(s, 1.0 - cliprange, 1.0 + high)
    per_token = torch.maximum(unclipped, clipped).expand_as(logprobs)
    if is_weights is not None:
        per_token = per_token * is_weights.detach()
    loss = aggregate(per_token, mask, aggregation, num_tokens, num_seqs, norm_length)
    return loss, _ratio_stats(logprobs - old_logprobs, s.expand_as(logprobs), (clipped > unclipped).expand_as(logprobs), mask)


def gspo_token_policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
    cliprange: float = 3e-4, cliprange_high: float | None = 4e-4, *, aggregation: str = "seq-mean-token-mean",
    num_tokens: float | None = None, num_seqs: float | None = None, norm_length: float | None = None,
    is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GSPO-token [GSPO, eq. 13-14]: per-token advantages with the sequence-level ratio.

    ``s_{i,t} = sg[s_i] · π(y_{i,t}) / sg[π(y_{i,t})]``: its value is the sequence ratio ``s_i`` on every
    token, its gradient that of the token's own log-probability scaled by ``s_i``;
    ``L_{i,t} = max(−Â_{i,t}·s_{i,t}, −Â_{i,t}·clip(s_{i,t}, 1−ε_low, 1+ε_high))``. With the same
    advantage on every token of a response it equals ``gspo_policy_loss`` in value and gradient
    (under ``seq-mean-token-mean``); unlike it, it accepts per-token advantages (GAE, REINFORCE++).
    Shapes, aggregation and stats as ``gspo_policy_loss``.
    """
    num_tokens = mask.sum().item() if num_tokens is None else num_tokens
    num_seqs = mask.shape[0] if num_seqs is None else num_seqs
    high = cliprange if cliprange_high is None else cliprange_high
    log_s = _sequence_log_ratio(logprobs, old_logprobs, mask).detach()
    log_ratio = (logprobs - logprobs.detach() + log_s).clamp(max=10.0)
    s = torch.exp(log_ratio)
    unclipped = -advantages * s
    clipped = -advantages * torch.clamp(s, 1.0 - cliprange, 1.0 + high)
    per_token = torch.maximum(unclipped, clipped)
    if is_weights is not None:
        per_token = per_token * is_weights.detach()
    loss = aggregate(per_token, mask, aggregation, num_tokens, num_seqs, norm_length)
    return loss, _ratio_stats(logprobs - old_logprobs, s, clipped > unclipped, mask)


def cispo_policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
    cliprange: float | None = None, cliprange_high: float | None = 0.28, *, aggregation: str = "token-mean",
    num_tokens: float | None = None, num_seqs: float | None = None, norm_length: float | None = None,
    is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CISPO, clipped importance-sampling-weight policy optimisation [CISPO, eq. 4-5].

    ``L_t = −sg(clip(ρ_t, 1−ε_low, 1+ε_high)) · Â_t · log π(y_t)``: a REINFORCE loss weighted by the
    importance ratio, which is clipped *and* detached, so every token keeps its gradient
    ``−ŵ_t·Â_t·∇log π(y_t)`` (PPO's clip drops the gradient of a clipped token altogether, and with
    it the rare tokens that open a new line of reasoning). ``cliprange=None`` sets no lower bound
    (MiniMax-M1 "did not impose a lower bound"); ``cliprange_high=None`` no upper bound.
    The loss *value* is not a surrogate of the return (it contains ``log π``); its gradient is.

    Shapes and aggregation as ``ppo_policy_loss``; the paper normalises by the batch's token count
    (``token-mean``). Stats: ``clipped`` counts tokens whose weight was truncated.
    """
    num_tokens = mask.sum().item() if num_tokens is None else num_tokens
    num_seqs = mask.shape[0] if num_seqs is None else num_seqs
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    low = None if cliprange is None else 1.0 - cliprange
    high = None if cliprange_high is None else 1.0 + cliprange_high
    weight = torch.clamp(ratio, min=low, max=high).detach() if (low, high) != (None, None) else ratio.detach()
    per_token = -weight * advantages * logprobs
    if is_weights is not None:
        per_token = per_token * is_weights.detach()
    loss = aggregate(per_token, mask, aggregation, num_tokens, num_seqs, norm_length)
    truncated = torch.zeros_like(ratio, dtype=torch.bool)
    if low is not None:
        truncated |= ratio < low
    if high is not None:
        truncated |= ratio > high
    return loss, _ratio_stats(log_ratio, ratio, truncated, mask)


POLICY_LOSSES = {
    "ppo": ppo_policy_loss,
    "gspo": gspo_policy_loss,
    "gspo_token": gspo_token_policy_loss,
    "cispo": cispo_policy_loss,
}
"""The policy losses by the name ``PPOConfig.policy_loss`` takes."""


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    cliprange_value: float | None = 0.2,
    aggregation: str = "token-mean",
    num_tokens: float | None = None,
    num_seqs: float | None = None,
    norm_length: float | None = None,
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
    loss = 0.5 * aggregate(per_token, mask, aggregation, num_tokens, num_seqs, norm_length)
    with torch.no_grad():
        stats = {
            "clipped": masked_sum(clipped_flags, mask),
            "vpred": masked_sum(values.detach(), mask),
            "error": masked_sum(unclipped.detach(), mask),
        }
    return loss, stats
