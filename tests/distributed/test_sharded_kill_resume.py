"""`torchrun ... tether ppo` under `train.sharding=fsdp2`, killed with SIGKILL (every process of the
launch at once) after a checkpoint and resumed with --resume, logs the same metrics as a sharded run that
was never interrupted: bit for bit on CPU, since the same 2 processes redo the same float operations
from the same DCP shards, optimiser moments and per-rank RNG states."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tiny import run_metrics, tiny_run_config

ITERATIONS = 12  # 24 prompts x 2 epochs / (2 per process x 2 processes)


@pytest.fixture
def run_config(tmp_path):
    return tiny_run_config(tmp_path, prompts=24, epochs=2,
                           train="batch_size: 2, mini_batch_size: 1, ppo_epochs: 1, max_new_tokens: 5, "
                                 "temperature: 1.0, learning_rate: 0.01, value_model: separate, sharding: fsdp2, "
                                 "adaptive_kl: true, kl_target: 0.5")


def torchrun(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CI": "1"}
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "tether", *args], env


def test_a_sharded_run_killed_with_sigkill_resumes_bit_exactly(tmp_path, run_config):
    cmd, env = torchrun("ppo", "--config", str(run_config), "--out", str(tmp_path / "full"))
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "full" / "checkpoints").exists()

    run = tmp_path / "killed"
    cmd, env = torchrun("ppo", "--config", str(run_config), "--out", str(run))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # its own process group: the launcher and both workers
    deadline = time.time() + 240
    while not (run / "checkpoints" / "step-000004").exists():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "final").exists()
    killed_at = len(run_metrics(run))
    assert 4 <= killed_at < ITERATIONS
    assert (run / "checkpoints" / "step-000004" / "sharded").is_dir()

    cmd, env = torchrun("ppo", "--config", str(run_config), "--out", str(run), "--resume")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["iterations"] == ITERATIONS
    assert run_metrics(run) == run_metrics(tmp_path / "full")
    assert (run / "final" / "model.safetensors").exists()
