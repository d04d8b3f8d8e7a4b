"""Turn what users pass to ``generate``/``step`` (strings or token-id tensors) into a Rollout."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..data.prompts import left_pad, right_pad, tokenize_prompts
from ..rollout import Rollout, truncate_after_stop


def as_id_list(x: Any, what: str, index: int) -> list[int]:
    """A 1-D token-id tensor or list -> list of ints, with an error naming the row."""
    if isinstance(x, torch.Tensor):
        if x.dim() != 1:
            raise ValueError(f"{what}[{index}]: expected a 1-D token-id tensor, got shape {tuple(x.shape)}")
        return x.tolist()
    if isinstance(x, (list, tuple)) and all(isinstance(t, int) for t in x):
        return list(x)
    raise ValueError(f"{what}[{index}]: expected a string or a 1-D tensor of token ids, got {type(x).__name__}")


def is_text(items: Sequence[Any]) -> bool:
    return all(isinstance(x, str) or (isinstance(x, list) and x and isinstance(x[0], dict)) for x in items)


def prompt_token_lists(queries: Sequence[Any], tokenizer, max_prompt_length: int, use_chat_template: bool,
                       cache: dict | None = None, overflow: str = "truncate_left"):
    """Token ids of each query (text rendered like ``generate`` renders it, tensors as they are).

    ``cache`` maps ``repr(query)`` to ids already computed (by ``generate``): those are reused, the
    rest tokenised and added to it. Over-long text prompts are truncated (``overflow=
    "truncate_left"``) or refused with a ``DataError``: the rows of a step batch cannot be dropped."""
    if not is_text(queries):
        return [as_id_list(q, "queries", i) for i, q in enumerate(queries)]
    cache = {} if cache is None else cache
    missing = [q for q in queries if repr(q) not in cache]
    if missing:
        for q, ids in zip(missing, tokenize_prompts(missing, tokenizer, max_prompt_length, use_chat_template,
                                                       "truncate_left" if overflow == "truncate_left" else "error")):
            cache[repr(q)] = ids
    return [cache[repr(q)] for q in queries]


class SampledResponses:
    """What ``generate`` sampled, for ``step`` to score exactly those tokens at the temperature they
    were sampled with (an evaluation ``generate`` at another temperature in between changes nothing).

    Completion strings map to their sampled ids (re-tokenising text can change them); every sample,
    text or tensor, maps ``(prompt ids, response ids)`` to its sampling temperature. Bounded: an
    evaluation loop that calls ``generate`` without ``step`` clears it past ``limit`` entries.
    """

    def __init__(self, limit: int = 4096):
        self.limit = limit
        self._ids: dict[tuple[str, str], list[int]] = {}  # (repr(prompt), completion text) -> ids
        self._temperature: dict[tuple[tuple[int, ...], tuple[int, ...]], float] = {}

    def __len__(self) -> int:
        return len(self._temperature)

    def clear(self) -> None:
        self._ids.clear()
        self._temperature.clear()

    def remember(self, prompt_key: str, prompt_ids: list[int], response_ids: list[int], temperature: float,
                 completion: str | None = None) -> None:
        if len(self) >= self.limit:
            self.clear()
        if completion is not None:
            self._ids[(prompt_key, completion)] = response_ids
        self._temperature[(tuple(prompt_ids), tuple(response_ids))] = temperature

    def get(self, key: tuple[str, str]) -> list[int] | None:
        """Sampled ids of ``(repr(prompt), completion text)``, or None."""
        return self._ids.get(key)

    def temperature_of(self, prompt_ids: Sequence[list[int]], response_ids: Sequence[list[int]],
                       default: float) -> float:
        """The one temperature the rows were sampled at (``default`` for rows not sampled here).

        Raises ``ValueError`` naming the rows when one batch mixes samples of two temperatures."""
        found: dict[float, list[int]] = {}
        for i, (p, r) in enumerate(zip(prompt_ids, response_ids)):
            t = self._temperature.get((tuple(p), tuple(r)))
            if t is not None:
                found.setdefault(t, []).append(i)
        if len(found) > 1:
            parts = "; ".join(f"rows {rows[:8]} at {t:g}" for t, rows in sorted(found.items()))
            raise ValueError(f"step: the responses were sampled at different temperatures ({parts}); "
                             "one batch is scored at one temperature")
        return next(iter(found)) if found else default


def response_token_lists(responses: Sequence[Any], prompt_keys: Sequence[Any], cache: SampledResponses | dict,
                         tokenizer):
    """Token ids of each response.

    Strings that ``generate`` produced are looked up in ``cache`` (exact sampled ids, so
    re-tokenisation cannot change them); other strings are tokenised and end with EOS (they are
    treated as complete answers). Tensors are used as they are.
    """
    out = []
    for i, (response, key) in enumerate(zip(responses, prompt_keys)):
        if isinstance(response, str):
            ids = cache.get((key, response))
            if ids is None:
                ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            out.append(list(ids))
        else:
            out.append(as_id_list(response, "responses", i))
        if not out[-1]:
            raise ValueError(f"responses[{i}] is empty")
    return out


def build_rollout(prompt_ids: list[list[int]], response_ids: list[list[int]], stop_ids: list[int],
                  pad_id: int, device, temperature: float | None = None) -> Rollout:
    """Pad prompts left and responses right, cut responses after their first stop token.
    ``temperature``: the one they were sampled at (None: unknown)."""
    p_ids, p_mask = left_pad(prompt_ids, pad_id)
    r_ids, r_mask = right_pad(response_ids, pad_id)
    # the padding is not part of any response: with pad id == EOS id it must not count as a stop
    ids, mask, ended = truncate_after_stop(r_ids, stop_ids, pad_id, valid=r_mask)
    width = int(mask.sum(1).max())  # trim padding columns left by the cut
    return Rollout(p_ids.to(device), p_mask.to(device), ids[:, :width].to(device),
                   mask[:, :width].to(device), ended.to(device), temperature=temperature)
