"""From scores and per-token KL to advantages: the one place where the algorithms differ.

``config.algorithm`` picks the estimator; rollout, reward, KL and the clipped update are shared.

* ppo — per-token reward ``−β·kl_t`` + score on the last token, GAE with the critic's values,
  advantages whitened over valid tokens [H24];
* grpo — group-relative ``(r − mean_g) / std_g`` (or Dr. GRPO's ``r − mean_g``) on the raw score,
  the same for every token of a response; KL enters the *loss* instead (see ``kl_in_loss``) [GRPO];
* rloo — score minus ``β·Σ_t kl_t``, leave-one-out baseline over the group [RLOO], scaled by the
  batch std when ``whiten_advantages`` (not shifted, so equal-reward groups stay at 0);
* reinforce_pp — per-token reward as in PPO, reward-to-go returns, whitened over the batch [R++].

References are listed in ``tether.algo.advantages``.
"""

from __future__ import annotations

import torch

from ..algo import (
    discounted_returns,
    gae,
    grpo_advantages,
    masked_sum,
    masked_var,
    rloo_advantages,
    token_rewards,
    whiten,
)
from ..config import PPOConfig


def kl_in_loss(config: PPOConfig) -> bool:
    """GRPO puts β·KL(π‖π_ref) in the loss rather than in the reward."""
    return config.algorithm == "grpo"


def estimate_advantages(config: PPOConfig, scores: torch.Tensor, kl: torch.Tensor, values: torch.Tensor,
                        mask: torch.Tensor, kl_coef: float,
                        all_reduce=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(advantages, returns, rewards)``, each ``[B, T]`` and 0 where masked.

    scores: ``[B]`` shaped sequence scores; kl: ``[B, T]`` per-token KL estimates (0 where
    masked); values: ``[B, T]`` critic values (ignored without a critic); mask: ``[B, T]`` bool;
    kl_coef: the current β. ``returns`` are the critic's targets (PPO) and are 0 for critic-free
    estimators; ``rewards`` are the per-token rewards the estimator used (for ``objective/rlhf_reward``).
    ``all_reduce`` sums over data-parallel processes: batch whitening then uses global statistics
    (groups never span processes: each holds whole groups).
    """
    algo, k = config.algorithm, config.num_generations
    zeros = torch.zeros_like(kl)
    if algo in ("ppo", "reinforce_pp"):
        rewards = token_rewards(scores, kl, kl_coef, mask)
        if algo == "ppo" and config.whiten_rewards:
            rewards = whiten(rewards, mask, shift_mean=False, all_reduce=all_reduce)
        if algo == "ppo":
            advantages, returns = gae(rewards, values, mask, config.gamma, config.lam)
            if config.whiten_advantages:
                advantages = whiten(advantages, mask, shift_mean=config.advantage_shift_mean, all_reduce=all_reduce)
            return advantages, returns, rewards
        advantages = whiten(discounted_returns(rewards, mask, config.gamma), mask, all_reduce=all_reduce)
        return advantages, zeros, rewards
    if algo == "grpo":
        per_seq = grpo_advantages(scores, k, scale_by_std=config.grpo_scale_rewards)
        rewards = token_rewards(scores, zeros, 0.0, mask)
    elif algo == "rloo":
        shaped = scores - kl_coef * masked_sum(kl, mask, dim=1)
        per_seq = rloo_advantages(shaped, k)
        rewards = token_rewards(scores, kl, kl_coef, mask)
    else:
        raise ValueError(f"unknown algorithm {algo!r}")
    advantages = torch.where(mask, per_seq[:, None].to(kl.dtype).expand_as(kl), zeros)
    if algo == "rloo" and config.whiten_advantages:
        # divide by the batch std only: a group of equal rewards keeps advantage 0
        advantages = torch.where(mask, advantages * torch.rsqrt(masked_var(advantages, mask, all_reduce=all_reduce) + 1e-8), zeros)
    return advantages, zeros, rewards


__all__ = ["estimate_advantages", "kl_in_loss"]
