"""The demo pipeline end to end, shrunken: a tiny model, two iterations."""

import json

from tether.demo import demo_config, run_demo


def test_demo_config_is_valid_and_uses_the_packaged_model():
    config = demo_config()
    assert config.model.name_or_path == "smollm2-135m-instruct"
    assert config.train.batch_size % config.train.backward_batch_size == 0


def test_demo_runs_end_to_end_on_a_tiny_model(tmp_path, model, tokenizer):
    model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    out = tmp_path / "demo"
    summary = run_demo(out, [f"model.name_or_path={tmp_path / 'tiny'}", "model.lora.target_modules=[q_proj]",
                             "data.max_iterations=2", "train.batch_size=8", "train.mini_batch_size=4",
                             "train.max_new_tokens=4"])
    assert summary["iterations"] == 2
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "report.md", "final/adapter_config.json"):
        assert (out / name).exists(), name
    assert json.loads((out / "summary.json").read_text()) == summary
    assert "| prompt | base (reward) | trained (reward) |" in (out / "report.md").read_text()
