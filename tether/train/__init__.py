"""Trainers: they wire data, models, rollout, rewards and algo together."""

from .trainer import PPOTrainer

__all__ = ["PPOTrainer"]
