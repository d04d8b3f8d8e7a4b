"""What users pass to ``generate``/``step`` (strings or token-id tensors, TRL-era keyword arguments,
groups of responses), checked and turned into ``SamplingParams`` and a ``Rollout``."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..data.prompts import left_pad, right_pad, tokenize_prompts
from ..rollout import Rollout, SamplingParams, truncate_after_stop


# generate() keyword arguments that TRL-era code passes; mapped onto SamplingParams or accepted as no-ops
_GEN_ALIASES = {"max_new_tokens", "temperature", "top_k", "top_p", "min_new_tokens"}
_GEN_IGNORED = {"do_sample", "pad_token_id", "eos_token_id", "min_length", "use_cache"}
# generate() keyword arguments that would sample from another distribution than the softmax(z / T)
# that scoring computes: the "old" logprobs would be wrong, so they are refused
_GEN_OFF_POLICY = {"repetition_penalty", "no_repeat_ngram_size", "min_p", "typical_p", "epsilon_cutoff",
                   "eta_cutoff", "bad_words_ids", "suppress_tokens", "begin_suppress_tokens", "sequence_bias",
                   "encoder_repetition_penalty", "num_beams", "num_beam_groups", "diversity_penalty",
                   "penalty_alpha", "guidance_scale", "forced_bos_token_id", "forced_eos_token_id",
                   "exponential_decay_length_penalty", "renormalize_logits", "top_h"}


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


def sampling_params(gen_kwargs: dict, length_sampler, cfg, stop_ids: list[int], pad_token_id: int) -> SamplingParams:
    """``generate``'s keyword arguments (TRL-era names accepted) over the config's sampling defaults.

    Arguments that would sample from another distribution than ``softmax(logits / T)`` are refused:
    PPO scores that distribution, so its "old" logprobs would be wrong."""
    off_policy = sorted(set(gen_kwargs) & _GEN_OFF_POLICY)
    if off_policy:
        raise ValueError(f"generate: {off_policy} would sample from another distribution than the "
                         "softmax(logits / temperature) that PPO scores, so its old logprobs would be wrong; "
                         "sample with temperature / top_k / top_p only")
    unknown = set(gen_kwargs) - _GEN_ALIASES - _GEN_IGNORED
    if unknown:
        raise TypeError(f"generate: unsupported arguments {sorted(unknown)}; supported: "
                        f"{sorted(_GEN_ALIASES)}")
    if gen_kwargs.get("do_sample") is False:
        raise ValueError("generate: do_sample=False is not PPO; PPO needs samples from the policy")
    temperature = float(gen_kwargs.get("temperature", cfg.temperature))
    if temperature <= 0:
        raise ValueError(f"generate: temperature must be > 0, got {temperature}")
    max_new = length_sampler() if length_sampler is not None else gen_kwargs.get("max_new_tokens", cfg.max_new_tokens)
    return SamplingParams(
        max_new_tokens=int(max_new),
        temperature=temperature,
        top_k=int(gen_kwargs.get("top_k", cfg.top_k) or 0),
        top_p=float(gen_kwargs.get("top_p", cfg.top_p)),
        min_new_tokens=int(gen_kwargs.get("min_new_tokens", 0)),
        eos_token_ids=stop_ids,
        pad_token_id=pad_token_id,
    )


def flatten_groups(queries: Sequence[Any], responses: Sequence[Any]) -> tuple[list, list]:
    """``responses[i]`` given as a list of responses to ``queries[i]`` -> one row per response."""
    nested = [isinstance(r, (list, tuple)) and r and not isinstance(r[0], (int, dict)) for r in responses]
    if not any(nested):
        return list(queries), list(responses)
    if not all(nested):
        raise ValueError("step: give every prompt a list of responses, or none (mixed forms)")
    if len(queries) != len(responses):
        raise ValueError(f"step: {len(queries)} queries but {len(responses)} response lists")
    return ([q for q, group in zip(queries, responses) for _ in group],
            [r for group in responses for r in group])


def check_groups(queries: Sequence[Any], k: int) -> None:
    """With ``num_generations = k > 1``, every k rows in a row must share one prompt (else an error naming them)."""
    if k == 1:
        return
    for start in range(0, len(queries) - k + 1, k):
        keys = {repr(q.tolist()) if isinstance(q, torch.Tensor) else repr(q) for q in queries[start : start + k]}
        if len(keys) > 1:
            raise ValueError(f"step: rows {start}..{start + k - 1} should be {k} responses to one prompt "
                             f"(num_generations={k}); repeat each prompt {k} times in a row")
