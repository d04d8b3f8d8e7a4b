"""Every script in examples/ runs in a shrunken form (tiny models, one or two iterations) so none rots."""

import subprocess
import sys
from pathlib import Path

import pytest

from tiny import tiny_reward_model

ROOT = Path(__file__).parents[1]


@pytest.fixture
def tiny_dir(tmp_path, model, tokenizer):
    model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    return tmp_path / "tiny"


def run(script: str, *args: str) -> str:
    result = subprocess.run([sys.executable, str(ROOT / "examples" / script), *args],
                            capture_output=True, text=True, timeout=300, env={**__import__("os").environ, "CI": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_every_example_has_a_test():
    tested = {"step_api.py", "custom_reward.py", "reward_model.py", "lora_run.py"}
    assert {p.name for p in (ROOT / "examples").glob("*.py")} == tested


def test_step_api_example_runs(tiny_dir):
    out = run("step_api.py", "--model", str(tiny_dir), "--iterations", "1", "--batch-size", "4", "--max-new-tokens", "4",
              "--heldout", "3", "--reward", "brevity")
    assert "iteration 1: reward" in out and "held-out (3 prompts x 2 samples): before " in out


def test_custom_reward_example_runs(tiny_dir, tmp_path):
    out = run("custom_reward.py", "--model", str(tiny_dir), "--iterations", "2", "--batch-size", "4",
              "--max-new-tokens", "4", "--out", str(tmp_path / "run"))
    assert "over 2 iterations" in out and (tmp_path / "run" / "final").exists()


def test_custom_reward_function_scores_as_documented():
    sys.path.insert(0, str(ROOT / "examples"))
    from custom_reward import concise_and_on_topic

    ten_words = "Cats sleep a lot because hunting takes energy, you see."
    assert concise_and_on_topic(["Why do cats sleep so much?"], [ten_words]) == [1.5]
    assert concise_and_on_topic(["Why do cats sleep?"], ["No."]) == [pytest.approx(0.3)]


def test_reward_model_example_runs(tmp_path, tokenizer):
    backbone = tmp_path / "rm"
    tiny_reward_model(tokenizer).save_pretrained(backbone)
    tokenizer.save_pretrained(backbone)
    out = run("reward_model.py", "--backbone", str(backbone), "--epochs", "1", "--out", str(tmp_path / "rm-run"))
    assert "held-out pair accuracy" in out and "polite answer" in out


def test_lora_example_runs(tiny_dir, tmp_path):
    out = run("lora_run.py", "--model", str(tiny_dir), "--iterations", "1", "--batch-size", "4",
              "--max-new-tokens", "4", "--eval-prompts", "4", "--out", str(tmp_path / "lora"))
    assert "win rate" in out and (tmp_path / "lora" / "merged" / "model.safetensors").exists()
    assert (tmp_path / "lora" / "eval" / "eval.md").exists()
