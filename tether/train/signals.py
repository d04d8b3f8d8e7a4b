"""SIGINT / SIGTERM during training: finish the iteration, checkpoint, then stop."""

from __future__ import annotations

import logging
import signal
import threading

logger = logging.getLogger(__name__)


class TrainingInterrupted(KeyboardInterrupt):
    """Raised by ``train()`` after a stop signal, once the checkpoint named by ``checkpoint`` is written."""

    def __init__(self, signal_name: str, checkpoint):
        super().__init__(f"{signal_name}: checkpoint saved to {checkpoint}")
        self.signal_name, self.checkpoint = signal_name, checkpoint

    @property
    def exit_code(self) -> int:
        return 128 + int(getattr(signal, self.signal_name, signal.SIGINT))


class StopRequests:
    """Context manager that turns SIGINT/SIGTERM into a request, read at iteration boundaries.

    ``requested`` is the signal's name once one arrived. A second SIGINT raises KeyboardInterrupt at
    once (the last complete checkpoint stays the latest). Handlers are installed only in the main
    thread and restored on exit.
    """

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested: str | None = None
        self._previous: dict = {}

    def __enter__(self) -> StopRequests:
        if self.enabled:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = name
        logger.warning("%s received: finishing this iteration, then saving a checkpoint "
                       "(Ctrl-C again stops at once, losing the iteration)", name)
