"""Trainers: they wire data, models, rollout, rewards and algo together."""

from .ppo import PPOTrainer

__all__ = ["PPOTrainer"]
