"""Score shaping, entropy bonus, KL-as-loss, critic from the reward model, LR schedules."""

import pytest
import torch

from tether import PPOConfig, PPOTrainer
from tether.algo import kl_penalty, masked_mean
from tether.train.optim import make_scheduler

from .test_invariants import fixed_rollout


def test_score_whitening_and_clipping(model, tokenizer):
    trainer = PPOTrainer(PPOConfig(batch_size=8, kl_coef=0.0, whiten_scores=True, score_clip=1.0),
                         model, tokenizer)
    scores = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 100.0])
    _, stats = trainer.make_experience(fixed_rollout(tokenizer), scores)
    # whitened: the outlier is (100 − 12.5)/σ ≈ 2.47 -> clipped to 1; the rest ≈ −0.35
    assert stats["objective/scores"] == pytest.approx(12.5)
    sigma = scores.std().item()
    expected = [-12.5 / sigma] * 7 + [1.0]
    assert stats["objective/rlhf_reward"] == pytest.approx(sum(expected) / 8, rel=1e-4)


def _loss_parts(trainer, rollout):
    experience, stats = trainer.make_experience(rollout, torch.arange(8.0))
    trainer.optimizer.zero_grad()
    sums = trainer.accumulate_gradients(experience, torch.arange(8))
    extra = sums["loss_total"] - sums["loss_policy"] - trainer.config.vf_coef * sums["loss_value"]
    return experience, stats, extra


def test_entropy_bonus_enters_the_loss(model, tokenizer):
    trainer = PPOTrainer(PPOConfig(batch_size=8, mini_batch_size=8, entropy_coef=0.3, learning_rate=0.0),
                         model, tokenizer)
    _, stats, extra = _loss_parts(trainer, fixed_rollout(tokenizer))
    assert extra == pytest.approx(-0.3 * stats["objective/entropy"], rel=1e-4)


def test_kl_loss_term_uses_its_estimator(model, tokenizer):
    from tiny import tiny_llama

    reference = tiny_llama(tokenizer, seed=7)
    trainer = PPOTrainer(PPOConfig(batch_size=8, mini_batch_size=8, kl_loss_coef=2.0, kl_loss_estimator="k3",
                                   learning_rate=0.0), model, tokenizer, ref_model=reference)
    experience, _, extra = _loss_parts(trainer, fixed_rollout(tokenizer))
    k3 = kl_penalty(experience.logprobs, experience.ref_logprobs, "k3")
    assert extra == pytest.approx(2.0 * masked_mean(k3, experience.response_mask).item(), rel=1e-4)
    assert extra > 0


def test_critic_initialised_from_reward_model(model, tokenizer):
    from tiny import tiny_reward_model, tiny_tokenizer

    rm = tiny_reward_model(tokenizer, hidden=32)
    trainer = PPOTrainer(PPOConfig(batch_size=8, value_model="separate", critic_init="reward_model"), model, tokenizer,
                         reward_model=rm, reward_tokenizer=tokenizer)
    torch.testing.assert_close(trainer.critic.head.summary.weight, rm.score.weight)
    ids = torch.tensor([[5, 6, 7]])
    values = trainer.critic(ids, torch.ones_like(ids), torch.arange(3)[None])
    torch.testing.assert_close(values[0, -1], rm(input_ids=ids).logits[0, 0], rtol=1e-5, atol=1e-5)
    # a normalised reward model (score = (logit - shift) / scale): the critic starts on the score's scale
    from tether.rewards import RewardModelScorer

    scorer = RewardModelScorer(rm, tokenizer, shift=2.0, scale=4.0)
    trainer = PPOTrainer(PPOConfig(batch_size=8, value_model="separate", critic_init="reward_model"), model, tokenizer, reward_model=scorer)
    values = trainer.critic(ids, torch.ones_like(ids), torch.arange(3)[None])
    torch.testing.assert_close(values[0, -1], (rm(input_ids=ids).logits[0, 0] - 2.0) / 4.0, rtol=1e-5, atol=1e-5)
    other = tiny_tokenizer(chat_template=False)
    other.add_tokens(["<extra>"])
    with pytest.raises(ValueError, match="needs a reward model with the policy's tokenizer"):
        PPOTrainer(PPOConfig(batch_size=8, value_model="separate", critic_init="reward_model"), model, tokenizer,
                   reward_model=tiny_reward_model(other), reward_tokenizer=other)


def test_linear_schedule_with_warmup_reaches_zero():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    sched = make_scheduler(opt, "linear", warmup_steps=2, total_steps=6)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.5, 1.0, 1.0, 0.75, 0.5, 0.25])
    with pytest.raises(ValueError, match="needs total_steps"):
        make_scheduler(opt, "cosine", 0, None)
