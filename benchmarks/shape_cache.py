"""What a new input shape costs a linear layer on this CPU: memory kept and time, under each precision.

    .venv/bin/python benchmarks/shape_cache.py
    .venv/bin/python benchmarks/shape_cache.py --widths 100 --multiple 32

One SmolLM2-135M MLP projection (576 -> 1536, with bias) runs forward + backward on [4, w, 576] inputs, once
per width w in 40 .. 40 + N - 1 (a new shape every time: a PPO micro-batch trimmed to its own width), then on
the same widths rounded up to a multiple (``pad_to_multiple_of``: a few shapes, each met many times). Printed
per precision: malloc heap in use kept after the loop (glibc mallinfo2 ``uordblks``, over the level after
three warm-up calls)
and milliseconds per forward + backward. Under bf16 autocast on a CPU with AVX512-BF16 / AMX, torch runs the
matmuls through oneDNN, which keeps a primitive and its memory per shape (an LRU of up to 1024, capacity from
``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` and ideep's ``LRU_CACHE_CAPACITY``); float32 matmuls do not. Each
precision runs in a fresh process (the caches are process-wide).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys


def worker(precision: str, widths: list[int]) -> dict[str, float]:
    import time

    import torch

    from tether.tracking.memory import _glibc  # mallinfo2, loaded once

    torch.set_num_threads(2)
    torch.manual_seed(0)
    layer = torch.nn.Linear(576, 1536)

    def step(width: int) -> None:
        x = torch.randn(4, width, 576, requires_grad=True)
        with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16-mixed"):
            y = layer(x)
        y.float().square().mean().backward()
        layer.zero_grad(set_to_none=True)

    for width in widths[:3]:
        step(width)
    libc = _glibc()
    kept = libc.mallinfo2().uordblks  # malloc's heap only: mmapped blocks (MKL's, big tensors) excluded
    start = time.perf_counter()
    for width in widths:
        step(width)
    seconds = time.perf_counter() - start
    return {"kept_mib": (libc.mallinfo2().uordblks - kept) / 2**20, "ms": 1e3 * seconds / len(widths)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", type=int, default=100, help="distinct trimmed widths, from 40 up")
    parser.add_argument("--multiple", type=int, default=32)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    trimmed = list(range(40, 40 + args.widths))
    rounded = [-(-w // args.multiple) * args.multiple for w in trimmed]
    if args.worker:
        precision, kind = args.worker.split(":")
        print(json.dumps(worker(precision, trimmed if kind == "trimmed" else rounded)))
        return
    import torch

    from tether.tracking.metrics import hardware_description

    print(f"{hardware_description()} (torch {torch.__version__}, capability {torch.backends.cpu.get_cpu_capability()}); "
          f"{args.widths} micro-batches of widths 40..{39 + args.widths}, Linear 576 -> 1536, 2 threads")
    print(f"{'precision':<11} {'widths':<22} {'distinct':>8} {'heap kept':>10} {'ms / fwd+bwd':>13}")
    for precision in ("fp32", "bf16-mixed"):
        for kind, widths in (("trimmed", trimmed), (f"multiple of {args.multiple}", rounded)):
            out = subprocess.run([sys.executable, __file__, "--worker", f"{precision}:{kind.split()[0]}",
                                  "--widths", str(args.widths), "--multiple", str(args.multiple)],
                                 check=True, capture_output=True, text=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{precision:<11} {kind:<22} {len(set(widths)):>8} {result['kept_mib']:>7.1f} MiB "
                  f"{result['ms']:>13.2f}")


if __name__ == "__main__":
    main()
