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
# generate() keyword arguments (transformers') that sample from another distribution than the softmax(z / T)
# that scoring computes: accepted for evaluation; step() will not train on such samples
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
    text or tensor, maps ``(prompt ids, response ids)`` to its sampling temperature. ``generate``
    clears it past ``step_api.SAMPLE_CACHE_LIMIT`` entries (an evaluation loop that never calls ``step``).
    """

    def __init__(self):
        self._ids: dict[tuple[str, str], list[int]] = {}  # (repr(prompt), completion text) -> ids
        self._temperature: dict[tuple[tuple[int, ...], tuple[int, ...]], float] = {}
        self._off_policy: dict[tuple[tuple[int, ...], tuple[int, ...]], tuple[str, ...]] = {}
        self._logprobs: dict[tuple[tuple[int, ...], tuple[int, ...]], list[float]] = {}  # the engine's

    def __len__(self) -> int:
        return len(self._temperature)

    def clear(self) -> None:
        self._ids.clear()
        self._temperature.clear()
        self._off_policy.clear()
        self._logprobs.clear()

    def remember(self, prompt_key: str, prompt_ids: list[int], response_ids: list[int], temperature: float,
                 completion: str | None = None, off_policy: Sequence[str] = (),
                 logprobs: list[float] | None = None) -> None:
        """``off_policy``: the generation options that made this sample not one of ``softmax(z / T)``;
        ``logprobs``: the engine's log-probabilities of ``response_ids`` (an engine that reports them)."""
        if completion is not None:
            self._ids[(prompt_key, completion)] = response_ids
        key = (tuple(prompt_ids), tuple(response_ids))
        self._temperature[key] = temperature
        if off_policy:
            self._off_policy[key] = tuple(off_policy)
        if logprobs is not None:
            self._logprobs[key] = list(logprobs)

    def logprobs_of(self, prompt_ids: Sequence[list[int]], response_ids: Sequence[list[int]]) -> list[list[float]] | None:
        """The engine's logprobs of every row, or None unless the engine reported them for all rows."""
        rows = [self._logprobs.get((tuple(p), tuple(r))) for p, r in zip(prompt_ids, response_ids)]
        return None if any(r is None for r in rows) else rows

    def off_policy_of(self, prompt_ids: Sequence[list[int]], response_ids: Sequence[list[int]]) -> dict[str, list[int]]:
        """``{option: [rows]}``: the rows sampled with options that are not sampling from π."""
        found: dict[str, list[int]] = {}
        for i, (p, r) in enumerate(zip(prompt_ids, response_ids)):
            for option in self._off_policy.get((tuple(p), tuple(r)), ()):
                found.setdefault(option, []).append(i)
        return found

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
                  pad_id: int, device, temperature: float | None = None,
                  loss_masks: list[list[int]] | None = None, eos_ids: list[int] = (),
                  sample_logprobs: list[list[float]] | None = None) -> Rollout:
    """Pad prompts left and responses right, cut responses after their first stop token.

    ``temperature``: the one they were sampled at (None: unknown). ``stop_ids`` empty: no cut (TRL's
    ``step`` trains on every given token); a response then counts as ended when its last token is
    one of ``eos_ids``. ``loss_masks``: per response, 1 on the tokens that carry loss (TRL's
    ``response_masks``). ``sample_logprobs``: the engine's logprobs of each response's tokens."""
    p_ids, p_mask = left_pad(prompt_ids, pad_id)
    r_ids, r_mask = right_pad(response_ids, pad_id)
    # the padding is not part of any response: with pad id == EOS id it must not count as a stop
    ids, mask, ended = truncate_after_stop(r_ids, stop_ids, pad_id, valid=r_mask)
    if not stop_ids and eos_ids:
        last = torch.tensor([r[-1] for r in response_ids])
        ended = torch.isin(last, torch.tensor(list(eos_ids)))
    loss_mask = None
    if loss_masks is not None:
        for i, (m, r) in enumerate(zip(loss_masks, response_ids)):
            if len(m) != len(r):
                raise ValueError(f"response_masks[{i}] has {len(m)} entries for a response of {len(r)} tokens")
        loss_mask = right_pad(loss_masks, 0)[0].bool() & mask
    width = int(mask.sum(1).max())  # trim padding columns left by the cut
    engine_lps = None
    if sample_logprobs is not None:
        padded = torch.zeros(mask.shape, dtype=torch.float32)
        for i, lp in enumerate(sample_logprobs):
            padded[i, : len(lp)] = torch.tensor(lp[: mask.shape[1]], dtype=torch.float32)
        engine_lps = torch.where(mask, padded, 0.0)[:, :width].to(device)
    return Rollout(p_ids.to(device), p_mask.to(device), ids[:, :width].to(device),
                   mask[:, :width].to(device), ended.to(device), temperature=temperature,
                   loss_mask=loss_mask[:, :width].to(device) if loss_mask is not None else None,
                   sample_logprobs=engine_lps)


