"""Generation with a transformers model's own ``generate`` (KV cache, batched, no Python loops)."""

from __future__ import annotations

import torch

from .engine import SamplingParams, truncate_after_stop
from .types import Rollout


class HFEngine:
    """Samples from the policy module itself (no weight copy), with the model's KV cache."""

    def __init__(self, model):
        self.model = model

    def update_weights(self, model) -> None:
        self.model = model  # same module: nothing to copy

    @torch.no_grad()
    def generate(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, params: SamplingParams) -> Rollout:
        from transformers import GenerationConfig

        # a fresh GenerationConfig: the model's own defaults (top_k=50, repetition penalty, ...) must
        # not change the sampling distribution behind our back
        config = GenerationConfig(
            do_sample=True,
            temperature=params.temperature,
            top_k=params.top_k,
            top_p=params.top_p,
            max_new_tokens=params.max_new_tokens,
            min_new_tokens=params.min_new_tokens,
            eos_token_id=params.eos_token_ids or None,
            pad_token_id=params.pad_token_id,
        )
        was_training = self.model.training
        self.model.eval()
        try:
            out = self.model.generate(
                input_ids=prompt_ids, attention_mask=prompt_mask.long(), generation_config=config
            )
        finally:
            self.model.train(was_training)
        response = out[:, prompt_ids.shape[1] :]
        ids, mask, ended = truncate_after_stop(response, params.eos_token_ids, params.pad_token_id)
        return Rollout(prompt_ids, prompt_mask.bool(), ids, mask, ended)
