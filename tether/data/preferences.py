"""Preference pairs for reward-model training: ``prompt``, ``chosen``, ``rejected`` (+ ``margin``).

Accepted row shapes (JSONL lines, ``datasets`` rows or dicts):

* ``{"prompt": "...", "chosen": "...", "rejected": "..."}`` — text (the prompt may be chat messages);
* ``{"chosen": [messages], "rejected": [messages]}`` — whole conversations (the HF "implicit prompt"
  form): the messages before the last one are the prompt, the last (assistant) message the completion;
* ``{"prompt": [messages], "chosen": [messages], "rejected": [messages]}`` — the completions given as
  assistant messages.

An optional numeric ``margin`` asks the reward model for a larger gap on that pair.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .prompts import DataError, _check_prompt, read_table

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreferencePair:
    """One comparison: the same prompt, a preferred and a dispreferred completion."""

    prompt: Any  # str or chat messages ("" when the data has none)
    chosen: str
    rejected: str
    margin: float = 0.0
    where: str = field(default="", compare=False)  # "file:line" / "dataset row i", for messages


def _completion(value: Any, where: str, name: str) -> tuple[Any, str]:
    """(implicit prompt or None, completion text) of a ``chosen``/``rejected`` value."""
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{where}: {name!r} is empty")
        return None, value
    if isinstance(value, list) and value:
        _check_prompt(value, f"{where}: {name!r}")
        last = value[-1]
        if last["role"] != "assistant":
            raise DataError(f"{where}: the last message of {name!r} has role {last['role']!r}; expected 'assistant'")
        if not last["content"].strip():
            raise DataError(f"{where}: {name!r} ends with an empty assistant message")
        return value[:-1], last["content"]
    raise DataError(f"{where}: {name!r} must be a non-empty string or a list of chat messages, "
                    f"got {type(value).__name__}")


def pair_from_row(row: Any, where: str) -> PreferencePair:
    """Parse and check one row; errors name ``where`` and the field."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object, got {type(row).__name__}")
    missing = [k for k in ("chosen", "rejected") if k not in row]
    if missing:
        raise DataError(f"{where}: missing field(s) {missing} (fields: {sorted(row)})")
    implicit_c, chosen = _completion(row["chosen"], where, "chosen")
    implicit_r, rejected = _completion(row["rejected"], where, "rejected")
    if "prompt" in row and row["prompt"] is not None:
        prompt = _check_prompt(row["prompt"], f"{where}: 'prompt'")  # explicit prompt wins
    else:
        if implicit_c != implicit_r:
            raise DataError(f"{where}: 'chosen' and 'rejected' conversations have different prompts")
        prompt = implicit_c or ""
    margin = row.get("margin", 0.0)
    if margin is None:
        margin = 0.0
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin):
        raise DataError(f"{where}: 'margin' must be a finite number, got {margin!r}")
    return PreferencePair(prompt, chosen, rejected, float(margin), where)


def _rows(source: Any) -> Iterable[tuple[str, Any]]:
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            from datasets import load_from_disk

            yield from _rows(load_from_disk(str(path)))
            return
        if not path.exists():
            raise DataError(f"{path}: preference file not found")
        yield from read_table(path)
        return
    if hasattr(source, "column_names"):  # datasets.Dataset
        for i, row in enumerate(source):
            yield f"dataset row {i}", dict(row)
        return
    for i, row in enumerate(source):
        yield f"pair {i}", row  # PreferencePair objects pass through as they are


def load_preferences(source: Any) -> list[PreferencePair]:
    """Pairs from a JSONL / CSV / Parquet file, a ``save_to_disk`` directory, a ``datasets.Dataset`` or a list of
    dicts. Malformed rows raise ``DataError`` naming file and line; pairs whose two completions are
    identical carry no preference and are dropped with a warning that counts them."""
    pairs, identical = [], []
    for where, row in _rows(source):
        pair = row if isinstance(row, PreferencePair) else pair_from_row(row, where)
        if pair.chosen.strip() == pair.rejected.strip():
            identical.append(where)
            continue
        pairs.append(pair)
    if identical:
        logger.warning("dropped %d pair(s) whose chosen and rejected completions are identical (first: %s)",
                       len(identical), identical[0])
    if not pairs:
        raise DataError(f"{source if isinstance(source, (str, Path)) else 'preference data'}: no usable pairs")
    return pairs


__all__ = ["PreferencePair", "load_preferences", "pair_from_row"]
