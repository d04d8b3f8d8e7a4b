"""Per-token rewards and advantage estimation.

[Z19] Ziegler et al. 2019; [S20] Stiennon et al. 2020; [PPO] Schulman et al. 2017;
[GAE] Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized Advantage
Estimation"; [H24] Huang et al. 2024, "The N+ Implementation Details of RLHF with PPO";
[GRPO] Shao et al. 2024, "DeepSeekMath" (group relative policy optimisation);
[DRG] Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical Perspective" (Dr. GRPO);
[RLOO] Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for Learning
from Human Feedback in LLMs"; [R++] Hu 2025, "REINFORCE++: A Simple and Efficient Approach for
Aligning Large Language Models" (v2 adds REINFORCE++-baseline); [DAPO] Yu et al. 2025, "DAPO: An
Open-Source LLM Reinforcement Learning System at Scale".
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

    rewards, values: ``[B, T]`` float; mask: ``[B, T]`` bool. Masked positions carry nothing: after
    the last valid token they end the episode; inside a response (``response_masks`` that leave out
    tokens the policy did not choose, such as a tool's output) they are skipped, so the next *valid*
    token's value and advantage carry over them and the final score still reaches every action.
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
        valid = mask[:, t]
        advantages[:, t] = torch.where(valid, advantage, torch.zeros_like(advantage))
        next_value = torch.where(valid, values[:, t], next_value)
        next_advantage = torch.where(valid, advantage, next_advantage)
    returns = torch.where(mask, advantages + values, zeros)
    return advantages, returns


# ---------------------------------------------------------------- critic-free estimators
# Rows of a batch come in groups: rows [g·k, (g+1)·k) are k responses to the same prompt.


def _groups(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """``scores`` ``[B]`` as float64 ``[B / group_size, group_size]``: group statistics in float64, so
    that a group of equal rewards has a mean equal to each of them and a std of exactly 0."""
    if scores.dim() != 1:
        raise ValueError(f"scores must be [B], got shape {tuple(scores.shape)}")
    if group_size < 1 or scores.shape[0] % group_size:
        raise ValueError(f"batch of {scores.shape[0]} responses is not a whole number of groups of {group_size}")
    return scores.double().view(-1, group_size)


def _centred(g: torch.Tensor) -> torch.Tensor:
    """``g − mean(g)`` per row of ``g`` ``[G, k]`` (float64); exactly 0 in a row of equal values
    (float64's mean of k equal numbers can differ from them in the last bit: forced to 0)."""
    centred = g - g.mean(dim=1, keepdim=True)
    equal = (g == g[:, :1]).all(dim=1, keepdim=True)
    return torch.where(equal, torch.zeros_like(centred), centred)


def grpo_advantages(scores: torch.Tensor, group_size: int, scale_by_std: bool = True,
                    eps: float = 1e-4) -> torch.Tensor:
    """GRPO group-relative advantage [GRPO]: ``A_i = (r_i − mean_g r) / (std_g r + eps)``.

    scores: ``[B]`` with ``B = groups × group_size`` (consecutive rows share a prompt); std is the
    unbiased sample std of the group. ``scale_by_std=False`` gives Dr. GRPO's ``r_i − mean_g r``
    [DRG], which does not up-weight groups whose rewards barely differ. Returns ``[B]`` float32
    (statistics in float64); a group of equal rewards gets advantage exactly 0 for every member (it
    carries no learning signal).
    """
    g = _groups(scores, group_size)
    centred = _centred(g)
    if scale_by_std:
        std = g.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(centred)
        centred = centred / (std + eps)
    return centred.reshape(-1).float()


def group_mean_baseline(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """``r_i − mean_g r``: the score minus the mean of its prompt's group (REINFORCE++-baseline [R++],
    Dr. GRPO's advantage [DRG]). scores: ``[B]``; returns ``[B]`` float32, exactly 0 for a group of
    equal rewards."""
    return _centred(_groups(scores, group_size)).reshape(-1).float()


def informative_groups(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """``[B / group_size]`` bool: True for the groups whose scores are not all equal.

    A group of equal rewards gets advantage 0 from every group-relative estimator and so carries no
    gradient; DAPO's dynamic sampling [DAPO] keeps only informative groups. scores: ``[B]``.
    """
    g = _groups(scores, group_size)
    return ~(g == g[:, :1]).all(dim=1)


def rloo_advantages(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """REINFORCE leave-one-out [RLOO]: ``A_i = r_i − (1/(k−1)) Σ_{j≠i} r_j`` over the k responses
    of a prompt, an unbiased baseline that does not use ``r_i`` itself.

    scores: ``[B]`` (``B = groups × k``, ``k ≥ 2``) — for RLHF, the score minus ``β·KL`` of the
    sequence. Returns ``[B]``; equals ``k/(k−1)·(r_i − mean)``; 0 for a group of equal rewards.
    """
    if group_size < 2:
        raise ValueError("RLOO needs at least 2 responses per prompt (num_generations >= 2)")
    g = _groups(scores, group_size)
    centred = _centred(g)  # r_i − baseline_i = k/(k−1)·(r_i − mean), exactly 0 in an equal group
    return (centred * (group_size / (group_size - 1))).reshape(-1).float()


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """Reward-to-go ``G_t = Σ_{s ≥ t, valid} γ^{n(t, s)} r_s`` within each response (0 where masked),
    where ``n(t, s)`` counts the valid tokens after ``t`` up to ``s``.

    REINFORCE++ [R++] uses ``G_t`` of the per-token RLHF reward (``token_rewards``) as the
    advantage, whitened over all valid tokens of the global batch, with no critic.
    rewards: ``[B, T]``; mask: ``[B, T]`` bool. Returns ``[B, T]``. Masked positions inside a response
    (``response_masks`` holes, such as a tool's output) are skipped as ``gae`` skips them: they add no
    reward and no discount step, so ``gae(r, V=0, γ, λ=1)`` and this agree on every valid token.
    """
    rewards = torch.where(mask, rewards, torch.zeros_like(rewards))
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        valid = mask[:, t]
        running = torch.where(valid, rewards[:, t] + gamma * running, running)
        returns[:, t] = torch.where(valid, running, torch.zeros_like(running))
    return returns


def overlong_penalty(lengths: torch.Tensor, max_length: int, buffer: int, factor: float = 1.0) -> torch.Tensor:
    """DAPO's soft overlong punishment [DAPO, eq. 13], added to the score of each response.

    ``0`` for ``L ≤ L_max − L_cache``; ``((L_max − L_cache) − L) / L_cache`` (linear from 0 to −1) for
    ``L_max − L_cache < L ≤ L_max``; ``−1`` beyond; all times ``factor``. lengths: ``[B]`` response
    lengths in tokens; max_length: ``L_max`` (the longest response, ``max_new_tokens``); buffer:
    ``L_cache`` tokens (``1 ≤ buffer ≤ max_length``). Returns ``[B]`` float32, ≤ 0.
    """
    if not 1 <= buffer <= max_length:
        raise ValueError(f"overlong buffer must be in [1, {max_length}] tokens, got {buffer}")
    start = max_length - buffer
    over = (lengths.float() - start) / buffer
    return -factor * over.clamp(min=0.0, max=1.0)
