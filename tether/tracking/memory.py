"""Where the bytes are, per phase of an iteration: the process's resident memory and the allocator's view.

``phase_memory("rollout", device)`` → ``memory/rollout/rss_gib`` (resident now), and on Linux/glibc
``memory/rollout/heap_in_use_gib`` (bytes malloc has handed out and not got back: live tensors and
everything else) and ``memory/rollout/heap_free_gib`` (freed but still resident in malloc's heap and
mmapped chunks: fragmentation, or what ``reuse_freed_memory`` keeps on purpose). Growth of in-use across
iterations is a leak; growth of free is fragmentation. On CUDA, ``gpu_allocated_gib`` / ``gpu_reserved_gib``
(torch's caching allocator). Reading these costs microseconds (``/proc/self/status`` and ``mallinfo2``).

``release_free_heap()`` hands malloc's free pages back to the OS (``malloc_trim``) when more than a
threshold is free — at an iteration boundary, so a run's resident memory follows what it uses, not the
high-water mark of every shape it ever saw.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from pathlib import Path

GIB = float(2**30)

_libc = None


class _Mallinfo2(ctypes.Structure):
    """glibc ≥ 2.33 ``struct mallinfo2`` (all ``size_t``)."""

    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _glibc():
    global _libc
    if _libc is None:
        _libc = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c"))
            except OSError:  # pragma: no cover - no libc to load
                libc = None
            if libc is not None and hasattr(libc, "mallinfo2") and hasattr(libc, "malloc_trim"):
                libc.mallinfo2.restype = _Mallinfo2
                libc.malloc_trim.argtypes = [ctypes.c_size_t]
                _libc = libc
    return _libc or None


def rss_bytes() -> int | None:
    """Resident set size of this process now (``VmRSS``), or None where ``/proc`` is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:  # not Linux
        return None
    return None


def heap_bytes() -> tuple[int, int] | None:
    """``(in use, free)`` bytes of glibc malloc (``mallinfo2``: ``uordblks + hblkhd``, ``fordblks``), or None
    without glibc ≥ 2.33. Free bytes sit in the heap; mmapped chunks are in use until freed."""
    libc = _glibc()
    if libc is None:
        return None
    info = libc.mallinfo2()
    return int(info.uordblks + info.hblkhd), int(info.fordblks)


def phase_memory(phase: str, device=None) -> dict[str, float]:
    """``memory/<phase>/...`` GiB: ``rss_gib``, ``heap_in_use_gib``, ``heap_free_gib`` (where known) and, on
    a CUDA ``device``, ``gpu_allocated_gib`` and ``gpu_reserved_gib``."""
    stats: dict[str, float] = {}
    rss = rss_bytes()
    if rss is not None:
        stats[f"memory/{phase}/rss_gib"] = rss / GIB
    heap = heap_bytes()
    if heap is not None:
        stats[f"memory/{phase}/heap_in_use_gib"] = heap[0] / GIB
        stats[f"memory/{phase}/heap_free_gib"] = heap[1] / GIB
    if device is not None:
        import torch

        device = torch.device(device)
        if device.type == "cuda":
            stats[f"memory/{phase}/gpu_allocated_gib"] = torch.cuda.memory_allocated(device) / GIB
            stats[f"memory/{phase}/gpu_reserved_gib"] = torch.cuda.memory_reserved(device) / GIB
    return stats


def release_free_heap(threshold_bytes: int = 256 << 20) -> int:
    """``malloc_trim(0)`` when more than ``threshold_bytes`` are free in malloc's heap: the free pages go back
    to the OS (touched again, they fault in anew). Returns the resident bytes released (0 if nothing was done
    or where glibc is not there)."""
    libc, heap = _glibc(), heap_bytes()
    if libc is None or heap is None or heap[1] <= threshold_bytes:
        return 0
    before = rss_bytes() or 0
    libc.malloc_trim(0)
    return max(0, before - (rss_bytes() or 0))
