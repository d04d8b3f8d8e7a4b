"""Data parallelism behind a thin seam: one process, or N under ``torchrun`` — the same code.

``Distributed.from_environment(sharding)`` reads the variables torchrun sets (``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``) and joins the process group: gloo on CPU, NCCL on GPUs.
The trainer asks this object, never ``torch.distributed`` directly, for: ``shard_models`` (FSDP2
under ``sharding: fsdp2``, sharding.py) and ``wrap`` (DDP under ``ddp``), the sums and gathers that
make statistics global, ``is_main`` (who writes) and ``barrier``. With one process every call is the
identity, so single-process runs pay nothing. The PPO loop does not ask which kind it has.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
from typing import Any, NoReturn

import torch
import torch.distributed as dist
from torch import nn

logger = logging.getLogger(__name__)


_joined = False  # tether joined the process group (from_environment), so tether's exit may end the process


def joined_process_group() -> bool:
    """True when ``Distributed.from_environment`` joined a process group in this process."""
    return _joined


def end_worker_process(code: int) -> NoReturn:
    """End a torchrun worker that finished: run the exit handlers (``leave_process_group`` among them,
    logging's flush), flush stdio, then ``os._exit(code)``, skipping interpreter finalisation and C++
    static destructors. A gloo worker can abort there after a finished run (SIGABRT, "terminate called
    without an active exception", no Python frame left on the stack) even after ``destroy_process_group``:
    seen in about one of three CI runs of the 2-process tests, and torchrun then reports the whole run
    as failed. Only for processes tether started (the CLI, test workers); a user's script exits as usual."""
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def leave_process_group() -> None:
    """``destroy_process_group`` at interpreter exit, while Python is still whole: a gloo process that
    exits without it can abort (SIGABRT, "terminate called without an active exception") when gloo's
    worker threads release tensors during interpreter finalisation (pytorch#190489), and torchrun then
    reports a finished run as failed."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class Distributed:
    """Rank, world size and the collectives PPO needs. One process: all identities."""

    def __init__(self, sharding: str = "ddp"):
        self.enabled = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.rank = dist.get_rank() if self.enabled else 0
        self.world_size = dist.get_world_size() if self.enabled else 1
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0")) if self.enabled else 0
        self.sharding = sharding
        self.sharded = self.enabled and sharding == "fsdp2"  # FSDP2 across the processes (else DDP)

    @classmethod
    def from_environment(cls, sharding: str = "ddp") -> Distributed:
        """Join the process group torchrun describes (if any and not joined yet)."""
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            if backend == "nccl":
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group(backend)
            global _joined
            _joined = True
            atexit.register(leave_process_group)  # the group tether joined, tether leaves
            logger.info("joined process group: rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), backend)
        return cls(sharding)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self) -> torch.device:
        """This rank's device: ``cuda:LOCAL_RANK`` when GPUs exist, else the CPU."""
        return torch.device(f"cuda:{self.local_rank}") if torch.cuda.is_available() else torch.device("cpu")

    def shard_models(self, *modules: nn.Module | None, mixed_precision: bool = False) -> tuple:
        """FSDP2: each module (policy, reference, critic, value head; None passes through) sharded in
        place across the processes, every rank starting from rank 0's weights. Otherwise: unchanged."""
        if not self.sharded:
            return modules
        from torch.distributed.device_mesh import init_device_mesh

        from .sharding import shard

        device = self.device()
        mesh = init_device_mesh(device.type, (self.world_size,))
        force_sum = dist.get_backend() == "gloo"
        return tuple(None if m is None else shard(m, mesh, mixed_precision and device.type == "cuda", force_sum)
                     for m in modules)

    def rollout(self, module: nn.Module, gather: bool = True):
        """The context sampling from ``module`` runs in. Sharded with ``gather``: its weights gathered
        once for the whole rollout and resharded after (``sharding.gathered``); else nothing."""
        if not (self.sharded and gather):
            return contextlib.nullcontext()
        from .sharding import gathered

        return gathered(module)

    def scoring(self, reward):
        """The context a reward call runs in: a ``RewardModelScorer`` whose model is sharded has its
        weights gathered once for the call (every rank enters, whatever the number of rows it scores)
        and resharded after; any other reward: nothing."""
        from .sharding import gathered, is_sharded

        model = getattr(reward, "model", None)
        if not (self.sharded and is_sharded(model)):
            return contextlib.nullcontext()
        return gathered(model)

    def wrap(self, module: nn.Module | None) -> nn.Module | None:
        """``DistributedDataParallel(module)`` across ranks (it broadcasts rank 0's weights, so every
        rank starts equal, and averages gradients in backward); the module itself with one process, or
        when it is sharded (FSDP2 reduces its gradients itself)."""
        if module is None or not self.enabled or self.sharded or not any(p.requires_grad for p in module.parameters()):
            return module
        from torch.nn.parallel import DistributedDataParallel

        device = next(module.parameters()).device
        return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over ranks (a new tensor)."""
        if not self.enabled:
            return tensor
        out = tensor.detach().clone()
        dist.all_reduce(out)
        return out

    def sum_floats(self, values: dict[str, float]) -> dict[str, float]:
        """Sum a dict of floats over ranks in one collective (same keys on every rank)."""
        if not self.enabled or not values:
            return values
        keys = sorted(values)
        summed = self.sum(torch.tensor([values[k] for k in keys], dtype=torch.float64, device=self.device()))
        return dict(zip(keys, summed.tolist()))

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate equal-shaped ``[B, ...]`` tensors of all ranks along dim 0 in rank order."""
        if not self.enabled:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    def gather_objects(self, obj: Any) -> list[Any]:
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def any(self, flag: bool) -> bool:
        """True when ``flag`` is true on any rank (so every rank takes the same branch)."""
        if not self.enabled:
            return flag
        return bool(self.sum(torch.tensor([float(flag)], device=self.device())).item() > 0)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


__all__ = ["Distributed"]
