"""Per-token rewards and advantage estimation.

[Z19] Ziegler et al. 2019; [S20] Stiennon et al. 2020; [PPO] Schulman et al. 2017;
[GAE] Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized Advantage
Estimation"; [H24] Huang et al. 2024, "The N+ Implementation Details of RLHF with PPO".
"""

from __future__ import annotations

import torch


def last_valid_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last True position in each row of ``mask`` ``[B, T]`` -> ``[B]`` (long).

    Rows with no valid position return 0 (the caller should not have such rows; see Rollout).
    """
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask, positions, torch.zeros_like(positions)).max(dim=1).values


def token_rewards(
    scores: torch.Tensor, kl: torch.Tensor, kl_coef: float, mask: torch.Tensor
) -> torch.Tensor:
    """RLHF per-token reward: ``r_t = −β·kl_t``, plus the score on the last valid token [Z19, S20].

    scores: ``[B]`` sequence-level scores; kl: ``[B, T]`` per-token KL estimates;
    mask: ``[B, T]`` bool response mask. Returns ``[B, T]`` with zeros at masked positions.
    """
    rewards = torch.where(mask, -kl_coef * kl, torch.zeros_like(kl))
    last = last_valid_index(mask)
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last] += scores.to(rewards.dtype)
    return rewards


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over each response [GAE, PPO].

    ``δ_t = r_t + γ·V_{t+1} − V_t`` and ``A_t = δ_t + γλ·A_{t+1}``, computed backwards, where
    ``V`` and ``A`` after the last valid token are 0 (the episode ends there).
    Returns ``(advantages, returns)`` with ``returns = A + V``; both ``[B, T]``, 0 where masked.

    rewards, values: ``[B, T]`` float; mask: ``[B, T]`` bool. Valid positions must form a prefix
    of each row (responses are right-padded), which is what makes "V after the last valid token"
    the same as "the next masked position".
    """
    zeros = torch.zeros_like(values)
    values = torch.where(mask, values, zeros)
    rewards = torch.where(mask, rewards, zeros)
    advantages = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])
    next_advantage = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        advantage = torch.where(mask[:, t], advantage, torch.zeros_like(advantage))
        advantages[:, t] = advantage
        next_value, next_advantage = values[:, t], advantage
    returns = torch.where(mask, advantages + values, zeros)
    return advantages, returns
