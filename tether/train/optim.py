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


class StepInBackward:
    """Gradient release: the optimiser steps each parameter inside the backward pass, as soon as its gradient
    is complete, and frees that gradient — so at most a few gradients exist at once instead of all of them
    (for full fine-tuning in float32, 4 bytes per parameter less at the peak).

    Uses the trainer's own optimiser (its state, parameter groups, learning-rate schedule and checkpoints are
    unchanged): when a parameter's gradient is final, it is the only one with a ``.grad``, so
    ``optimizer.step()`` updates exactly that parameter. The update is the one a step after the whole backward
    would make, as long as nothing needs every gradient first: so no global gradient clipping, no gradient
    accumulation over several backward passes, and one process (DDP and FSDP2 reduce gradients after
    backward). ``PPOConfig.validate`` and the trainer refuse those combinations.

    Between ``begin()`` and ``end()`` the hooks are live; ``end()`` returns the global gradient norm of what
    was stepped and whether a non-finite gradient was met (that parameter was not stepped; parameters whose
    gradients came earlier in the backward pass already were)."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer
        self.active = False
        self.non_finite = False
        self._squared_norm = torch.zeros((), dtype=torch.float64)
        params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
        self._handles = [p.register_post_accumulate_grad_hook(self._step) for p in params]

    def _step(self, param: torch.Tensor) -> None:
        if not self.active or param.grad is None:
            return
        squared = param.grad.detach().float().pow(2).sum()
        if not torch.isfinite(squared):
            self.non_finite = True
        else:
            self._squared_norm += squared.double().cpu()
            self.optimizer.step()  # only this parameter has a gradient now
        param.grad = None

    def begin(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.active, self.non_finite = True, False
        self._squared_norm.zero_()

    def end(self) -> tuple[float, bool]:
        """``(gradient norm, a non-finite gradient was met)`` of the backward passes since ``begin()``."""
        self.active = False
        return math.sqrt(self._squared_norm.item()), self.non_finite

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
