"""Prompt datasets: load rows, render chat templates, tokenize and left-pad.

A prompt is a string or a list of chat messages (``[{"role": "user", "content": ...}]``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

logger = logging.getLogger(__name__)


class DataError(ValueError):
    """A prompt file or row is malformed; the message names the file and row."""


def _check_prompt(prompt: Any, where: str) -> Any:
    if isinstance(prompt, str):
        if not prompt.strip():
            raise DataError(f"{where}: prompt is empty")
        return prompt
    if isinstance(prompt, list) and prompt and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in prompt
    ):
        return prompt
    raise DataError(f"{where}: expected a non-empty string or a list of {{'role', 'content'}} messages, "
                    f"got {type(prompt).__name__}")


def prompt_from_row(row: dict, where: str, field: str = "prompt") -> Any:
    """The prompt of one dataset row: ``row[field]``, else ``row['messages']``."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object, got {type(row).__name__}")
    if field in row:
        return _check_prompt(row[field], where)
    if "messages" in row:
        return _check_prompt(row["messages"], where)
    raise DataError(f"{where}: no {field!r} or 'messages' field (fields: {sorted(row)})")


def read_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    """``("file:line", parsed row)`` for each non-blank line; bad JSON raises ``DataError`` naming the line."""
    with path.open("rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(f"{where}: not UTF-8 text (byte {err.start})") from None
            if not line.strip():
                continue
            try:
                yield where, json.loads(line)
            except (json.JSONDecodeError, RecursionError) as err:
                raise DataError(f"{where}: invalid JSON ({getattr(err, 'msg', 'nested too deeply')})") from None


TABLE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def read_table(path: Path) -> Iterator[tuple[str, Any]]:
    """``(where, row)`` of a JSONL, CSV or Parquet file (by suffix; anything else is read as JSONL).
    ``where`` is ``file:line`` for JSONL, ``file:row N`` (1-based data rows) for tables."""
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        yield from read_jsonl(path)
        return
    try:
        if suffix == ".csv":
            from pyarrow import csv

            table = csv.read_csv(str(path))
        else:
            from pyarrow import parquet

            table = parquet.read_table(str(path))
    except Exception as err:  # pyarrow's parse errors: report them against the file
        raise DataError(f"{path}: cannot read {suffix[1:]}: {str(err).splitlines()[0]}") from None
    for i, row in enumerate(table.to_pylist(), start=1):
        yield f"{path}:row {i}", row


def load_prompts(source: Any, field: str = "prompt", formatter: Callable[[dict], Any] | None = None) -> list[Any]:
    """Prompts from ``builtin:NAME`` (sets shipped with tether; ``builtin:A+B`` joins sets), a JSONL / CSV / Parquet file, a
    ``datasets`` directory saved with ``save_to_disk``, a HF ``datasets.Dataset``, or a list of
    strings / message lists.

    ``formatter``: builds the prompt from a whole row (``fn(row: dict) -> str | messages``) instead of
    reading ``field``, e.g. ``lambda r: f"Summarise:\\n{r['article']}"``.
    """
    if isinstance(source, str) and source.startswith("builtin:") and "+" in source:
        return [p for name in source.split(":", 1)[1].split("+") for p in load_prompts(f"builtin:{name}", field, formatter)]
    if isinstance(source, str) and source.startswith("builtin:"):
        path = Path(__file__).parent / "builtin" / f"{source.split(':', 1)[1]}.jsonl"
        if not path.exists():
            known = sorted(p.stem for p in path.parent.glob("*.jsonl"))
            raise DataError(f"{source}: no such built-in prompt set; known: {['builtin:' + k for k in known]}")
        return load_prompts(path, field, formatter)
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            from datasets import load_from_disk

            return load_prompts(load_from_disk(str(path)), field, formatter)
        if not path.exists():
            raise DataError(f"{path}: prompt file not found")
        prompts = [_row_prompt(row, where, field, formatter) for where, row in read_table(path)]
        if not prompts:
            raise DataError(f"{path}: no prompts")
        return prompts
    if hasattr(source, "column_names"):  # a datasets.Dataset
        return [_row_prompt(dict(row), f"dataset row {i}", field, formatter) for i, row in enumerate(source)]
    if formatter is not None:
        return [_row_prompt(row, f"prompt {i}", field, formatter) for i, row in enumerate(source)]
    return [_check_prompt(p, f"prompt {i}") for i, p in enumerate(source)]


def _row_prompt(row: Any, where: str, field: str, formatter: Callable[[dict], Any] | None) -> Any:
    if formatter is None:
        return prompt_from_row(row, where, field)
    try:
        prompt = formatter(row)
    except Exception as err:  # the user's code: name the row it failed on
        raise DataError(f"{where}: the prompt formatter raised {type(err).__name__}: {err}") from err
    return _check_prompt(prompt, f"{where} (formatted)")


def render_prompt(prompt: Any, tokenizer, use_chat_template: bool = True) -> tuple[str, bool]:
    """The text the policy sees and whether a chat template produced it.

    Strings go through the chat template (as a single user turn, with the generation cue) when the
    tokenizer has one and ``use_chat_template`` is set; otherwise they are used raw. Message lists
    always need a template.
    """
    has_template = getattr(tokenizer, "chat_template", None) is not None
    if isinstance(prompt, str):
        if not (use_chat_template and has_template):
            return prompt, False
        prompt = [{"role": "user", "content": prompt}]
    if not has_template:
        raise DataError("chat-message prompts need a tokenizer with a chat template")
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True), True


