"""What ``PPOTrainer``'s constructor builds around the policy: the frozen reference, the reward and
the value function (separate critic or value head), per the config."""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..config import PPOConfig
from ..models.critic import ValueHead, ValueModel, hidden_size_of, is_peft, unwrap_peft


def _freeze(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def make_reference(model: nn.Module, ref_model: nn.Module | None, dtype: torch.dtype | None = None) -> nn.Module | None:
    """The given reference, frozen; else a frozen copy of ``model``; None for a peft model, whose
    reference is the same weights with the adapters disabled (no second copy) [H24].

    ``dtype``: the copy's floating-point parameters are made in it directly (bf16 under bf16-mixed),
    never as a full-precision copy first, which would leave the process a copy's size larger."""
    if ref_model is not None:
        return _freeze(ref_model)
    if is_peft(model):
        return None
    memo = {id(p): nn.Parameter(p.detach().to(dtype, copy=True) if dtype is not None and p.is_floating_point() else p.detach().clone(),
                                requires_grad=False)
            for p in model.parameters()}  # always a copy (never the policy's storage); tied weights stay tied
    return _freeze(copy.deepcopy(model, memo))


def make_reward(reward_fn, reward_model, reward_tokenizer):
    """The reward of ``train()``: a callable as given, or a ``RewardModelScorer`` around a raw model."""
    if reward_fn is not None and reward_model is not None:
        raise ValueError("pass reward_fn or reward_model, not both")
    if reward_model is None or callable(reward_model) and not isinstance(reward_model, nn.Module):
        return reward_fn if reward_fn is not None else reward_model
    from ..rewards.model import RewardModelScorer

    if reward_tokenizer is None:
        raise ValueError("reward_model given as a model needs reward_tokenizer= (its own tokenizer)")
    return RewardModelScorer(reward_model, reward_tokenizer)


def make_critic(config: PPOConfig, model, critic, reward_fn, reward_model, reward_tokenizer, tokenizer, device):
    """``(critic, value_head)`` per ``config.value_model`` / ``config.critic_init`` (one of them, or
    neither for critic-free algorithms)."""
    if not config.needs_critic:
        if critic is not None:
            raise ValueError(f"algorithm={config.algorithm!r} uses no critic; do not pass critic=")
        return None, None
    if config.value_model == "head":
        return None, ValueHead(hidden_size_of(unwrap_peft(model).config)).to(device)
    if critic is not None:
        return critic.eval(), None
    if config.critic_init == "reward_model":
        rm = getattr(reward_fn, "model", reward_model)
        if rm is None:
            raise ValueError("critic_init='reward_model' needs a reward_model")
        _check_same_vocab(getattr(reward_fn, "tokenizer", reward_tokenizer), tokenizer)
        return ValueModel.from_reward_model(rm, shift=getattr(reward_fn, "shift", 0.0),
                                            scale=getattr(reward_fn, "scale", 1.0)).to(device).eval(), None
    return ValueModel.from_causal_lm(model).to(device).eval(), None


def _check_same_vocab(other_tokenizer, tokenizer) -> None:
    if other_tokenizer is None or other_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise ValueError("critic_init='reward_model' needs a reward model with the policy's tokenizer; "
                         "use critic_init='policy' for a reward model with its own tokenizer")
