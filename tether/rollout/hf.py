"""Generation with a transformers model's own ``generate`` (KV cache, batched, no Python loops)."""

from __future__ import annotations

import contextlib

import torch

from .engine import SamplingParams, truncate_after_stop
from .types import Rollout


@contextlib.contextmanager
def without_checkpoint_generation_defaults(model):
    """Hide ``model.generation_config`` while sampling.

    transformers fills every field a ``GenerationConfig`` leaves unset from the model's own
    ``generation_config`` (``repetition_penalty``, ``no_repeat_ngram_size``, ``min_p``,
    ``typical_p``, ``bad_words_ids``, ``suppress_tokens``, ... — whatever the checkpoint ships, and
    whatever fields later releases add). Any of them would make samples come from another
    distribution than the ``softmax(z / T)`` that scoring computes, so the "old" logprobs would be
    wrong. While this context is open the model's config holds transformers' global defaults only,
    so sampling depends on tether's ``SamplingParams`` alone. ``model`` may be a peft wrapper: the
    config of the transformers model inside is swapped.
    """
    from transformers import GenerationConfig

    inner = model
    if hasattr(inner, "peft_config") and hasattr(inner, "get_base_model"):
        inner = inner.get_base_model()
    saved = getattr(inner, "generation_config", None)
    if saved is None:
        yield
        return
    inner.generation_config = GenerationConfig()
    try:
        yield
    finally:
        inner.generation_config = saved


class HFEngine:
    """Samples from the policy module itself (no weight copy), with the model's KV cache."""

    def __init__(self, model):
        self.model = model

    def update_weights(self, model) -> None:
        self.model = model  # same module: nothing to copy

    @torch.no_grad()
    def generate(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, params: SamplingParams) -> Rollout:
        from transformers import GenerationConfig

        sampling = dict(temperature=params.temperature, top_k=params.top_k, top_p=params.top_p) if params.do_sample else {}
        config = GenerationConfig(
            do_sample=params.do_sample,
            **{"num_beams": 1, **params.extra},
            **sampling,
            **({"max_new_tokens": params.max_new_tokens} if params.max_new_tokens is not None else {}),
            **({"min_new_tokens": params.min_new_tokens} if params.min_new_tokens else {}),
            **({"min_length": params.min_length} if params.min_length else {}),
            eos_token_id=params.eos_token_ids or None,
            pad_token_id=params.pad_token_id,
        )
        was_training = self.model.training
        self.model.eval()
        try:
            with without_checkpoint_generation_defaults(self.model):
                out = self.model.generate(
                    input_ids=prompt_ids, attention_mask=prompt_mask.long(), generation_config=config
                )
        finally:
            self.model.train(was_training)
        response = out[:, prompt_ids.shape[1] :]
        ids, mask, ended = truncate_after_stop(response, params.eos_token_ids, params.pad_token_id)
        return Rollout(prompt_ids, prompt_mask.bool(), ids, mask, ended, temperature=params.temperature)