def tokenize_prompts(
    prompts: Sequence[Any],
    tokenizer,
    max_prompt_length: int | None = None,
    use_chat_template: bool = True,
    overflow: str = "truncate_left",
) -> list[list[int]]:
    """Token ids of each rendered prompt. Prompts longer than ``max_prompt_length`` keep their last
    ``max_prompt_length`` tokens (the end of a prompt, with the generation cue, matters most), with
    a warning that counts them; ``overflow="error"`` raises ``DataError`` naming the first one
    instead. (Dropping rows is ``limit_prompt_lengths``' job: it changes which prompts exist.)"""
    ids = []
    for prompt in prompts:
        text, templated = render_prompt(prompt, tokenizer, use_chat_template)
        # a template already contains BOS etc.; raw strings get the tokenizer's usual specials
        tokens = tokenizer(text, add_special_tokens=not templated)["input_ids"]
        if not tokens:
            raise DataError(f"prompt {len(ids)} tokenizes to nothing")
        ids.append(tokens)
    if max_prompt_length is None:
        return ids
    if overflow not in ("truncate_left", "error"):
        raise ValueError(f"tokenize_prompts: overflow must be truncate_left or error, got {overflow!r}")
    return limit_prompt_lengths(ids, max_prompt_length, overflow)[0]


def limit_prompt_lengths(token_ids: Sequence[list[int]], max_prompt_length: int,
                         overflow: str) -> tuple[list[list[int]], list[int]]:
    """Apply ``prompt_overflow`` to tokenised prompts; returns ``(ids, kept)`` where ``kept`` are
    the indices of the prompts that remain.

    truncate_left: keep the last ``max_prompt_length`` tokens; drop: leave the prompt out; error:
    raise ``DataError`` naming the first over-long prompt. The first two warn with a count.
    """
    over = [i for i, t in enumerate(token_ids) if len(t) > max_prompt_length]
    if not over:
        return list(token_ids), list(range(len(token_ids)))
    if overflow == "error":
        i = over[0]
        raise DataError(f"prompt {i} has {len(token_ids[i])} tokens, more than max_prompt_length="
                        f"{max_prompt_length} ({len(over)} prompts are too long; set prompt_overflow to "
                        "truncate_left or drop, or raise max_prompt_length)")
    if overflow == "drop":
        dropped = set(over)
        kept = [i for i in range(len(token_ids)) if i not in dropped]
        logger.warning("%d of %d prompts were longer than max_prompt_length=%d and were dropped (first: prompt %d)",
                       len(over), len(token_ids), max_prompt_length, over[0])
        return [list(token_ids[i]) for i in kept], kept
    if overflow != "truncate_left":
        raise ValueError(f"prompt_overflow must be truncate_left, drop or error, got {overflow!r}")
    logger.warning("%d of %d prompts were longer than max_prompt_length=%d and kept their last tokens",
                   len(over), len(token_ids), max_prompt_length)
    return [t[-max_prompt_length:] if len(t) > max_prompt_length else list(t) for t in token_ids], \
        list(range(len(token_ids)))


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists to ``[B, P]`` ids and a ``[B, P]`` bool mask."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.bool)
    for row, seq in enumerate(sequences):
        if len(seq):
            ids[row, width - len(seq) :] = torch.as_tensor(list(seq), dtype=torch.long)
            mask[row, width - len(seq) :] = True
    return ids, mask


def right_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists to ``[B, T]`` ids and a ``[B, T]`` bool mask."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.bool)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.as_tensor(list(seq), dtype=torch.long)
        mask[row, : len(seq)] = True
    return ids, mask
