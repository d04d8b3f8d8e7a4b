"""The one forward pass used for scoring and training: logprobs (and values) of response tokens.

Every model call in tether goes through ``response_forward`` so that sampling and training see the
same position ids and the same temperature [H24].
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from ..algo.stats import entropy_from_logits, logprobs_from_logits
from .lm_head import fusable_head, head_returns_logprobs, mark_unfusable


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted from the first real token: ``cumsum(mask) − 1``, pads set to 0. ``[B, L]``."""
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.clamp(min=0)


def _accepts_logits_to_keep(model) -> bool:
    model = getattr(model, "module", model)  # DistributedDataParallel passes keyword arguments through
    cached = getattr(model, "_tether_logits_to_keep", None)
    if cached is None:
        inner = model.get_base_model() if hasattr(model, "peft_config") else model
        cached = "logits_to_keep" in inspect.signature(inner.forward).parameters
        try:
            model._tether_logits_to_keep = cached
        except AttributeError:  # pragma: no cover - exotic wrappers
            pass
    return cached


@dataclass
class ResponseOutput:
    """Per-response-token outputs of one forward. All ``[B, T]`` float32."""

    logprobs: torch.Tensor  # log π(a_t|s_t) at the given temperature
    entropy: torch.Tensor | None  # entropy of π(·|s_t) in nats (when asked)
    values: torch.Tensor | None  # V(s_t) from a value head on this model (when asked)


def response_forward(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_len: int,
    temperature: float,
    value_head=None,
    with_entropy: bool = False,
    fused: bool = True,
) -> ResponseOutput:
    """Logprobs of the last ``response_len`` tokens of ``input_ids`` under ``model``.

    input_ids, attention_mask: ``[B, P + T]`` — left-padded prompt then right-padded response.
    Logits at position ``i`` predict token ``i + 1``, so response token ``t`` is scored from the
    logits at ``P − 1 + t``. Logits are upcast to float32, then divided by ``temperature``, before the log-softmax. With a
    ``value_head`` the values are read from the last hidden state at the same positions. ``fused``: the LM
    head returns the log-probs (and entropies) itself, a chunk of tokens at a time (``lm_head.py``), so no
    ``[B, T, V]`` logits exist; where the model cannot (no plain linear head, no ``logits_to_keep``, a
    forward that rescales logits) the full logits are used.
    """
    if is_encoder_decoder(model):
        return _encoder_decoder_forward(model, input_ids, attention_mask, response_len, temperature, value_head,
                                        with_entropy)
    position_ids = position_ids_from_mask(attention_mask)
    kwargs = {}
    length = input_ids.shape[1]
    if _accepts_logits_to_keep(model):
        # LM-head work only at the T positions that predict response tokens. As positions (not a
        # count) the kept hidden states are a contiguous copy, so the LM head is one matmul; a
        # sliced view makes torch's matmul fall back to a batched matmul over B copies of the
        # [hidden, vocab] weight (2.4x slower for a bf16 model on CPU).
        kwargs["logits_to_keep"] = torch.arange(length - response_len - 1, length - 1, device=input_ids.device)
    if value_head is not None:
        kwargs["output_hidden_states"] = True
    targets = input_ids[:, -response_len:]
    head = fusable_head(model) if fused and "logits_to_keep" in kwargs else None
    out = None
    if head is not None:
        with head_returns_logprobs(head, targets, temperature, with_entropy) as produced:
            out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                        use_cache=False, **kwargs)
        if produced and _same_tensor(out.logits, produced[0]):
            logprobs = out.logits[..., 0]
            entropy = out.logits[..., 1] if with_entropy else None
        else:  # the model's forward changed what its head returned (scaled, capped): full logits from now on
            mark_unfusable(model, "its forward transforms the LM head's output")
            out = None
    if out is None:
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                    use_cache=False, **kwargs)
        logits = out.logits if "logits_to_keep" in kwargs else out.logits[:, -(response_len + 1) : -1, :]
        logprobs, entropy = token_logprobs(logits, targets, temperature, with_entropy)
    values = None
    if value_head is not None:
        values = value_head(out.hidden_states[-1][:, -(response_len + 1) : -1, :])
    return ResponseOutput(logprobs=logprobs, entropy=entropy, values=values)


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    """``a`` is ``b`` or a view of all of it (wrappers may re-wrap outputs): same storage, shape and strides."""
    return a is b or (a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride())


