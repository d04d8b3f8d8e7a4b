"""``trl.core`` helpers that TRL 0.11 PPO programs import: ``LengthSampler``, ``respond_to_batch``,
``set_seed`` and the masked statistics, with TRL's signatures. ``tether.core`` re-exports them."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Sequence

import numpy as np
import torch

from ..algo import entropy_from_logits, masked_mean, masked_var, whiten as _whiten
from ..algo.stats import logprobs_from_logits as _logprobs_from_logits


class LengthSampler:
    """A random response length in ``[min_value, max_value)``, drawn with numpy's global RNG (as
    TRL's: ``set_seed`` makes it reproducible). ``generate(..., length_sampler=LengthSampler(4, 16))``."""

    def __init__(self, min_value: int, max_value: int):
        if max_value <= min_value:
            raise ValueError(f"LengthSampler: max_value ({max_value}) must be > min_value ({min_value})")
        self.values = list(range(min_value, max_value))

    def __call__(self) -> int:
        return int(np.random.choice(self.values))


def set_seed(seed: int) -> None:
    """Seed Python's, numpy's and torch's (CPU and CUDA) random number generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def top_k_top_p_filtering(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0,
                          filter_value: float = -float("inf"), min_tokens_to_keep: int = 1) -> torch.Tensor:
    """``[B, V]`` logits with everything outside the ``top_k`` tokens and the ``top_p`` nucleus set
    to ``filter_value`` (``top_k = 0`` and ``top_p = 1`` keep everything)."""
    logits = logits.clone()
    if top_k > 0:
        k = max(int(top_k), min_tokens_to_keep)
        kth = torch.topk(logits, min(k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits[logits < kth] = filter_value
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        remove = cumulative > top_p
        remove[..., 1:] = remove[..., :-1].clone()  # keep the token that crosses top_p
        remove[..., :min_tokens_to_keep] = False
        logits[remove.scatter(-1, order, remove)] = filter_value
    return logits


@torch.no_grad()
def respond_to_batch(model, queries: torch.Tensor, txt_len: int = 20, top_k: int = 0,
                     top_p: float = 1.0) -> torch.Tensor:
    """Sample ``txt_len`` tokens after ``queries`` (``[B, L]``, unpadded) one at a time, without a KV
    cache; returns ``[B, txt_len]``. ``model(ids)[0]`` must be the logits (a value-head model's tuple
    or a transformers output both work)."""
    input_ids = queries
    for _ in range(txt_len):
        out = model(input_ids)
        logits = (out[0] if isinstance(out, (tuple, list)) else out.logits)[:, -1, :]
        probs = top_k_top_p_filtering(logits.float(), top_k=top_k, top_p=top_p).softmax(-1)
        next_token = torch.multinomial(probs, num_samples=1)
        input_ids = torch.cat([input_ids, next_token], dim=-1)
    return input_ids[:, -txt_len:]


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor | None, gather: bool = True) -> torch.Tensor:
    """TRL's signature: log-softmax of ``logits`` at ``labels`` (``gather=False``: the whole distribution)."""
    if not gather:
        return torch.log_softmax(logits.float(), dim=-1)
    return _logprobs_from_logits(logits, labels)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Whiten ``values`` over the positions where ``mask`` is true (TRL's name)."""
    return _whiten(values, mask.bool(), shift_mean=shift_mean)


def whiten(values: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Whiten all of ``values`` (TRL's unmasked form)."""
    return _whiten(values, torch.ones_like(values, dtype=torch.bool), shift_mean=shift_mean)


def clip_by_value(x: torch.Tensor, tensor_min, tensor_max) -> torch.Tensor:
    """Elementwise ``min(max(x, tensor_min), tensor_max)``."""
    return torch.max(torch.min(x, tensor_max), tensor_min)


def flatten_dict(nested: Mapping, sep: str = "/") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a/b": 1}``."""
    out: dict = {}

    def recurse(node: Mapping, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, Mapping):
                recurse(value, prefix + key + sep)
            else:
                out[prefix + key] = value

    recurse(nested, "")
    return out


def stack_dicts(stats_dicts: Sequence[dict]) -> dict:
    """Stack the tensors of a list of dicts key by key (right-padded with NaN where lengths differ)."""
    out = {}
    for key in stats_dicts[0]:
        rows = [torch.flatten(d[key]) for d in stats_dicts]
        out[key] = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=float("nan"))
    return out


__all__ = ["LengthSampler", "clip_by_value", "entropy_from_logits", "flatten_dict", "logprobs_from_logits",
           "masked_mean", "masked_var", "masked_whiten", "respond_to_batch", "set_seed", "stack_dicts",
           "top_k_top_p_filtering", "whiten"]
