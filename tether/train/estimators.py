"""From scores and per-token KL to advantages, and the policy loss: the one place where the algorithms differ.

``config.algorithm`` picks the estimator, ``config.policy_loss`` the loss; rollout, reward, KL and the
update loop are shared.

* ppo — per-token reward ``−β·kl_t`` + score on the last token, GAE with the critic's values,
  advantages whitened over valid tokens [H24];
* grpo — group-relative ``(r − mean_g) / std_g`` (or ``r − mean_g``) on the raw score, the same for
  every token of a response; KL enters the *loss* instead (see ``kl_in_loss``) [GRPO];
* dr_grpo — ``r − mean_g``, the loss normalised by a constant length [DRG];
* dapo — grpo's advantage; clip-higher, token-level loss and dynamic sampling are its defaults [DAPO];
* rloo — score minus ``β·Σ_t kl_t``, leave-one-out baseline over the group [RLOO], scaled by the
  batch std when ``whiten_advantages`` (not shifted, so equal-reward groups stay at 0);
* reinforce_pp — per-token reward as in PPO, reward-to-go returns, whitened over the batch [R++];
* reinforce_pp_baseline — the same with the group's mean score subtracted from each score first [R++].

References are listed in ``tether.algo.advantages`` and ``tether.algo.losses``.
"""

from __future__ import annotations

import functools

import torch

from ..algo import (
    POLICY_LOSSES,
    discounted_returns,
    gae,
    group_mean_baseline,
    grpo_advantages,
    masked_sum,
    masked_var,
    overlong_penalty,
    rloo_advantages,
    token_rewards,
    whiten,
)
from ..config import PPOConfig


def kl_in_loss(config: PPOConfig) -> bool:
    """GRPO and its descendants put β·KL(π‖π_ref) in the loss rather than in the reward."""
    return config.algorithm in ("grpo", "dr_grpo", "dapo")


def shape_scores(config: PPOConfig, scores: torch.Tensor, ended: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The scores the estimator sees before batch whitening: ``missing_eos_score`` for truncated
    responses, plus DAPO's soft overlong punishment. scores, lengths: ``[B]``; ended: ``[B]`` bool."""
    shaped = scores.float()
    if config.missing_eos_score is not None:
        shaped = torch.where(ended, shaped, torch.full_like(shaped, config.missing_eos_score))
    if config.overlong_buffer is not None:
        shaped = shaped + overlong_penalty(lengths, config.max_new_tokens, config.overlong_buffer,
                                           config.overlong_penalty)
    return shaped


def policy_loss_fn(config: PPOConfig):
    """The configured policy loss with its clip ranges bound; called as
    ``fn(logprobs, old_logprobs, advantages, mask, aggregation=..., num_tokens=..., num_seqs=...,
    norm_length=..., is_weights=...) -> (loss, stats)`` (``tether.algo.losses``)."""
    name = config.policy_loss
    if name == "ppo":
        return functools.partial(POLICY_LOSSES[name], cliprange=config.cliprange, dual_clip=config.dual_clip,
                                 cliprange_high=config.effective_cliprange_high)
    if name in ("gspo", "gspo_token"):
        low, high = config.sequence_cliprange
        return functools.partial(POLICY_LOSSES[name], cliprange=low, cliprange_high=high)
    if name == "cispo":  # no lower bound on the weight, as MiniMax-M1
        return functools.partial(POLICY_LOSSES[name], cliprange=None, cliprange_high=config.effective_cliprange_high)
    raise ValueError(f"unknown policy_loss {name!r}")


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
    if algo in ("ppo", "reinforce_pp", "reinforce_pp_baseline"):
        if algo == "reinforce_pp_baseline":
            scores = group_mean_baseline(scores, k)
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
    if algo in ("grpo", "dapo"):
        per_seq = grpo_advantages(scores, k, scale_by_std=config.grpo_scale_rewards)
        rewards = token_rewards(scores, zeros, 0.0, mask)
    elif algo == "dr_grpo":
        per_seq = group_mean_baseline(scores, k)
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


__all__ = ["estimate_advantages", "kl_in_loss", "policy_loss_fn", "shape_scores"]
