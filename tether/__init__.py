"""tether: PPO for RLHF that is correct, runs on a laptop CPU, and keeps the step API.

Public API: ``PPOConfig``, ``PPOTrainer``, ``RunConfig``, ``RolloutConfig``, ``VLLMEngine``, ``RewardConfig``, ``RewardTrainer``,
``RewardModelScorer``, ``load_preferences``, ``load_causal_lm``, ``load_tokenizer``, and TRL 0.11's
PPO names (``AutoModelForCausalLMWithValueHead``, ``create_reference_model``, ``LengthSampler``,
``respond_to_batch``, ``set_seed``; ``tether.core`` for ``trl.core``). Heavy modules (transformers, the trainer) load on first use, so
``import tether.algo`` pulls in torch only.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "PPOConfig": "tether.config",
    "RunConfig": "tether.config",
    "RolloutConfig": "tether.config",
    "VLLMEngine": "tether.rollout.vllm",
    "PPOTrainer": "tether.train.trainer",
    "RewardModelScorer": "tether.rewards.model",
    "RewardConfig": "tether.config",
    "RewardTrainer": "tether.train.reward",
    "load_preferences": "tether.data.preferences",
    "load_causal_lm": "tether.models.loading",
    "load_tokenizer": "tether.models.loading",
    "LoraSettings": "tether.models.loading",
    # TRL 0.11's PPO names (tether.compat)
    "AutoModelForCausalLMWithValueHead": "tether.compat.models",
    "AutoModelForSeq2SeqLMWithValueHead": "tether.compat.models",
    "PreTrainedModelWrapper": "tether.compat.models",
    "create_reference_model": "tether.compat.models",
    "TextEnvironment": "tether.environment",
    "TextHistory": "tether.environment",
    "LengthSampler": "tether.compat.core",
    "respond_to_batch": "tether.compat.core",
    "set_seed": "tether.compat.core",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tether' has no attribute {name!r}")
