"""`tether ppo` end to end on a tiny model saved to disk; help texts; error exits."""

import json
import subprocess
import sys

import pytest
import torch

from tether.cli import main


@pytest.fixture
def tiny_dir(tmp_path, model, tokenizer):
    path = tmp_path / "tiny"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_ppo_command_trains_and_saves_a_loadable_checkpoint(tmp_path, tiny_dir, capsys):
    from transformers import AutoModelForCausalLM

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": f"question {i}"}) for i in range(8)))
    config = tmp_path / "run.yaml"
    config.write_text(f"""
model:
  name_or_path: {tiny_dir}
data:
  path: {prompts}
reward:
  rule: length
  rule_args: {{target_words: 1}}
train:
  batch_size: 4
  mini_batch_size: 2
  ppo_epochs: 1
  value_model: separate
  max_new_tokens: 4
""")
    out = tmp_path / "run"
    assert main(["ppo", "--config", str(config), "--out", str(out), "train.learning_rate=1e-3"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["iterations"] == 2
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and "objective/kl" in rows[0]
    assert "learning_rate: 0.001" in (out / "config.yaml").read_text()
    trained = AutoModelForCausalLM.from_pretrained(out / "final")
    assert any(not torch.equal(a, b) for a, b in zip(trained.parameters(),
                                                     AutoModelForCausalLM.from_pretrained(tiny_dir).parameters()))
    assert (out / "final" / "critic" / "value_head.safetensors").exists()


def test_config_errors_exit_2_with_the_option_named(tmp_path, capsys):
    assert main(["ppo", "train.learnig_rate=1"]) == 2
    assert "did you mean 'train.learning_rate'" in capsys.readouterr().err


def test_config_show_prints_docs(capsys):
    assert main(["config", "show"]) == 0
    text = capsys.readouterr().out
    assert "train.kl_coef = 0.05" in text and "β of the KL penalty" in text


@pytest.mark.parametrize("args", [["--help"], ["ppo", "--help"], ["demo", "--help"]])
def test_help_via_python_m(args):
    result = subprocess.run([sys.executable, "-m", "tether", *args], capture_output=True, text=True)
    assert result.returncode == 0 and "usage: tether" in result.stdout


def test_ppo_command_with_a_reward_model_that_has_its_own_tokenizer(tmp_path, tiny_dir, capsys):
    from tiny import tiny_reward_model, tiny_tokenizer

    rm_tokenizer = tiny_tokenizer(chat_template=False)
    rm_tokenizer.add_tokens(["<only-in-the-reward-model>"])  # a vocabulary the policy does not have
    rm = tiny_reward_model(rm_tokenizer)
    rm.save_pretrained(tmp_path / "rm")
    rm_tokenizer.save_pretrained(tmp_path / "rm")
    (tmp_path / "rm" / "tether_reward_normalization.json").write_text('{"shift": 100.0, "scale": 1.0}')
    prompts = tmp_path / "chat.jsonl"
    prompts.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"}]}) for i in range(4)))
    out = tmp_path / "run"
    assert main(["ppo", "--out", str(out), f"model.name_or_path={tiny_dir}", f"data.path={prompts}",
                 f"reward.model={tmp_path / 'rm'}", "train.batch_size=4", "train.max_new_tokens=3",
                 "train.ppo_epochs=1"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["env/reward_mean"] < -90  # the stored shift was applied


def test_rm_command_trains_normalises_and_saves(tmp_path, tokenizer, capsys):
    from tests.train.test_reward_trainer import pairs
    from tether.rewards.model import RewardModelScorer
    from tiny import tiny_reward_model

    backbone = tmp_path / "backbone"
    tiny_reward_model(tokenizer).save_pretrained(backbone)
    tokenizer.save_pretrained(backbone)
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in pairs(40, 0)) + "\n")
    config = tmp_path / "rm.yaml"
    config.write_text(f"model: {backbone}\ndata:\n  path: {data}\n  eval_fraction: 0.25\n"
                      "train:\n  learning_rate: 3.0e-3\n  batch_size: 8\n  epochs: 3\n  max_length: 64\n")
    assert main(["rm", "--config", str(config), "--out", str(tmp_path / "run"), "train.warmup_ratio=0.0"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["train_pairs"] == 30 and summary["eval_pairs"] == 10
    assert summary["eval/accuracy"] >= 0.9
    scorer = RewardModelScorer.from_pretrained(summary["checkpoint"])
    assert (scorer.shift, scorer.scale) == (summary["shift"], summary["scale"])
    assert (tmp_path / "run" / "config.yaml").exists() and (tmp_path / "run" / "metrics.jsonl").exists()


def test_rm_command_without_data_is_a_config_error(tmp_path, capsys):
    assert main(["rm", "--out", str(tmp_path / "run")]) == 2
    assert "data.path" in capsys.readouterr().err


def test_config_show_rm_lists_reward_options(capsys):
    assert main(["config", "show", "--rm"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("# A whole `tether rm` run.")
    assert "train.use_margin = true" in text and "data.eval_fraction = 0.1" in text


def test_resume_without_a_checkpoint_exits_2_naming_the_directory(tmp_path, tiny_dir, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {{name_or_path: {tiny_dir}}}\nreward: {{rule: length}}\n"
                      "train: {batch_size: 4, max_new_tokens: 4}\n")
    assert main(["ppo", "--config", str(config), "--out", str(tmp_path / "run"), "--resume"]) == 2
    assert f"no checkpoint under {tmp_path / 'run' / 'checkpoints'}" in capsys.readouterr().err
