"""Reward functions: the protocol, reward-model scoring and built-in rules."""

from .base import RewardError, RewardFn, call_reward, check_scores
from .model import RewardModelScorer
from .rules import RULES, make_rule

__all__ = ["RULES", "RewardError", "RewardFn", "RewardModelScorer", "call_reward", "check_scores", "make_rule"]
