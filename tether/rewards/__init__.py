"""Reward functions: the protocol, reward-model scoring and built-in rules."""

from .base import NonFiniteRewardError, RewardError, RewardFn, call_reward, check_scores
from .model import RewardModelScorer
from .remote import RemoteReward
from .rules import RULES, make_rule

__all__ = ["RULES", "NonFiniteRewardError", "RemoteReward", "RewardError", "RewardFn", "RewardModelScorer", "call_reward", "check_scores", "make_rule"]
