"""The gap between the engine that sampled a rollout and the model that trains on it.

A separate rollout engine (vLLM) samples from its own copy of the policy, with its own kernels and,
in bf16, its own rounding, so its ``π_engine`` differs from the trainer's ``π_old``, which PPO
recomputes from the same forward it trains with [H24]. Two tools, on per-token ``[B, T]`` tensors
with a boolean ``mask``:

* ``logprob_gap``: ``|log π_old − log π_engine|`` summed over valid tokens, its count and its
  maximum: small in fp32 (kernel noise), large when the engine was not given the new weights.
* ``truncated_importance_weights``: ``w_t = min(π_old / π_engine, C)`` [TIS], the correction of the
  policy-gradient for samples drawn from ``π_engine`` instead of ``π_old``, truncated at ``C`` to keep
  its variance bounded.

[TIS] Yao et al. 2025, "Your Efficient RL Framework Secretly Brings You Off-Policy RL Training";
[H24] Huang et al. 2024, "The N+ Implementation Details of RLHF with PPO".
"""

from __future__ import annotations

import torch

from .stats import masked_sum


def logprob_gap(logprobs: torch.Tensor, engine_logprobs: torch.Tensor,
                mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """``|log π_old − log π_engine|`` over valid tokens. All inputs ``[B, T]``.

    Returns scalar tensors ``sum`` (nats, summed over valid tokens), ``count`` (valid tokens) and
    ``max`` (nats; 0 with no valid token): sums and maxima, so that micro-batches and processes combine
    exactly (mean = Σ sum / Σ count)."""
    gap = (logprobs.float() - engine_logprobs.float()).abs()
    valid = torch.where(mask, gap, torch.zeros_like(gap))
    return {"sum": valid.sum(), "count": mask.sum().to(gap.dtype),
            "max": valid.max() if valid.numel() else gap.new_zeros(())}


def truncated_importance_weights(logprobs: torch.Tensor, engine_logprobs: torch.Tensor, mask: torch.Tensor,
                                 cap: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """TIS weights [TIS]: ``w_t = min(exp(log π_old − log π_engine), C)``, 0 where masked (no grad).

    logprobs (trainer's old), engine_logprobs, mask: ``[B, T]``; ``cap = C ≥ 1``. The clipped PPO
    surrogate of each token is multiplied by ``w_t``. Stats (sums over valid tokens): ``ratio``
    (the untruncated ratio), ``capped`` (tokens where the cap was active)."""
    if cap < 1:
        raise ValueError(f"the TIS cap must be ≥ 1, got {cap}")
    ratio = torch.exp(logprobs.detach().float() - engine_logprobs.float())
    weights = torch.where(mask, ratio.clamp(max=cap), torch.zeros_like(ratio))
    stats = {"ratio": masked_sum(ratio, mask), "capped": masked_sum((ratio > cap).float(), mask)}
    return weights, stats
