"""A frozen model whose weights live in a file between uses instead of in the process's memory.

The PPO reference is read once per iteration (its log-probs of the rollout) and then sits idle through the
update phase, which is where a run's memory peaks. ``ParkedWeights(model)`` writes the model's parameters
once to a file, and between uses replaces each parameter's data with an empty tensor (``park()``); before
a forward it maps them back from the file (``unpark()``, ``torch.load(mmap=True)``: no copy on a CPU — the
pages come from the OS's file cache as they are read, and leave the process when parked again). A forward
pre-hook unparks, so any call of the model works while parked; reading its parameters directly while parked
gives empty tensors.

The cost is one write of the weights (2 bytes per parameter in bf16) and, per use, mapping them in from the
file cache (from disk if the OS has dropped them). The bytes move from the process to the OS's file cache,
which the OS reclaims under memory pressure. The file is deleted when the model is collected or at exit.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import weakref
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)


def offload_dir() -> Path:
    """Where parked weights go: ``$TETHER_OFFLOAD_DIR``, else ``offload/`` in tether's cache directory (on disk;
    the system temp directory is often a RAM-backed tmpfs, which would keep the bytes in memory)."""
    if os.environ.get("TETHER_OFFLOAD_DIR"):
        return Path(os.environ["TETHER_OFFLOAD_DIR"])
    from ..assets import cache_root

    return cache_root() / "offload"


class ParkedWeights:
    """Park a frozen model's parameters in a file between uses (see the module docstring).

    ``park()`` / ``unpark()`` are idempotent; ``parked`` says which state it is in. Tied parameters (one
    ``nn.Parameter`` in two places) are stored once and stay tied."""

    def __init__(self, model: nn.Module, directory: Path | None = None):
        if any(p.requires_grad for p in model.parameters()):
            raise ValueError("only a frozen model's weights can be parked (a parameter requires grad)")
        self.device = next(model.parameters()).device
        self._params = dict(model.named_parameters())  # named_parameters() lists a tied parameter once
        directory = Path(directory) if directory is not None else offload_dir()
        directory.mkdir(parents=True, exist_ok=True)
        self._dir = Path(tempfile.mkdtemp(prefix="reference-", dir=directory))
        self.path = self._dir / "weights.pt"
        torch.save({name: p.detach().cpu() for name, p in self._params.items()}, self.path)
        self._finalizer = weakref.finalize(self, shutil.rmtree, self._dir, ignore_errors=True)
        self.parked = False
        self._hook = model.register_forward_pre_hook(lambda module, args: self.unpark())
        self.bytes = sum(p.numel() * p.element_size() for p in self._params.values())
        logger.debug("reference weights (%.2f GiB) parked in %s between uses", self.bytes / 2**30, self.path)

    def park(self) -> None:
        """Drop the parameters' data (each becomes an empty tensor of its dtype)."""
        if self.parked:
            return
        for p in self._params.values():
            p.data = torch.empty(0, dtype=p.dtype, device=p.device)
        self.parked = True

    def unpark(self) -> None:
        """Map the parameters back from the file (copied to the model's device when that is not the CPU)."""
        if not self.parked:
            return
        state = torch.load(self.path, mmap=True, weights_only=True, map_location="cpu")
        for name, p in self._params.items():
            p.data = state[name].to(self.device) if self.device.type != "cpu" else state[name]
        self.parked = False

    def close(self) -> None:
        """Unpark for good, remove the hook and delete the file."""
        self.unpark()
        for p in self._params.values():  # own the memory again: the file is about to go
            p.data = p.data.clone()
        self._hook.remove()
        self._finalizer()