def is_encoder_decoder(model) -> bool:
    """True for an encoder-decoder LM (T5, BART, ...), also inside peft or DDP wrappers."""
    model = getattr(model, "module", model)
    inner = model.get_base_model() if hasattr(model, "peft_config") and hasattr(model, "get_base_model") else model
    return bool(getattr(getattr(inner, "config", None), "is_encoder_decoder", False))


def right_aligned(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded rows ``[B, P]`` moved to the right-padded layout an encoder expects (learned
    absolute positions, as in BART, count from column 0); pads keep the pad id in ``ids``."""
    order = torch.argsort((~mask.bool()).int(), dim=1, stable=True)  # real tokens first, in order
    return ids.gather(1, order), mask.gather(1, order)


def decoder_start_id(model) -> int:
    """The token an encoder-decoder's decoder starts from (``decoder_start_token_id``, else pad)."""
    model = getattr(model, "module", model)
    inner = model.get_base_model() if hasattr(model, "peft_config") and hasattr(model, "get_base_model") else model
    config = inner.config
    start = getattr(getattr(inner, "generation_config", None), "decoder_start_token_id", None)
    start = start if start is not None else getattr(config, "decoder_start_token_id", None)
    start = start if start is not None else config.pad_token_id
    if start is None:
        raise ValueError(f"{type(inner).__name__}: no decoder_start_token_id or pad_token_id in its config")
    return int(start)


def _encoder_decoder_forward(model, input_ids, attention_mask, response_len, temperature, value_head,
                             with_entropy) -> ResponseOutput:
    """``response_forward`` for an encoder-decoder: the first ``P`` columns (left-padded prompt) are
    the encoder input, the last ``T`` (right-padded response) the decoder's targets, fed as
    ``decoder_input_ids = [start] + response[:-1]``; logits at decoder position ``t`` predict
    response token ``t``."""
    prompt_len = input_ids.shape[1] - response_len
    enc_ids, enc_mask = right_aligned(input_ids[:, :prompt_len], attention_mask[:, :prompt_len])
    response, response_mask = input_ids[:, prompt_len:], attention_mask[:, prompt_len:]
    start = torch.full_like(response[:, :1], decoder_start_id(model))
    decoder_ids = torch.cat([start, response[:, :-1]], dim=1)
    decoder_mask = torch.cat([torch.ones_like(response_mask[:, :1]), response_mask[:, :-1]], dim=1)
    out = model(input_ids=enc_ids, attention_mask=enc_mask, decoder_input_ids=decoder_ids,
                decoder_attention_mask=decoder_mask, use_cache=False, output_hidden_states=value_head is not None)
    logprobs, entropy = token_logprobs(out.logits, response, temperature, with_entropy)
    values = value_head(out.decoder_hidden_states[-1]) if value_head is not None else None
    return ResponseOutput(logprobs=logprobs, entropy=entropy, values=values)


# float32 elements of the temperature-scaled logits held at once (64 MiB): rows are taken in chunks so
# scoring never materialises a second full [B, T, V] float32 tensor beside the model's logits
CHUNK_ELEMENTS = 1 << 24


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float,
                   with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(logprobs, entropy)`` ``[B, T]`` float32 of ``tokens`` ``[B, T]`` under ``logits`` ``[B, T, V]``.

    Logits are upcast to float32 *before* the division by ``temperature`` (in bf16 the division
    itself rounds: 0.02 nats per token on average), a chunk of rows at a time."""
    rows = max(1, CHUNK_ELEMENTS // max(1, logits.shape[1] * logits.shape[2]))
    logprobs, entropy = [], []
    for start in range(0, logits.shape[0], rows):
        scaled = logits[start : start + rows].float() / temperature
        logprobs.append(logprobs_from_logits(scaled, tokens[start : start + rows]))
        if with_entropy:
            entropy.append(entropy_from_logits(scaled))
        del scaled
    return torch.cat(logprobs), (torch.cat(entropy) if with_entropy else None)


def critic_values(critic, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_len: int) -> torch.Tensor:
    """Values ``[B, T]`` of a separate critic at the positions that predict each response token."""
    values = critic(input_ids, attention_mask, position_ids_from_mask(attention_mask))
    return values[:, -(response_len + 1) : -1]
