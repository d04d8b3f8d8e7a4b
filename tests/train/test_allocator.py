"""CPU training keeps freed memory in the process (glibc malloc without mmap)."""

import subprocess
import sys

import pytest

from tether.train.allocator import _glibc

pytestmark = pytest.mark.skipif(_glibc() is None, reason="glibc only (Linux)")

# allocate and free a 256 MiB tensor, then read glibc's counters: bytes in mmapped blocks (hblkhd)
# and bytes held free in the heap (fordblks)
PROBE = """
import ctypes, ctypes.util, sys, torch
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.mallinfo2.restype = Info
if sys.argv[1] == "trainer":
    from tether import PPOConfig, PPOTrainer
    sys.path.insert(0, "tests")
    from tiny import tiny_llama, tiny_tokenizer
    tok = tiny_tokenizer()
    PPOTrainer(PPOConfig(reuse_freed_memory=sys.argv[2] == "1"), tiny_llama(tok), tok)
x = torch.ones(64 << 20)
during = libc.mallinfo2().hblkhd
del x
print(during, libc.mallinfo2().fordblks)
"""


def probe(*args: str) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, check=True)
    mmapped, free_in_heap = out.stdout.split()[-2:]
    return int(mmapped), int(free_in_heap)


def test_trainer_on_cpu_keeps_large_blocks_in_the_heap():
    mmapped, free_in_heap = probe("trainer", "1")
    assert mmapped < 64 << 20 and free_in_heap >= 256 << 20  # served from the heap and kept after free
    mmapped, free_in_heap = probe("trainer", "0")  # opted out: glibc's defaults, a fresh mmap
    assert mmapped >= 256 << 20 and free_in_heap < 256 << 20


def test_keep_freed_memory_is_idempotent():
    from tether.train.allocator import keep_freed_memory

    assert keep_freed_memory() is True
    assert keep_freed_memory() is True
