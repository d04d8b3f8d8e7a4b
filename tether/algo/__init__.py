"""Pure tensor math for RLHF: no models, no I/O, no configs. Imports torch only.

Every function takes tensors (``[B, T]`` per-token, ``[B]`` per-sequence) and a boolean
``mask`` where True marks a valid response token.
"""

from .advantages import (
    discounted_returns,
    gae,
    group_mean_baseline,
    grpo_advantages,
    informative_groups,
    last_valid_index,
    overlong_penalty,
    rloo_advantages,
    token_rewards,
)
from .kl import KL_ESTIMATORS, KL_LOSS_ESTIMATORS, AdaptiveKLController, FixedKLController, kl_penalty
from .offpolicy import logprob_gap, truncated_importance_weights
from .preference import bradley_terry_loss
from .losses import (
    LOSS_AGGREGATIONS,
    POLICY_LOSSES,
    aggregate,
    cispo_policy_loss,
    gspo_policy_loss,
    gspo_token_policy_loss,
    ppo_policy_loss,
    value_loss,
)
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
    "KL_LOSS_ESTIMATORS",
    "LOSS_AGGREGATIONS",
    "POLICY_LOSSES",
    "AdaptiveKLController",
    "FixedKLController",
    "RunningMoments",
    "aggregate",
    "bradley_terry_loss",
    "cispo_policy_loss",
    "discounted_returns",
    "entropy_from_logits",
    "gae",
    "group_mean_baseline",
    "grpo_advantages",
    "gspo_policy_loss",
    "gspo_token_policy_loss",
    "informative_groups",
    "kl_penalty",
    "last_valid_index",
    "logprob_gap",
    "logprobs_from_logits",
    "masked_mean",
    "rloo_advantages",
    "masked_sum",
    "masked_var",
    "overlong_penalty",
    "ppo_policy_loss",
    "token_rewards",
    "truncated_importance_weights",
    "value_loss",
    "whiten",
]
