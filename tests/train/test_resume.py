"""Checkpoints that resume bit-exactly; atomic writes; pruning; stop signals; the data guard."""

import json
import os
import signal

import pytest
import torch

from tether import LoraSettings, PPOConfig, PPOTrainer
from tether.data import DataError
from tether.models import apply_lora
from tether.tracking import latest_checkpoint, list_checkpoints
from tether.train import persistence
from tether.train.faults import NumericalError
from tether.train.signals import TrainingInterrupted
from tiny import tiny_llama, tiny_tokenizer

PROMPTS = [f"prompt number {i}" for i in range(12)]  # batch 4: three iterations per epoch


def reward(prompts, completions):
    return [sum(ch in "aeiou" for ch in c) / (1 + len(c)) for c in completions]


VARIANTS = {
    "separate-critic": dict(value_model="separate"),
    "value-head+adaptive-kl+linear-lr": dict(value_model="head", adaptive_kl=True, kl_target=0.5,
                                             lr_scheduler="linear", warmup_steps=2),
    "lora": dict(value_model="separate"),
    "grpo": dict(algorithm="grpo", num_generations=2, batch_size=8),
    # dynamic sampling draws a varying number of batches per iteration: the data position must follow
    "dapo-dynamic-sampling": dict(algorithm="dapo", num_generations=2, batch_size=8, max_sampling_rounds=3),
}


def make_trainer(variant: str) -> PPOTrainer:
    tokenizer = tiny_tokenizer()
    model = tiny_llama(tokenizer)
    if variant == "lora":
        model = apply_lora(model, LoraSettings(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    options = dict(batch_size=4, mini_batch_size=2, ppo_epochs=2, learning_rate=1e-2, max_new_tokens=6,
                   temperature=1.0, total_steps=6, seed=3)
    config = PPOConfig(**{**options, **VARIANTS[variant]})
    return PPOTrainer(config, model, tokenizer, reward_fn=reward)


def without_times(rows):
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "memory/"))} for r in rows]  # measurements, not results


def read_metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("stop_at", [2, 3])  # mid-epoch, and at an epoch boundary
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_resumed_run_matches_an_uninterrupted_one_bit_for_bit(tmp_path, variant, stop_at):
    full = make_trainer(variant).train(PROMPTS, epochs=2, output_dir=tmp_path / "full", progress=False)
    assert len(full) == 6
    if variant == "dapo-dynamic-sampling":  # some iterations drew more than one batch
        assert sum(h["dynamic_sampling/rounds"] for h in full) > len(full)

    run = tmp_path / "run"
    make_trainer(variant).train(PROMPTS, epochs=2, max_iterations=stop_at, output_dir=run, save_every=1,
                                progress=False)
    assert latest_checkpoint(run / "checkpoints").name == f"step-{stop_at:06d}"
    resumed_trainer = make_trainer(variant)
    resumed = resumed_trainer.train(PROMPTS, epochs=2, output_dir=run, resume="latest", progress=False)

    assert without_times(resumed) == without_times(full[stop_at:])  # exact equality of every float
    assert without_times(read_metrics(run)) == without_times(read_metrics(tmp_path / "full"))
    assert resumed_trainer.iteration == 6


def test_log_rows_after_the_checkpoint_are_removed_on_resume(tmp_path):
    run = tmp_path / "run"
    make_trainer("separate-critic").train(PROMPTS, max_iterations=3, output_dir=run, save_every=2, progress=False)
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3]  # a kill after step 3 was logged
    with (run / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 4, "objective/kl": 0.1')  # a line cut short by the kill
    make_trainer("separate-critic").train(PROMPTS, max_iterations=3, output_dir=run, resume="latest", progress=False)
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3]
    samples = [json.loads(line)["iteration"] for line in (run / "samples.jsonl").read_text().splitlines()]
    assert sorted(set(samples)) == [1, 2, 3] and samples == sorted(samples)


def test_a_crash_while_writing_leaves_the_previous_checkpoint_as_latest(tmp_path, monkeypatch):
    run = tmp_path / "run"
    trainer = make_trainer("separate-critic")
    trainer.train(PROMPTS, max_iterations=2, output_dir=run, save_every=2, progress=False)
    real = persistence.write_training_state

    def crash(trainer, tmp, rng, position):
        real(trainer, tmp, rng, position)  # everything written ...
        raise OSError("disk full")  # ... but the write did not finish

    monkeypatch.setattr("tether.train.persistence.write_training_state", crash)
    with pytest.raises(OSError, match="disk full"):
        trainer.save_checkpoint(run / "checkpoints" / "step-000003")
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step-000002"]
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-000002"]  # no half-written leftovers
    # the leftover of a kill -9 mid-write is a hidden temporary directory, never taken for a checkpoint
    (run / "checkpoints" / ".step-000004.tmp-x1").mkdir()
    assert latest_checkpoint(run / "checkpoints").name == "step-000002"


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    run = tmp_path / "run"
    make_trainer("separate-critic").train(PROMPTS, epochs=2, max_iterations=5, output_dir=run, save_every=1,
                                          keep_checkpoints=2, progress=False)
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step-000004", "step-000005"]


def test_resume_with_other_prompts_is_refused(tmp_path):
    run = tmp_path / "run"
    make_trainer("separate-critic").train(PROMPTS, max_iterations=1, output_dir=run, save_every=1, progress=False)
    with pytest.raises(DataError, match="dataset of 12 prompts"):
        make_trainer("separate-critic").train(PROMPTS[:8], output_dir=run, resume="latest", progress=False)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        make_trainer("separate-critic").train(PROMPTS, output_dir=tmp_path / "empty", resume="latest",
                                              progress=False)


def test_sigterm_finishes_the_iteration_checkpoints_and_resumes_exactly(tmp_path):
    full = make_trainer("separate-critic").train(PROMPTS, output_dir=tmp_path / "full", progress=False)
    calls = []

    def reward_then_sigterm(prompts, completions):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives mid-iteration 2
        return reward(prompts, completions)

    run = tmp_path / "run"
    trainer = make_trainer("separate-critic")
    with pytest.raises(TrainingInterrupted) as info:
        trainer.train(PROMPTS, reward_fn=reward_then_sigterm, output_dir=run, progress=False)
    assert info.value.checkpoint.name == "step-000002" and info.value.exit_code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    resumed = make_trainer("separate-critic").train(PROMPTS, output_dir=run, resume="latest", progress=False)
    assert without_times(resumed) == without_times(full[2:])


def test_a_checkpoint_never_holds_non_finite_weights(tmp_path):
    trainer = make_trainer("separate-critic")
    with torch.no_grad():
        next(trainer.critic.parameters())[0] = float("nan")
    with pytest.raises(NumericalError, match="critic.*not finite"):
        trainer.save_checkpoint(tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()


def test_checkpoints_are_read_without_pickle_code(tmp_path, monkeypatch):
    trainer = make_trainer("separate-critic")
    trainer.train(PROMPTS, max_iterations=1, progress=False)
    path = trainer.save_checkpoint(tmp_path / "ckpt")
    loads = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(k) or real(*a, **k))
    other = make_trainer("separate-critic")
    other.load_checkpoint(path)
    assert loads and all(k.get("weights_only") is True for k in loads)
    assert other.iteration == 1
    for a, b in zip(trainer.policy.parameters(), other.policy.parameters()):
        assert torch.equal(a, b)
    assert str(other.optimizer.state_dict()) == str(trainer.optimizer.state_dict())