def sampling_params(gen_kwargs: dict, length_sampler, cfg, stop_ids: list[int], pad_token_id: int,
                    vocab_size: int) -> SamplingParams:
    """``generate``'s keyword arguments over the config's sampling defaults, with transformers'
    meaning (the names TRL programs pass).

    ``eos_token_id``: the tokens that stop generation (an id outside the vocabulary, e.g. -1, means
    "never stop early"); ``min_length``: total length including the prompt (-1: none);
    ``do_sample=False``: greedy. Options that sample from another distribution than
    ``softmax(logits / T)`` (greedy, penalties, beams, ...) are passed to transformers, and the
    samples are marked so that ``step`` refuses to train on them (TRL programs: warns)."""
    unknown = set(gen_kwargs) - _GEN_ALIASES - _GEN_IGNORED - _GEN_OFF_POLICY - {"max_length"}
    if unknown:
        raise TypeError(f"generate: unsupported arguments {sorted(unknown)}; supported: "
                        f"{sorted(_GEN_ALIASES | _GEN_IGNORED)} and transformers' {sorted(_GEN_OFF_POLICY)}")
    do_sample = bool(gen_kwargs.get("do_sample", True))
    temperature = float(gen_kwargs.get("temperature", cfg.temperature))
    if do_sample and temperature <= 0:
        raise ValueError(f"generate: temperature must be > 0, got {temperature}")
    if "eos_token_id" in gen_kwargs and gen_kwargs["eos_token_id"] is not None:
        given = gen_kwargs["eos_token_id"]
        given = list(given) if isinstance(given, (list, tuple)) else [given]
        stop_ids = [int(t) for t in given if 0 <= int(t) < vocab_size]
    if length_sampler is not None:
        max_new = int(length_sampler())
    elif "max_new_tokens" in gen_kwargs or "max_length" not in gen_kwargs:
        max_new = int(gen_kwargs.get("max_new_tokens", cfg.max_new_tokens))
    else:
        max_new = None  # transformers' max_length (prompt included) decides
    extra = {k: v for k, v in gen_kwargs.items() if k in _GEN_OFF_POLICY or k == "max_length"}
    pad = gen_kwargs.get("pad_token_id")
    return SamplingParams(
        max_new_tokens=max_new,
        temperature=temperature,
        top_k=int(gen_kwargs.get("top_k", cfg.top_k) or 0),
        top_p=float(gen_kwargs.get("top_p", cfg.top_p)),
        min_new_tokens=int(gen_kwargs.get("min_new_tokens", 0) or 0),
        min_length=max(0, int(gen_kwargs.get("min_length", 0) or 0)),
        eos_token_ids=stop_ids,
        pad_token_id=pad_token_id if pad is None else int(pad),
        do_sample=do_sample,
        extra=extra,
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


def response_rows(rollout: Rollout, cut: list[int]) -> list[list[int]]:
    """Each row's response tokens, up to and including the first token of ``cut``."""
    rows = []
    for row, mask in zip(rollout.response_ids, rollout.response_mask):
        ids = row[mask].tolist()
        end = next((i + 1 for i, t in enumerate(ids) if t in cut), len(ids))
        rows.append(ids[:end])
    return rows


def engine_logprob_rows(rollout: Rollout, rows: list[list[int]]) -> list[list[float] | None]:
    """The engine's logprobs of each of ``rows`` (``response_rows`` of ``rollout``); Nones when the
    engine reported none."""
    if rollout.sample_logprobs is None:
        return [None] * len(rows)
    return [lp[mask][: len(ids)].tolist()
            for lp, mask, ids in zip(rollout.sample_logprobs, rollout.response_mask, rows)]


def output_forms(prompt_ids: list[list[int]], responses: list[list[int]], tokenizer, text: bool, single: bool,
                 return_prompt: bool, device):
    """What ``generate`` returns: completion strings for text prompts; for token prompts 1-D tensors
    (prompt included unless ``return_prompt=False``); one query gives one string or a ``[1, L]`` tensor."""
    if text:
        outs = [tokenizer.decode(r, skip_special_tokens=True) for r in responses]
        return outs[0] if single else outs
    outs = [torch.tensor((p if return_prompt else []) + r, dtype=torch.long, device=device)
            for p, r in zip(prompt_ids, responses)]
    return outs[0].unsqueeze(0) if single else outs
