"""The one forward pass used for scoring and training: logprobs (and values) of response tokens.

Every model call in tether goes through ``response_forward`` so that sampling and training see the
same position ids and the same temperature [H24].
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from ..algo.stats import entropy_from_logits, logprobs_from_logits


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
) -> ResponseOutput:
    """Logprobs of the last ``response_len`` tokens of ``input_ids`` under ``model``.

    input_ids, attention_mask: ``[B, P + T]`` — left-padded prompt then right-padded response.
    Logits at position ``i`` predict token ``i + 1``, so response token ``t`` is scored from the
    logits at ``P − 1 + t``. Logits are upcast to float32, then divided by ``temperature``, before the log-softmax. With a
    ``value_head`` the values are read from the last hidden state at the same positions.
    """
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
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                use_cache=False, **kwargs)
    logits = out.logits if "logits_to_keep" in kwargs else out.logits[:, -(response_len + 1) : -1, :]
    logprobs, entropy = token_logprobs(logits, input_ids[:, -response_len:], temperature, with_entropy)
    values = None
    if value_head is not None:
        values = value_head(out.hidden_states[-1][:, -(response_len + 1) : -1, :])
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
