"""Pure tensor math for RLHF: no models, no I/O, no configs. Imports torch only.

Every function takes tensors (``[B, T]`` per-token, ``[B]`` per-sequence) and a boolean
``mask`` where True marks a valid response token.
"""

from .advantages import (
    discounted_returns,
    gae,
    grpo_advantages,
    last_valid_index,
    rloo_advantages,
    token_rewards,
)
from .kl import KL_ESTIMATORS, AdaptiveKLController, FixedKLController, kl_penalty
from .offpolicy import logprob_gap, truncated_importance_weights
from .preference import bradley_terry_loss
from .losses import LOSS_AGGREGATIONS, aggregate, ppo_policy_loss, value_loss
from .stats import (
    RunningMoments,
    entropy_from_logits,
    logprobs_from_logits,
    masked_mean,
    masked_sum,
    masked_var,
    whiten,
)

__all__ = [
    "KL_ESTIMATORS",
    "LOSS_AGGREGATIONS",
    "AdaptiveKLController",
    "FixedKLController",
    "RunningMoments",
    "aggregate",
    "bradley_terry_loss",
    "discounted_returns",
    "entropy_from_logits",
    "gae",
    "grpo_advantages",
    "kl_penalty",
    "last_valid_index",
    "logprob_gap",
    "logprobs_from_logits",
    "masked_mean",
    "rloo_advantages",
    "masked_sum",
    "masked_var",
    "ppo_policy_loss",
    "token_rewards",
    "truncated_importance_weights",
    "value_loss",
    "whiten",
]
