"""Rollout engines and the Rollout/Experience dataclasses."""

from .engine import Engine, SamplingParams, truncate_after_stop
from .hf import HFEngine
from .types import Experience, Rollout, concat_rollouts
from .vllm import VLLMEngine

__all__ = ["Engine", "Experience", "HFEngine", "Rollout", "SamplingParams", "concat_rollouts", "truncate_after_stop", "VLLMEngine"]
