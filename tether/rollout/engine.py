"""The rollout-engine protocol: anything that turns prompt ids into a ``Rollout``.

The trainer only calls ``generate`` and ``update_weights``; it never asks which engine it has.
An HF engine shares the policy module (``update_weights`` is a no-op); a vLLM engine would copy
the new weights into its own workers there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

from .types import Rollout


@dataclass
class SamplingParams:
    """How responses are sampled. ``top_k = 0`` and ``top_p = 1.0`` mean pure sampling [H24]."""

    max_new_tokens: int | None = 64  # None: transformers' max_length (in extra) decides
    temperature: float = 0.7
    top_k: int = 0
    top_p: float = 1.0
    min_new_tokens: int = 0  # > 0 masks EOS early, which changes the sampling distribution
    min_length: int = 0  # transformers' min_length: prompt included (TRL programs pass it)
    eos_token_ids: list[int] = field(default_factory=list)  # each ends a response (EOS + stop tokens)
    pad_token_id: int = 0
    do_sample: bool = True  # False: greedy (evaluation; not samples of π)
    extra: dict = field(default_factory=dict)  # other transformers generation options (penalties, beams, ...)

    @property
    def off_policy(self) -> list[str]:
        """Why samples drawn with these settings are not samples of ``softmax(logits / T)``: the
        options that make it so (empty for pure sampling, top_k / top_p aside)."""
        return (["do_sample=False"] if not self.do_sample else []) + sorted(k for k in self.extra if k != "max_length")


class Engine(Protocol):
    def generate(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, params: SamplingParams) -> Rollout:
        """Sample one response per prompt row. prompt_ids/mask: ``[B, P]`` left-padded."""

    def update_weights(self, model) -> None:
        """Make the engine sample from ``model``'s current weights."""


def truncate_after_stop(response_ids: torch.Tensor, stop_ids: list[int], pad_token_id: int,
                        valid: torch.Tensor | None = None):
    """Cut each response after its first stop token (EOS or a configured stop token) [H24].

    response_ids: ``[B, T]``. valid: optional ``[B, T]`` bool, True on real tokens; positions outside
    it (right padding of responses of unequal length) are never stops, even when the pad id is the
    EOS id, and stay outside the mask. Returns ``(ids, mask, ended)``: ids with ``pad_token_id``
    after the first stop, mask ``[B, T]`` bool True up to and including it, ended ``[B]`` bool
    (True only for rows whose own tokens hold a stop).
    """
    if valid is None:
        valid = torch.ones_like(response_ids, dtype=torch.bool)
    if stop_ids:
        is_stop = torch.isin(response_ids, torch.tensor(stop_ids, device=response_ids.device)) & valid
    else:
        is_stop = torch.zeros_like(response_ids, dtype=torch.bool)
    # number of stop tokens strictly before position t; valid while it is 0
    stops_before = torch.cumsum(is_stop.long(), dim=1) - is_stop.long()
    mask = (stops_before == 0) & valid
    ended = is_stop.any(dim=1)
    ids = torch.where(mask, response_ids, torch.full_like(response_ids, pad_token_id))
    return ids, mask, ended
