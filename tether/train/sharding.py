"""FSDP2 sharding (``torch.distributed.fsdp.fully_shard``): what ``Distributed`` does under ``sharding: fsdp2``.

A model too big to hold N times is split across the N processes: each keeps 1/N of every parameter,
gradient and AdamW state, and the full weights of one decoder layer exist only while that layer runs
(gathered before its forward, freed after; gathered again for its backward). Layout, as veRL, SkyRL
and torchtitan apply it:

* one FSDP unit per decoder layer (the classes a Hugging Face model lists in ``_no_split_modules``),
  then the root, which holds the embeddings, final norm and LM head: tied ``lm_head`` / ``embed_tokens``
  therefore stay one parameter in one group (torch 2.13 refuses a parameter shared by two groups);
* on gloo (CPU) every unit sums its reduce-scatter and divides locally
  (``set_force_sum_reduction_for_comms``), avoiding gloo's AVG path (pytorch#162338); tether's loss
  is already normalised by global token counts and multiplied by N, so the average is what is wanted;
* under ``bf16-mixed`` on CUDA, ``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)``: bf16
  gathers, fp32 gradient reduction, fp32 sharded master weights. On CPU the gathers stay fp32 (gloo's
  bf16 collectives are untested upstream); autocast still computes in bf16.

Copies (reference, critic) are made before sharding: a sharded module cannot be deep-copied. Every
rank must run every forward of a sharded model, in the same order: the trainer's loops do (equal
micro-batch counts on every rank; generation synchronises its stop through transformers'
``synced_gpus``, which it turns on for FSDP-managed models).

Sources: ``../shared/notes/fsdp2.md`` (anchors and torch 2.13 behaviour); PyTorch's FSDP2 docs.
"""

from __future__ import annotations

import contextlib
from typing import Iterable

import torch
import torch.distributed as dist
from torch import nn

SHARDINGS = ("ddp", "fsdp2")


def decoder_layers(module: nn.Module) -> list[nn.Module]:
    """The decoder layers of every Hugging Face model inside ``module`` (a peft model, a critic's
    backbone): instances of the classes their ``_no_split_modules`` name, outermost first."""
    names: set[str] = set()
    for sub in module.modules():
        names.update(getattr(sub, "_no_split_modules", None) or [])
    return [sub for sub in module.modules() if type(sub).__name__ in names]


def broadcast_from_rank0(module: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (DDP does this at wrap; sharding must too,
    or ranks built from different seeds would each shard their own weights)."""
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=0)


def shard(module: nn.Module, mesh, mixed_precision: bool, force_sum: bool) -> nn.Module:
    """``fully_shard`` ``module`` in place: per decoder layer, then the root. Returns ``module``
    (its class becomes ``FSDP<Class>``; its parameters become ``DTensor`` shards)."""
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    broadcast_from_rank0(module)
    kwargs = {"mesh": mesh}
    if mixed_precision:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for layer in decoder_layers(module):
        fully_shard(layer, **kwargs)
    # the root keeps its weights gathered after forward until backward reshards them; a frozen model
    # (reference, reward model) has no backward, so its root reshards after forward like the layers
    fully_shard(module, reshard_after_forward=True if is_frozen(module) else None, **kwargs)
    if force_sum:
        for sub in module.modules():
            if isinstance(sub, FSDPModule):
                sub.set_force_sum_reduction_for_comms(True)
    return module


@contextlib.contextmanager
def gathered(module: nn.Module):
    """Inside: a sharded ``module``'s weights gathered on entry and kept (one all-gather per unit for a
    whole rollout or scoring phase instead of one per forward); on exit every unit is resharded and
    keeps its layout again (decoder layers reshard after forward, the root of a trained model does not).
    Every rank enters together (the gather is a collective); inside, each rank may run any number of
    forwards, none included, without communicating."""
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in module.modules() if isinstance(m, FSDPModule)]
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
    with torch.no_grad():
        for unit in units:
            unit.unshard()
    try:
        yield
    finally:
        frozen = is_frozen(module)
        for unit in units:
            unit.reshard()
            unit.set_reshard_after_forward(unit is not module or frozen, recurse=False)


def is_frozen(module: nn.Module) -> bool:
    """True when no parameter of ``module`` is trained (the reference, a reward model)."""
    return not any(p.requires_grad for p in module.parameters())


def is_sharded(module: nn.Module | None) -> bool:
    """True for a module ``fully_shard`` has been applied to."""
    if module is None:
        return False
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def as_float(value: torch.Tensor) -> float:
    """A scalar tensor as a float; a ``DTensor`` (a gradient norm of sharded gradients) is reduced first."""
    from torch.distributed.tensor import DTensor

    if isinstance(value, DTensor):
        value = value.full_tensor()
    return float(value)


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded state dict of a sharded ``module`` on rank 0, on the CPU, gathered one tensor at
    a time (every rank must call it; the other ranks get an empty dict). Keys as ``module.state_dict()``."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_parameters(module: nn.Module) -> Iterable[tuple[str, torch.Tensor]]:
    """``(name, full tensor)`` of each parameter of a sharded ``module``, gathered one at a time (at
    most one full tensor alive when the caller drops each before the next)."""
    from torch.distributed.tensor import DTensor

    for name, param in module.named_parameters():
        value = param.detach()
        yield name, value.full_tensor() if isinstance(value, DTensor) else value


__all__ = ["SHARDINGS", "as_float", "broadcast_from_rank0", "decoder_layers", "full_parameters", "full_state_dict",
           "gathered", "is_sharded", "shard"]
