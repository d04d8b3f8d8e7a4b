"""One loop, one flag: GRPO, RLOO and REINFORCE++ beside PPO on a tiny model."""

import math

import pytest
import torch

from tether import PPOConfig, PPOTrainer
from tether.config import ConfigError
from tests.train.test_learning import PROMPTS

CRITIC_FREE = ["grpo", "rloo", "reinforce_pp"]


def reward_for_early_letters(prompts, completions):
    """Fraction of characters among a–j: a denser signal than one letter, so that every estimator
    sees groups with different rewards from the first iterations."""
    return [sum(ch in "abcdefghij" for ch in c) / max(1, len(c)) for c in completions]


def config(algorithm, **overrides):
    base = dict(algorithm=algorithm, num_generations=1 if algorithm in ("ppo", "reinforce_pp") else 4,
                batch_size=8, mini_batch_size=4, gradient_accumulation_steps=1, ppo_epochs=4,
                learning_rate=3e-3, max_new_tokens=8, temperature=1.0, kl_coef=0.01, seed=0)
    base.update(overrides)
    return PPOConfig(**base)


@pytest.mark.parametrize("algorithm", CRITIC_FREE)
def test_reward_rises_without_a_critic(model, tokenizer, algorithm):
    trainer = PPOTrainer(config(algorithm), model, tokenizer, reward_fn=reward_for_early_letters)
    assert trainer.critic is None and trainer.value_head is None
    policy_params = {id(p) for p in trainer.policy.parameters()}
    assert all(id(p) in policy_params for g in trainer.optimizer.param_groups for p in g["params"])
    history = trainer.train(PROMPTS * 30, max_iterations=30, progress=False)
    first = sum(h["env/reward_mean"] for h in history[:5]) / 5
    last = sum(h["env/reward_mean"] for h in history[-5:]) / 5
    assert last > first + 0.1, (algorithm, first, last)  # rewards start near 0.04
    assert all(math.isfinite(h["objective/kl"]) for h in history)
    assert "val/error" not in history[-1] and "loss/value" not in history[-1]


def test_train_samples_each_prompt_num_generations_times(model, tokenizer):
    seen = []

    def reward(prompts, completions):
        seen.append(list(prompts))
        return [0.0] * len(prompts)

    trainer = PPOTrainer(config("grpo"), model, tokenizer, reward_fn=reward)
    trainer.train(PROMPTS, max_iterations=1, progress=False)
    [batch] = seen
    assert len(batch) == 8 and batch[0:4] == [batch[0]] * 4 and batch[4:8] == [batch[4]] * 4
    assert batch[0] != batch[4]


def test_equal_rewards_in_every_group_leave_the_policy_unchanged_with_grpo(model, tokenizer):
    trainer = PPOTrainer(config("grpo", kl_coef=0.0), model, tokenizer, reward_fn=lambda p, c: [1.0] * len(c))
    before = [p.detach().clone() for p in trainer.policy.parameters()]
    stats = trainer.train(PROMPTS, max_iterations=1, progress=False)[0]
    assert stats["policy/grad_norm"] == 0.0
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.policy.parameters()))


def test_step_api_takes_several_responses_per_prompt(model, tokenizer):
    trainer = PPOTrainer(config("rloo", batch_size=4, num_generations=2, mini_batch_size=2), model, tokenizer)
    prompts = ["hello", "there"]
    flat = trainer.generate([p for p in prompts for _ in range(2)])
    nested = [flat[0:2], flat[2:4]]
    stats = trainer.step(prompts, nested, [1.0, 0.0, 0.5, 0.2])
    assert math.isfinite(stats["loss/policy"])
    stats = trainer.step([p for p in prompts for _ in range(2)], flat, [1.0, 0.0, 0.5, 0.2])
    assert math.isfinite(stats["loss/policy"])
    with pytest.raises(ValueError, match="rows 0..1 should be 2 responses to one prompt"):
        trainer.step(["hello", "there", "hello", "there"], flat, [1.0, 0.0, 0.5, 0.2])


def test_grpo_puts_the_kl_in_the_loss_not_the_reward(model, tokenizer):
    trainer = PPOTrainer(config("grpo", kl_coef=0.5), model, tokenizer, reward_fn=reward_for_early_letters)
    history = trainer.train(PROMPTS * 8, max_iterations=8, progress=False)
    assert any(h["objective/kl"] > 0 for h in history)  # the policy moved away from the reference
    for h in history:  # no KL in the reward: the RLHF reward is exactly the score
        assert h["objective/rlhf_reward"] == pytest.approx(h["objective/scores"], abs=1e-6)
    moved = [h for h in history if h["objective/kl"] > 0]
    assert any(h["loss/total"] != pytest.approx(h["loss/policy"], abs=1e-7) for h in moved)  # β·KL in the loss


@pytest.mark.parametrize("bad, message", [
    (dict(algorithm="grpo", num_generations=1), "num_generations >= 2"),
    (dict(algorithm="ppo", num_generations=3, batch_size=8), "multiple of num_generations"),
    (dict(algorithm="dpo"), "algorithm: 'dpo' is not one of"),
])
def test_bad_algorithm_settings_are_config_errors(bad, message):
    with pytest.raises(ConfigError, match=message):
        PPOConfig(**bad)


def test_critic_is_refused_for_a_critic_free_algorithm(model, tokenizer):
    from tether.models.critic import ValueModel

    with pytest.raises(ValueError, match="uses no critic"):
        PPOTrainer(config("rloo"), model, tokenizer, critic=ValueModel.from_causal_lm(model))
