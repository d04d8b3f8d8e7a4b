"""Per-phase memory stats and handing malloc's free pages back to the OS."""

import subprocess
import sys

import pytest

from tether.tracking.memory import heap_bytes, phase_memory, rss_bytes

glibc = pytest.mark.skipif(heap_bytes() is None, reason="glibc >= 2.33 only (mallinfo2)")

# with tether's allocator setting (freed blocks stay in the heap), allocate and free 512 MiB in 32 blocks;
# print GiB: rss after the free, heap free after the free, returned by release_free_heap, rss after it
PROBE = """
import torch
from tether.train.allocator import keep_freed_memory
from tether.tracking.memory import heap_bytes, release_free_heap, rss_bytes
keep_freed_memory()
blocks = [torch.ones(4 << 20) for _ in range(32)]
del blocks
rss, free = rss_bytes(), heap_bytes()[1]
kept = release_free_heap(threshold_bytes=1 << 40)  # above what is free: nothing done
returned = release_free_heap()
print(rss / 2**30, free / 2**30, kept, returned / 2**30, rss_bytes() / 2**30)
"""


@glibc
def test_free_heap_is_reported_and_handed_back_above_the_threshold():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    rss, free, kept, returned, rss_after = map(float, out.stdout.split()[-5:])
    assert free >= 0.45 and kept == 0  # the 512 MiB stayed resident, free inside malloc
    assert returned >= 0.4 and rss_after <= rss - 0.4  # malloc_trim gave it back


@glibc
def test_phase_memory_names_the_phase_and_counts_a_live_tensor():
    import torch

    before = phase_memory("update")
    assert set(before) == {"memory/update/rss_gib", "memory/update/heap_in_use_gib", "memory/update/heap_free_gib"}
    x = torch.ones(64 << 20)  # 256 MiB in use
    during = phase_memory("update")
    assert during["memory/update/heap_in_use_gib"] - before["memory/update/heap_in_use_gib"] >= 0.24
    assert rss_bytes() > 0.25 * 2**30
    del x


def test_a_training_iteration_logs_memory_per_phase(model, tokenizer):
    from tether import PPOConfig, PPOTrainer

    trainer = PPOTrainer(PPOConfig(batch_size=4, mini_batch_size=2, ppo_epochs=1, max_new_tokens=4), model, tokenizer)
    prompts = ["hello there", "abc", "what is up", "zz top"]
    stats = trainer.step(prompts, trainer.generate(prompts), [1.0, 0.0, 0.5, 0.2])
    for phase in ("rollout", "experience", "update"):
        assert stats[f"memory/{phase}/rss_gib"] > 0
    assert "memory/returned_gib" in stats and "memory/peak_rss_gib" in stats
    assert "memory/returned_before_experience_gib" in stats


def test_the_last_updates_gradients_stay_after_a_step_and_go_before_the_next_experience(model, tokenizer):
    """A program may read the gradients after step() (TRL's PPOTrainer kept them); the next step drops them
    before its experience phase instead of holding them beside the scoring forwards."""
    from tether import PPOConfig, PPOTrainer

    trainer = PPOTrainer(PPOConfig(batch_size=4, mini_batch_size=2, ppo_epochs=1, max_new_tokens=4), model, tokenizer)
    prompts, responses, scores = ["hello there", "abc", "what is up", "zz top"], ["a", "b c", "d", "e f"], [1.0, 0.0, 0.5, 0.2]
    trainer.step(prompts, responses, scores)
    assert all(p.grad is not None for p in trainer.model.parameters() if p.requires_grad)
    held = []
    real = trainer.ppo.make_experience
    trainer.ppo.make_experience = lambda *a: held.append(
        sum(p.grad is not None for p in trainer.model.parameters())) or real(*a)
    trainer.step(prompts, responses, scores)
    assert held == [0]
    assert all(p.grad is not None for p in trainer.model.parameters() if p.requires_grad)
    history = trainer.train(prompts, reward_fn=lambda p, c: [0.0] * len(c), max_iterations=1, progress=False)
    assert history[0]["memory/rollout/rss_gib"] > 0 and history[0]["memory/update/rss_gib"] > 0
