"""`tether ppo` killed with SIGKILL mid-run and resumed with --resume logs the same metrics as a run
that was never interrupted (bit-exact on CPU)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tiny import run_metrics, tiny_run_config


@pytest.fixture
def run_config(tmp_path):
    return tiny_run_config(tmp_path, prompts=48, epochs=3,
                           train="batch_size: 4, mini_batch_size: 2, ppo_epochs: 1, max_new_tokens: 6, "
                                 "temperature: 1.0, learning_rate: 0.01, lr_scheduler: cosine, adaptive_kl: true, "
                                 "kl_target: 0.5")


def tether(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "2", "CI": "1"}
    return [sys.executable, "-m", "tether", *args], env


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path, run_config):
    cmd, env = tether("ppo", "--config", str(run_config), "--out", str(tmp_path / "full"))
    subprocess.run(cmd, env=env, check=True, capture_output=True)

    run = tmp_path / "killed"
    cmd, env = tether("ppo", "--config", str(run_config), "--out", str(run))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (run / "checkpoints" / "step-000004").exists():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (run / "final").exists()
    killed_at = len(run_metrics(run))

    cmd, env = tether("ppo", "--config", str(run_config), "--out", str(run), "--resume")
    done = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    assert json.loads(done.stdout)["iterations"] == 36
    assert 4 <= killed_at < 36
    assert run_metrics(run) == run_metrics(tmp_path / "full")
    assert len(list((run / "checkpoints").iterdir())) == 2  # keep_checkpoints
