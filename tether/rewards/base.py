"""The reward-function protocol and the checks every reward goes through."""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

import torch

Prompt = Any  # a prompt string, or a list of chat messages ({"role", "content"} dicts)


class RewardFn(Protocol):
    def __call__(self, prompts: Sequence[Prompt], completions: Sequence[str]) -> Sequence[float]:
        """One score per (prompt, completion) pair; higher is better."""


class RewardError(ValueError):
    """A reward function misbehaved (raised, wrong count, non-finite value)."""


class NonFiniteRewardError(RewardError):
    """A reward function returned NaN or inf for the rows in ``rows``."""

    def __init__(self, message: str, rows: list[int]):
        super().__init__(message)
        self.rows = rows


def check_scores(scores: Any, expected: int, source: str = "reward") -> torch.Tensor:
    """Turn a reward function's output into a ``[expected]`` float32 tensor, or raise RewardError.

    Accepts lists/tuples of numbers or scalar tensors, and 1-D tensors/arrays. The error names the
    source and, for non-finite values, the offending rows.
    """
    try:
        if isinstance(scores, torch.Tensor):
            values = scores.detach().float().cpu().flatten()
        else:
            values = torch.tensor([float(s.item() if hasattr(s, "item") else s) for s in scores])
    except (TypeError, ValueError) as err:
        raise RewardError(f"{source} must return numbers, got {type(scores).__name__}: {err}") from err
    if values.numel() != expected:
        raise RewardError(f"{source} returned {values.numel()} scores for {expected} responses")
    bad = (~torch.isfinite(values)).nonzero().flatten().tolist()
    if bad:
        raise NonFiniteRewardError(f"{source} returned non-finite scores at rows {bad}: {values[bad].tolist()}", bad)
    return values


def offset_scores_hint(mean: float, std: float) -> str | None:
    """A warning for scores far from zero relative to their spread, else None.

    mean, std: of one batch's raw scores (reward units). Scores like ``len(r)`` (mean ≈ 190, std ≈ 50)
    put a large constant into every return; with a critic that starts untrained the whitened
    advantages then mostly encode each token's distance from the end of its response, and PPO learns
    little. Triggers when ``|mean| > 1`` and ``|mean| > 2·std``.
    """
    if abs(mean) <= 1.0 or abs(mean) <= 2.0 * std:
        return None
    return (f"the reward's scores average {mean:.4g} with a spread (std) of only {std:.4g} over the batch: "
            f"with a critic that starts untrained, PPO learns little from such an offset. Set whiten_scores=True "
            f"(scores to mean 0, std 1 per batch) or return scores centred near 0.")


def call_reward(fn: Callable, prompts: Sequence[Prompt], completions: Sequence[str]) -> torch.Tensor:
    """Call a user reward function and validate what it returns; errors name the function."""
    name = getattr(fn, "__qualname__", None) or type(fn).__name__
    try:
        scores = fn(list(prompts), list(completions))
    except Exception as err:  # the user's code: report it with context, keep the traceback chained
        raise RewardError(f"reward function {name} raised {type(err).__name__}: {err}") from err
    return check_scores(scores, len(completions), source=f"reward function {name}")
