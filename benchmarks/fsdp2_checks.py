"""Three facts about FSDP2 on CPU (gloo) that tether's sharding relies on, checked on this torch:

    .venv/bin/python -m torch.distributed.run --standalone --nproc_per_node 2 benchmarks/fsdp2_checks.py

1. Gradient reduction: with FSDP2's default reduction (AVG) and with force-sum
   (``set_force_sum_reduction_for_comms``, what tether uses on gloo), a sharded linear layer's gradient
   after a rank-dependent loss must be the *mean* of the two ranks' gradients (pytorch#162338 reported a
   silent sum on gloo).
2. bf16 ``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`` over gloo: does it run, are the
   sharded gradients fp32, and how far is the gradient from the fp32 one.
3. ``torch.nn.utils.clip_grad_norm_`` of sharded gradients returns a DTensor: whether ``float()`` of it
   (without ``full_tensor()``) is the global norm or only this rank's.

Each prints one line: what was expected, what happened. Nothing here is a test of tether's code; the
tests in tests/distributed check tether's use of these facts against one process.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 8, bias=False), nn.Linear(8, 4, bias=False))


def grads_of(mesh, force_sum: bool, mixed: bool) -> tuple[torch.Tensor, torch.dtype]:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    m = model()
    kwargs = {"mesh": mesh}
    if mixed:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for layer in m:
        fully_shard(layer, **kwargs)
    fully_shard(m, **kwargs)
    if force_sum:
        for unit in [m, *m]:
            unit.set_force_sum_reduction_for_comms(True)
    rank = dist.get_rank()
    x = torch.full((2, 8), float(rank + 1))
    (m(x).sum() * (rank + 1)).backward()  # rank-dependent: the mean differs from the sum and from each rank's
    grad = m[0].weight.grad
    return grad.full_tensor(), grad.to_local().dtype


def reference_mean_grad() -> torch.Tensor:
    """The mean over ranks of each rank's own gradient, computed in one process without FSDP."""
    grads = []
    for rank in range(dist.get_world_size()):
        m = model()
        x = torch.full((2, 8), float(rank + 1))
        (m(x).sum() * (rank + 1)).backward()
        grads.append(m[0].weight.grad)
    return torch.stack(grads).mean(0)


def main() -> None:
    dist.init_process_group("gloo")
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    expected = reference_mean_grad()
    lines = []
    for force_sum in (False, True):
        grad, _ = grads_of(mesh, force_sum, mixed=False)
        ratio = (grad.norm() / expected.norm()).item()
        verdict = "mean (correct)" if torch.allclose(grad, expected, rtol=1e-5, atol=1e-6) else (
            "SUM (pytorch#162338)" if abs(ratio - dist.get_world_size()) < 1e-3 else f"wrong, |g|/|mean| = {ratio:.4f}")
        lines.append(f"1. reduction {'force-sum' if force_sum else 'default AVG'}: {verdict}")
    try:
        grad, dtype = grads_of(mesh, force_sum=True, mixed=True)
        rel = ((grad - expected).norm() / expected.norm()).item()
        lines.append(f"2. bf16 MixedPrecisionPolicy over gloo: runs; sharded gradient dtype {dtype}; "
                     f"relative error vs fp32 {rel:.2e} (bf16 has 8 bits of mantissa: ~4e-3)")
    except Exception as err:  # noqa: BLE001 - the check reports whatever fails
        lines.append(f"2. bf16 MixedPrecisionPolicy over gloo: FAILS: {type(err).__name__}: {err}")
    from torch.distributed.fsdp import fully_shard

    m = model()
    for layer in m:
        fully_shard(layer, mesh=mesh)
    fully_shard(m, mesh=mesh)
    (m(torch.full((2, 8), float(dist.get_rank() + 1))).sum()).backward()
    norm = torch.nn.utils.clip_grad_norm_(m.parameters(), max_norm=1e9)
    full_grads = [p.grad.full_tensor() for p in m.parameters()]
    true_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in full_grads])).item()
    local_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad.to_local())
                                                       for p in m.parameters()])).item()
    as_float = float(norm.to_local()) if hasattr(norm, "to_local") else float(norm)
    lines.append(f"3. clip_grad_norm_ returns {type(norm).__name__}; its local value {as_float:.6f}, "
                 f"full_tensor() {float(norm.full_tensor()) if hasattr(norm, 'full_tensor') else float(norm):.6f}, "
                 f"true global norm {true_norm:.6f}, this rank's shards alone {local_norm:.6f}")
    if dist.get_rank() == 0:
        print(f"torch {torch.__version__}, {dist.get_world_size()} gloo processes")
        print("\n".join(lines))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
