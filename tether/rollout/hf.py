"""Generation with a transformers model's own ``generate`` (KV cache, batched, no Python loops)."""

from __future__ import annotations

import contextlib

import torch

from ..models.forward import decoder_start_id, is_encoder_decoder, right_aligned
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


@contextlib.contextmanager
def contiguous_head_inputs(model):
    """Make the LM head's input contiguous while sampling.

    In the prefill step transformers feeds the head ``hidden[:, -1:, :]``, a ``[B, 1, H]`` view whose
    batch stride is ``L·H``. ``torch.matmul`` folds a 3-d input into one 2-d GEMM only when its
    leading dims are contiguous by strides, so this view takes the batched path instead, which on a
    CPU materialises the weight broadcast to ``[B, H, V]`` (bf16 SmolLM2, B = 128: a 7 GB copy and
    16 s). When the head's input is already a fresh tensor (an autocast cast of float32 activations)
    nothing happens; a frozen bf16 model (a LoRA base under bf16-mixed) hits it on every prefill.
    Copying the ``[B, 1, H]`` view first costs B·H elements."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, torch.nn.Module):
        yield
        return

    def contiguous(module, args):
        if args and isinstance(args[0], torch.Tensor) and not args[0].is_contiguous():
            return (args[0].contiguous(), *args[1:])
        return None

    handle = head.register_forward_pre_hook(contiguous)
    try:
        yield
    finally:
        handle.remove()


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
        encoder_decoder = is_encoder_decoder(self.model)
        inputs, input_mask = right_aligned(prompt_ids, prompt_mask) if encoder_decoder else (prompt_ids, prompt_mask)
        if encoder_decoder:
            config.decoder_start_token_id = decoder_start_id(self.model)
        was_training = self.model.training
        self.model.eval()
        try:
            with without_checkpoint_generation_defaults(self.model), contiguous_head_inputs(self.model):
                out = self.model.generate(
                    input_ids=inputs, attention_mask=input_mask.long(), generation_config=config
                )
        finally:
            self.model.train(was_training)
        # the response: what follows the prompt, or an encoder-decoder's decoder output after its start token
        response = out[:, 1:] if encoder_decoder else out[:, prompt_ids.shape[1] :]
        ids, mask, ended = truncate_after_stop(response, params.eos_token_ids, params.pad_token_id)
        return Rollout(prompt_ids, prompt_mask.bool(), ids, mask, ended, temperature=params.temperature)
