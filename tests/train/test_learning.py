"""End to end on a tiny random model: reward rises, KL stays finite."""

import math

from tether import PPOConfig, PPOTrainer

PROMPTS = ["tell me", "say it", "go on", "again", "more", "write", "now", "please"]


def reward_for_letter_a(prompts, completions):
    """Fraction of characters that are 'a': pays for one chosen token."""
    return [c.count("a") / max(1, len(c)) for c in completions]


def test_reward_rises_on_tiny_model(model, tokenizer):
    config = PPOConfig(batch_size=8, mini_batch_size=4, gradient_accumulation_steps=1, ppo_epochs=4,
                       learning_rate=3e-3, max_new_tokens=8,
                       temperature=1.0, kl_coef=0.01, seed=0)
    trainer = PPOTrainer(config, model, tokenizer, reward_fn=reward_for_letter_a)
    # 60 iterations: the rise is sharp but comes late (after 25-55 iterations, depending on the seed
    # and on float rounding); every seed 0-3 ends at 0.66-1.0 from <= 0.02
    history = trainer.train(PROMPTS * 60, epochs=1, max_iterations=60, progress=False)
    first = sum(h["env/reward_mean"] for h in history[:5]) / 5
    last = sum(h["env/reward_mean"] for h in history[-5:]) / 5
    assert last > first + 0.2, (first, last)
    assert all(math.isfinite(h["objective/kl"]) for h in history)
    assert history[-1]["objective/kl"] > 0
