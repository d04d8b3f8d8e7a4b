"""Non-finite losses, gradients and rewards: skipped with a count, stopped after too many in a row;
reward-function faults name the function and keep a checkpoint."""

import math

import pytest
import torch

from tether import PPOConfig, PPOTrainer
from tether.rewards import RewardError
from tether.tracking import latest_checkpoint
from tether.train.faults import NumericalError

PROMPTS = ["hello there", "abc", "what is up", "zz top"]


def make_trainer(model, tokenizer, **overrides):
    options = dict(batch_size=4, mini_batch_size=4, ppo_epochs=1, learning_rate=1e-2, max_new_tokens=5,
                   max_bad_steps=2)
    return PPOTrainer(PPOConfig(**{**options, **overrides}), model, tokenizer,
                      reward_fn=lambda p, c: [float(len(x)) for x in c])


@pytest.fixture
def nan_loss_on(monkeypatch):
    """Make the policy loss NaN on the given (1-based) calls."""
    def install(trainer, calls):
        real, count = trainer.ppo.policy_loss, [0]

        def loss(*args, **kwargs):
            count[0] += 1
            value, stats = real(*args, **kwargs)
            return (value * float("nan") if count[0] in calls else value), stats

        monkeypatch.setattr(trainer.ppo, "policy_loss", loss)
    return install


def test_a_nan_loss_skips_the_optimiser_step_and_is_counted(model, tokenizer, nan_loss_on, caplog):
    trainer = make_trainer(model, tokenizer)
    before = [p.detach().clone() for p in trainer.policy.parameters()]
    nan_loss_on(trainer, {1})
    responses = trainer.generate(PROMPTS)
    stats = trainer.step(PROMPTS, responses, [1.0, 2.0, 3.0, 4.0])
    assert stats["faults/skipped_steps"] == 1.0 and "loss/policy" not in stats
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.policy.parameters()))  # nothing applied
    assert "non-finite loss" in caplog.text and "step skipped" in caplog.text
    stats = trainer.step(PROMPTS, trainer.generate(PROMPTS), [1.0, 2.0, 3.0, 4.0])  # next step is fine
    assert stats["faults/skipped_steps"] == 0.0 and math.isfinite(stats["loss/policy"])
    assert trainer.faults.skipped == 1 and trainer.faults.streak == 0
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.policy.parameters()))


def test_too_many_bad_steps_in_a_row_stop_with_a_checkpoint_of_finite_weights(model, tokenizer, nan_loss_on,
                                                                               tmp_path):
    trainer = make_trainer(model, tokenizer)
    nan_loss_on(trainer, {2, 3, 4})  # iteration 1 fine, then three bad steps > max_bad_steps=2
    with pytest.raises(NumericalError, match="3 bad steps in a row") as info:
        trainer.train(PROMPTS * 5, output_dir=tmp_path, progress=False)
    assert "checkpoint of the last complete iteration" in str(info.value)
    checkpoint = latest_checkpoint(tmp_path / "checkpoints")
    assert checkpoint is not None and checkpoint.name == "step-000003"  # iterations 2, 3 ran, all skipped
    from safetensors.torch import load_file
    weights = load_file(checkpoint / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_non_finite_rewards_skip_the_iteration_then_stop(model, tokenizer, caplog):
    calls = []

    def flaky(prompts, completions):
        calls.append(1)
        return [float("nan") if len(calls) == 2 else 1.0] + [1.0] * (len(completions) - 1)

    trainer = make_trainer(model, tokenizer)
    history = trainer.train(PROMPTS * 3, reward_fn=flaky, progress=False)
    assert len(calls) == 3 and len(history) == 2 and trainer.iteration == 2
    assert "non-finite scores at rows [0]" in caplog.text and "step skipped" in caplog.text

    trainer = make_trainer(model, tokenizer, max_bad_steps=0)
    with pytest.raises(NumericalError, match="inf"):
        trainer.train(PROMPTS * 3, reward_fn=lambda p, c: [float("inf")] * len(c), progress=False)


def test_a_reward_function_that_raises_is_named_and_nothing_is_lost(model, tokenizer, tmp_path):
    calls = []

    def broken_reward(prompts, completions):
        calls.append(1)
        if len(calls) == 2:
            raise KeyError("label")
        return [1.0] * len(completions)

    trainer = make_trainer(model, tokenizer)
    with pytest.raises(RewardError, match="broken_reward raised KeyError") as info:
        trainer.train(PROMPTS * 3, reward_fn=broken_reward, output_dir=tmp_path, progress=False)
    assert "step-000001" in str(info.value)
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step-000001"
    # fix the reward and continue from where it broke
    rest = make_trainer(model, tokenizer).train(PROMPTS * 3, reward_fn=lambda p, c: [1.0] * len(c),
                                                output_dir=tmp_path, resume="latest", progress=False)
    assert len(rest) == 2


def test_a_reward_function_with_the_wrong_count_is_refused(model, tokenizer):
    trainer = make_trainer(model, tokenizer)
    with pytest.raises(RewardError, match="returned 3 scores for 4 responses"):
        trainer.train(PROMPTS, reward_fn=lambda p, c: [1.0, 2.0, 3.0], progress=False)
