"""Numerical faults: skip a bad step with a warning, stop after too many in a row."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


class NumericalError(RuntimeError):
    """Training produced non-finite numbers too many times in a row (or weights went non-finite)."""


class EngineMismatchError(RuntimeError):
    """In fp32, the rollout engine's logprobs of its own samples are far from the trainer's: it is not
    sampling from the policy being trained (a weight update skipped or incomplete)."""


class FaultMonitor:
    """Counts bad steps (non-finite loss, gradient norm or reward).

    ``bad(what)`` logs a warning and counts; once more than ``max_bad_steps`` bad steps come in a
    row it raises ``NumericalError`` (``max_bad_steps = 0``: the first one raises). ``good()`` ends
    a streak. ``skipped`` counts every bad step of the run (it is saved in checkpoints).
    """

    def __init__(self, max_bad_steps: int):
        self.max_bad_steps = max_bad_steps
        self.streak = 0
        self.skipped = 0

    def good(self) -> None:
        self.streak = 0

    def bad(self, what: str) -> None:
        self.streak += 1
        self.skipped += 1
        if self.streak > self.max_bad_steps:
            raise NumericalError(
                f"{what}; {self.streak} bad steps in a row (max_bad_steps={self.max_bad_steps}), stopping. "
                "Lower the learning rate, clip rewards (score_clip) or check the reward function.")
        logger.warning("%s; step skipped (%d in a row, %d this run; max_bad_steps=%d)", what, self.streak,
                       self.skipped, self.max_bad_steps)

    def state_dict(self) -> dict:
        return {"streak": self.streak, "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.streak, self.skipped = int(state["streak"]), int(state["skipped"])


def first_nonfinite_parameter(modules) -> str | None:
    """Name of the first parameter holding a NaN/inf among ``modules`` (``(prefix, module)`` pairs)."""
    import torch

    for prefix, module in modules:
        if module is None:
            continue
        for name, param in module.named_parameters():
            if not torch.isfinite(param).all():
                return f"{prefix}{name}"
    return None
