"""Saving and resuming: ``save_pretrained`` (weights in Hugging Face format, written atomically) and
training checkpoints, which add everything needed to continue a run exactly where it stopped.

Layout of ``RUN/checkpoints/step-000040/`` (written atomically: a temporary directory renamed into
place, so a directory with this name is always complete)::

    model.safetensors | adapter_model.safetensors, config.json, tokenizer   the policy (HF / peft)
    critic/ | value_head.safetensors                                      the critic
    trainer_state.pt     optimizer, scheduler, RNG states (read back with torch.load(weights_only=True))
    tether_state.json    iteration, KL controller, data position, fault counters, config
    sharded/             sharding: fsdp2 only — trained weights and optimiser state written with
                         torch.distributed.checkpoint, each process its shards; loaded at any number of
                         processes (DCP reshards), sharded or not (trainer_state.pt then has no optimizer)

Continuing bit-exactly needs the RNG states *at the iteration boundary* the checkpoint stands for
(one per data-parallel process), and the data position (epoch, prompts used, that epoch's order).
The data position counts prompts, so a run saved with N processes resumes with another number
(then each process that has no saved RNG state of its own is reseeded: not bit-exact, but sound).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import random
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..models.critic import VALUE_HEAD_FILE, is_peft
from ..models.loading import BASE_FILE
from ..models.weights import (
    load_head,
    load_policy_weights,
    load_state_into,
    read_safetensors_dir,
    strip_fsdp_class_names,
)
from ..tracking import write_atomically, write_json
from ..tracking.model_card import write_model_card
from .faults import NumericalError, first_nonfinite_parameter
from .ppo import PPOLearner
from .sharding import full_state_dict, is_sharded

logger = logging.getLogger(__name__)

TRAINER_STATE_FILE = "trainer_state.pt"
STATE_FILE = "tether_state.json"


@dataclass
class DataPosition:
    """Where train() is in its prompt stream: the next batch to draw."""

    epoch: int = 0
    offset: int = 0
    """Prompts of the epoch's order already used (a multiple of the global batch)."""
    order: list[int] | None = None
    """The epoch's shuffled prompt order; None until drawn (at the start of an epoch)."""
    num_prompts: int = 0
    fingerprint: str = ""
    """sha256 of the prompts, so a resume with other data is caught."""

    batches: int = 0
    """Iterations so far in the run, including skipped ones (under dynamic sampling an iteration
    draws one or more global batches)."""

    def advanced(self, global_batch: int, available: int, iteration_done: bool = True) -> DataPosition:
        """The position after one global batch of ``global_batch`` of the ``available`` prompts; a new
        epoch starts when the next batch would not fit. ``iteration_done=False``: a draw inside an
        iteration (dynamic sampling draws several), not counted in ``batches``."""
        offset = self.offset + global_batch
        batches = self.batches + int(iteration_done)
        if offset + global_batch <= available:
            return dataclasses.replace(self, offset=offset, batches=batches)
        return dataclasses.replace(self, epoch=self.epoch + 1, offset=0, order=None, batches=batches)


