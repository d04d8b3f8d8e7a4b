"""report_to: JSONL always; TensorBoard event files readable back; W&B and MLflow get what they should."""

import json
import sys
import types

import pytest

from tether import PPOConfig, PPOTrainer
from tether.config import ConfigError, load_run_config
from tether.tracking import make_sinks

PROMPTS = ["hello there", "abc", "what is up", "zz top"]


def test_tensorboard_events_are_readable_back(tmp_path, model, tokenizer):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = PPOTrainer(PPOConfig(batch_size=4, mini_batch_size=4, ppo_epochs=1, max_new_tokens=4), model, tokenizer,
                         reward_fn=lambda p, c: [float(len(x)) for x in c], report_to=["tensorboard"])
    history = trainer.train(PROMPTS * 2, output_dir=tmp_path, progress=False)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    kl = events.Scalars("objective/kl")
    assert [e.step for e in kl] == [1, 2]
    assert [e.value for e in kl] == pytest.approx([h["objective/kl"] for h in history])
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]  # JSONL always


def test_wandb_and_mlflow_receive_config_and_metrics(tmp_path, monkeypatch):
    calls = []

    class Run:
        def log(self, data, step):
            calls.append(("wandb.log", step, data))

        def finish(self):
            calls.append(("wandb.finish",))

    wandb = types.SimpleNamespace(init=lambda **kw: calls.append(("wandb.init", kw)) or Run())
    mlflow = types.SimpleNamespace(
        set_tracking_uri=lambda uri: calls.append(("mlflow.uri", uri)),
        start_run=lambda run_name: calls.append(("mlflow.start", run_name)),
        log_params=lambda params: calls.append(("mlflow.params", params)),
        log_metrics=lambda metrics, step: calls.append(("mlflow.metrics", step, metrics)),
        end_run=lambda: calls.append(("mlflow.end",)))
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    monkeypatch.setitem(sys.modules, "mlflow", mlflow)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    sinks = make_sinks(tmp_path / "run", ["wandb", "mlflow"], {"train": {"learning_rate": 1e-5}})
    sinks.log(3, {"objective/kl": 0.5, "note": "text is skipped", "bad": float("nan")})
    sinks.close()
    assert ("wandb.log", 3, {"objective/kl": 0.5}) in calls and ("mlflow.metrics", 3, {"objective/kl": 0.5}) in calls
    init = next(c for c in calls if c[0] == "wandb.init")[1]
    assert init["name"] == "run" and init["config"] == {"train": {"learning_rate": 1e-5}}
    assert ("mlflow.params", {"train.learning_rate": "1e-05"}) in calls
    assert next(c for c in calls if c[0] == "mlflow.uri")[1].endswith("/run/mlruns")  # local, no server needed
    assert ("wandb.finish",) in calls and ("mlflow.end",) in calls


def test_unknown_or_missing_sinks_are_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="report_to: unknown sink.*'tensorbord'"):
        load_run_config(None, ["report_to=[tensorbord]"])
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed
    with pytest.raises(ImportError, match=r"pip install 'tether-rlhf\[wandb\]'"):
        make_sinks(tmp_path, ["wandb"])