def fingerprint(prompts: list[Any]) -> str:
    return hashlib.sha256(json.dumps(prompts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def capture_rng(shuffle_generator: torch.Generator) -> dict:
    """Python, numpy, torch (CPU and CUDA) and the trainer's shuffle-generator states."""
    import numpy as np

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "shuffle": shuffle_generator.get_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict, shuffle_generator: torch.Generator) -> None:
    import numpy as np

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype("uint32"), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    shuffle_generator.set_state(state["shuffle"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


SHARDED_DIR = "sharded"


def trained_modules(learner: PPOLearner) -> torch.nn.Module:
    """The modules the optimiser trains, under fixed names (``policy``, ``critic``, ``value_head``): what
    ``torch.distributed.checkpoint`` keys the weights and optimiser state by."""
    parts = {"policy": learner.policy, "critic": learner.critic, "value_head": learner.value_head}
    return torch.nn.ModuleDict({k: v for k, v in parts.items() if v is not None})


@contextlib.contextmanager
def _one_process_dcp():
    """torch.distributed.checkpoint warns, in one process, that it assumes one process: that is intended."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def write_sharded_state(learner: PPOLearner, directory: Path) -> None:
    """Every process writes its shards of the trained weights and the optimiser state to ``directory``
    (``torch.distributed.checkpoint``; a collective: every rank calls it)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(trained_modules(learner), learner.optimizer)
    with _one_process_dcp():
        dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(directory),
                 no_dist=not learner.dist.enabled)


def read_sharded_state(learner: PPOLearner, directory: Path) -> None:
    """Load what ``write_sharded_state`` wrote into the learner's modules and optimiser, resharded for
    this run's number of processes (or unsharded in one process)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    modules = trained_modules(learner)
    model_state, optim_state = get_state_dict(modules, learner.optimizer)
    state = {"model": model_state, "optim": optim_state}
    with _one_process_dcp():
        dcp.load(state, checkpoint_id=str(directory), no_dist=not learner.dist.enabled)
    set_state_dict(modules, learner.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


def write_training_state(learner: PPOLearner, tmp: Path, rngs: list[dict], position: DataPosition | None) -> None:
    """Write the non-weight state of the PPO ``learner`` into the checkpoint directory ``tmp``; ``rngs``:
    the RNG states of every process, in rank order. Under ``sharding: fsdp2`` the optimiser state is
    in ``sharded/`` instead (written by every process before)."""
    torch.save({
        "optimizer": None if learner.config.sharding == "fsdp2" else learner.optimizer.state_dict(),
        "scheduler": learner.scheduler.state_dict() if learner.scheduler is not None else None,
        "rng": rngs,
    }, tmp / TRAINER_STATE_FILE)
    state = {
        "iteration": learner.iteration,
        "kl_ctl": learner.kl_ctl.state_dict(),
        "faults": learner.faults.state_dict(),
        "position": dataclasses.asdict(position) if position is not None else None,
        "config": dataclasses.asdict(learner.config),
    }
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))


def read_training_state(learner: PPOLearner, directory: str | Path) -> DataPosition | None:
    """Load weights, optimizer, scheduler, KL controller, RNG and counters of a checkpoint into
    the PPO ``learner`` (built from the same config and base model); returns the saved data position."""
    directory = Path(directory)
    if not (directory / TRAINER_STATE_FILE).exists():
        raise FileNotFoundError(f"{directory}: not a training checkpoint (no {TRAINER_STATE_FILE}; "
                                "final/ holds weights only)")
    state = json.loads((directory / STATE_FILE).read_text())
    _warn_config_changes(state.get("config", {}), dataclasses.asdict(learner.config), directory)
    saved = torch.load(directory / TRAINER_STATE_FILE, weights_only=True)
    if saved["scheduler"] is not None:  # built before the optimizer state is loaded: building resets the lr
        learner.scheduler = learner.make_scheduler()
    if (directory / SHARDED_DIR).is_dir():
        read_sharded_state(learner, directory / SHARDED_DIR)
    elif is_sharded(learner.policy):
        raise ValueError(f"{directory} was written without sharding='fsdp2' (no {SHARDED_DIR}/): resume it with "
                         "sharding='ddp', or start the sharded run from its weights (final/ or model files)")
    else:
        load_policy_weights(learner.policy, directory)
        if learner.critic is not None:
            load_state_into(learner.critic.backbone, read_safetensors_dir(directory / "critic"),
                            str(directory / "critic"))
            load_head(learner.critic.head, directory / "critic" / VALUE_HEAD_FILE)
        if learner.value_head is not None:
            load_head(learner.value_head, directory / VALUE_HEAD_FILE)
        if saved["optimizer"] is None:
            raise ValueError(f"{directory}: no optimiser state (a sharded checkpoint without {SHARDED_DIR}/?)")
        learner.optimizer.load_state_dict(saved["optimizer"])
    if saved["scheduler"] is not None:
        learner.scheduler.load_state_dict(saved["scheduler"])
    rngs, rank = saved["rng"], learner.dist.rank
    if len(rngs) == learner.dist.world_size:
        restore_rng(rngs[rank], learner.shuffle_generator)
    else:
        logger.warning("%s was saved by %d processes, this run has %d: sampling RNG streams are reseeded",
                       directory, len(rngs), learner.dist.world_size)
        restore_rng(rngs[0], learner.shuffle_generator)  # the shuffle stream is the same on every rank
        if rank:
            seed = learner.config.seed + 7919 * rank + int(state["iteration"])
            random.seed(seed)
            torch.manual_seed(seed)
    learner.iteration = int(state["iteration"])
    learner.kl_ctl.load_state_dict(state["kl_ctl"])
    learner.faults.load_state_dict(state["faults"])
    return DataPosition(**state["position"]) if state.get("position") else None


def _warn_config_changes(saved: dict, current: dict, directory: Path) -> None:
    changed = sorted(k for k in current if k in saved and saved[k] != current[k] and k != "total_steps")
    if changed:
        logger.warning("resuming from %s with changed options: %s", directory,
                       ", ".join(f"{k}: {saved[k]!r} -> {current[k]!r}" for k in changed))


__all__ = ["DataPosition", "capture_rng", "fingerprint", "read_training_state", "restore_rng",
           "write_training_state"]


def save_pretrained(trainer, directory: str | Path, extra: Callable[[Path], None] | None = None) -> Path:
    """``PPOTrainer.save_pretrained``: policy (or its peft adapters) and tokenizer at the top, the
    critic under ``critic/`` (or ``value_head.safetensors``), a model card and ``tether_state.json``
    (or what ``extra(tmp_dir)`` writes instead), all renamed into place at once."""
    learner = trainer.ppo
    bad = first_nonfinite_parameter([("", learner.policy), ("critic.", learner.critic),
                                     ("value_head.", learner.value_head)])
    if learner.dist.any(bad is not None):  # sharded: each process checks its own shards
        raise NumericalError(f"refusing to save {directory}: parameter {bad or '(on another process)'} is not finite")
    # sharded: the full weights, gathered tensor by tensor by every process, kept by rank 0 (on the CPU)
    gathered = {name: full_state_dict(module) if is_sharded(module) else None
                for name, module in (("policy", learner.policy), ("critic", learner.critic),
                                     ("value_head", learner.value_head))}

    def write(tmp: Path) -> None:
        save_policy(learner.policy, tmp, gathered["policy"])
        trainer.tokenizer.save_pretrained(tmp)
        source = getattr(learner.policy, "_tether_source", None)
        adapters = is_peft(learner.policy)
        if adapters and source:
            write_json(tmp / BASE_FILE, source)
        write_model_card(tmp, "adapter" if adapters else "policy",
                         base_model=(source or {}).get("name_or_path") or learner.config.model_name,
                         config=dataclasses.asdict(learner.config), metrics=trainer.last_stats, final_path=directory)
        if learner.critic is not None:
            learner.critic.save_pretrained(tmp / "critic", state_dict=gathered["critic"])
        if learner.value_head is not None:
            from safetensors.torch import save_file

            head_state = gathered["value_head"] or learner.value_head.state_dict()
            save_file({k: v.contiguous() for k, v in head_state.items()}, tmp / VALUE_HEAD_FILE)
        if extra is not None:
            extra(tmp)
        else:
            write_json(tmp / STATE_FILE, {"iteration": learner.iteration, "kl_ctl": learner.kl_ctl.state_dict(),
                                          "model_name": learner.config.model_name})

    if learner.dist.is_main:
        write_atomically(directory, write)
    learner.dist.barrier()
    return Path(directory)


def save_policy(policy: torch.nn.Module, directory: Path, state_dict: dict | None) -> None:
    """``policy.save_pretrained(directory)``; from ``state_dict`` (the gathered full weights) when the
    policy is sharded, with the class name FSDP gave it taken out of ``config.architectures``."""
    if state_dict is None:
        policy.save_pretrained(directory)
        return
    policy.save_pretrained(directory, state_dict=state_dict)
    strip_fsdp_class_names(directory)


def save_checkpoint(trainer, directory: str | Path) -> Path:
    """``PPOTrainer.save_checkpoint``: ``save_pretrained``'s files plus the training state as of the
    last iteration boundary (``trainer.boundary``: RNG states and, inside ``train()``, data position)."""
    learner = trainer.ppo
    rng, position = trainer.boundary if trainer.boundary else (capture_rng(learner.shuffle_generator), None)
    rngs = learner.dist.gather_objects(rng)  # one RNG state per process
    directory = Path(directory)
    sharded_tmp = None
    if learner.config.sharding == "fsdp2":  # every process writes its shards, next to the checkpoint
        sharded_tmp = directory.parent / f".{directory.name}.{SHARDED_DIR}-tmp"
        if learner.dist.is_main and sharded_tmp.exists():
            shutil.rmtree(sharded_tmp)  # left by a run killed while writing
        learner.dist.barrier()
        write_sharded_state(learner, sharded_tmp)
        learner.dist.barrier()

    def extra(tmp: Path) -> None:
        write_training_state(learner, tmp, rngs, position)
        if sharded_tmp is not None:
            os.rename(sharded_tmp, tmp / SHARDED_DIR)

    return save_pretrained(trainer, directory, extra=extra)
