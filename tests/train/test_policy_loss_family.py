"""DAPO, Dr. GRPO, REINFORCE++-baseline, GSPO, CISPO and the KL-loss variants from the one loop, each
with one option: the loss the learner builds, dynamic sampling, overlong shaping and filtering."""

import logging
import math

import pytest
import torch

from tether import PPOConfig, PPOTrainer
from tether.config import ConfigError
from tether.rollout import Rollout
from tests.train.test_algorithms import reward_for_early_letters
from tests.train.test_learning import PROMPTS


def config(**overrides):
    base = dict(num_generations=4, batch_size=8, mini_batch_size=4, gradient_accumulation_steps=1, ppo_epochs=4,
                learning_rate=3e-3, max_new_tokens=8, temperature=1.0, kl_coef=0.01, seed=0)
    base.update(overrides)
    return PPOConfig(**base)


@pytest.mark.parametrize("options", [
    dict(algorithm="dapo"),
    dict(algorithm="dr_grpo", learning_rate=3e-2),  # no std scaling: advantages of rewards in [0, 0.3] are small
    dict(algorithm="reinforce_pp_baseline"),
    dict(algorithm="grpo", policy_loss="gspo"),
    dict(algorithm="grpo", policy_loss="cispo"),
    dict(algorithm="reinforce_pp", num_generations=1, policy_loss="gspo_token"),
    dict(algorithm="grpo", kl_loss_estimator="k3+"),
], ids=lambda o: "-".join(str(v) for v in o.values()))
def test_reward_rises_with_each_variant(model, tokenizer, options):
    trainer = PPOTrainer(config(**options), model, tokenizer, reward_fn=reward_for_early_letters)
    history = trainer.train(PROMPTS * 30, max_iterations=30, progress=False)
    first = sum(h["env/reward_mean"] for h in history[:5]) / 5
    last = sum(h["env/reward_mean"] for h in history[-5:]) / 5
    assert last > first + 0.1, (options, first, last)
    assert all(math.isfinite(h["loss/total"]) for h in history if "loss/total" in h)


def _first_update_loss(trainer, prompts, scores):
    """loss/policy of a step whose one optimiser step sees ratios of exactly 1 (ppo_epochs 1, one minibatch)."""
    stats = trainer.step(prompts, trainer.generate(prompts), scores)
    exp = trainer.ppo.last_experience
    return stats["loss/policy"], exp.advantages.double(), exp.response_mask


@pytest.mark.parametrize("algorithm, policy_loss, normaliser", [
    ("dapo", "ppo", lambda mask: mask.sum()),                                   # token-mean: Σ tokens
    ("dr_grpo", "ppo", lambda mask: mask.shape[0] * 8),                         # B × max_new_tokens
    ("grpo", "gspo", None),                                                     # seq-mean-token-mean
])
def test_the_learner_normalises_the_loss_as_each_algorithm_says(model, tokenizer, algorithm, policy_loss, normaliser):
    trainer = PPOTrainer(config(algorithm=algorithm, policy_loss=policy_loss, ppo_epochs=1, mini_batch_size=8,
                                kl_coef=0.0, dynamic_sampling=False), model, tokenizer)
    prompts = [p for p in PROMPTS[:2] for _ in range(4)]
    loss, adv, mask = _first_update_loss(trainer, prompts, [0.0, 1.0, 3.0, 2.0, 5.0, 1.0, 0.0, 2.0])
    adv = torch.where(mask, adv, 0.0)
    if normaliser is None:  # ratio 1: L_i = −A_i, mean over responses
        expected = -(adv.sum(1) / mask.sum(1)).mean().item()
    else:  # ratio 1: Σ −A_t / normaliser
        expected = -adv.sum().item() / float(normaliser(mask))
    assert loss == pytest.approx(expected, abs=1e-6)
    assert adv.abs().sum() > 0


def test_rows_left_out_of_the_loss_do_not_count_as_responses(model, tokenizer):
    # seq-mean-token-mean divides by the responses *in the loss*: the truncated one (row 0) is not one
    trainer = PPOTrainer(config(algorithm="grpo", policy_loss="gspo", ppo_epochs=1, mini_batch_size=4, batch_size=4,
                                kl_coef=0.0, overlong_filter=True), model, tokenizer)
    stats = trainer.ppo.learn(_rollout([8, 3, 2, 5], [False, True, True, True]), torch.tensor([1.0, 2.0, 3.0, 5.0]))
    adv = trainer.ppo.last_experience.advantages[:, 0].double()  # one advantage per response
    # ratio 1 in the one optimiser step: L_i = −A_i, averaged over the 3 responses in the loss
    assert stats["loss/policy"] == pytest.approx(-adv[1:].sum().item() / 3, abs=1e-6)
    assert adv[1:].sum().abs() > 0.1


def test_effective_defaults_of_the_named_recipes():
    dapo = PPOConfig(algorithm="dapo", num_generations=2, batch_size=4)
    assert (dapo.effective_cliprange_high, dapo.effective_loss_aggregation, dapo.filters_groups) == (0.28, "token-mean", True)
    dr = PPOConfig(algorithm="dr_grpo", num_generations=2, batch_size=4)
    assert (dr.effective_cliprange_high, dr.effective_loss_aggregation, dr.filters_groups) == (0.2, "seq-mean-token-sum-norm", False)
    gspo = PPOConfig(algorithm="grpo", policy_loss="gspo", num_generations=2, batch_size=4)
    assert gspo.effective_loss_aggregation == "seq-mean-token-mean"
    explicit = PPOConfig(algorithm="dapo", num_generations=2, batch_size=4, cliprange_high=0.3,
                         loss_aggregation="seq-mean-token-mean", dynamic_sampling=False)
    assert (explicit.effective_cliprange_high, explicit.effective_loss_aggregation, explicit.filters_groups) == (
        0.3, "seq-mean-token-mean", False)
    assert PPOConfig().effective_loss_aggregation == "token-mean"


@pytest.mark.parametrize("bad, message", [
    (dict(algorithm="ppo", policy_loss="gspo"), "use policy_loss=gspo_token"),
    (dict(algorithm="grpo", num_generations=2, policy_loss="cispo", dual_clip=3.0), "set dual_clip to null"),
    (dict(algorithm="grpo", num_generations=2, dynamic_sampling=True, max_sampling_rounds=0), "max_sampling_rounds"),
    (dict(dynamic_sampling=True), "dynamic_sampling keeps the groups"),
    (dict(algorithm="dapo"), "num_generations >= 2"),
    (dict(sequence_cliprange=[3e-4]), "sequence_cliprange"),
    (dict(overlong_buffer=100, max_new_tokens=64), "overlong_buffer"),
    (dict(kl_estimator="k3+"), "kl_estimator: 'k3\\+' is not one of"),
    (dict(policy_loss="sapo"), "policy_loss: 'sapo' is not one of"),
    (dict(cliprange_high=0.0), "cliprange_high"),
])
def test_bad_combinations_are_config_errors_naming_the_option(bad, message):
    with pytest.raises(ConfigError, match=message):
        PPOConfig(**bad)


def test_k3_plus_is_a_loss_estimator():
    assert PPOConfig(kl_loss_estimator="k3+", kl_loss_coef=0.1).kl_loss_estimator == "k3+"


def _rollout(lengths, ended, T=8):
    B = len(lengths)
    response_mask = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]
    return Rollout(prompt_ids=torch.full((B, 2), 5), prompt_mask=torch.ones(B, 2, dtype=torch.bool),
                   response_ids=torch.full((B, T), 6), response_mask=response_mask,
                   ended=torch.tensor(ended), temperature=1.0)


def test_soft_overlong_punishment_and_overlong_filter_shape_the_experience(model, tokenizer):
    cfg = config(algorithm="grpo", overlong_buffer=4, overlong_penalty=1.0, overlong_filter=True)
    trainer = PPOTrainer(cfg, model, tokenizer)
    rollout = _rollout([8, 7, 3, 2], [False, True, True, True])
    experience, stats = trainer.ppo.make_experience(rollout, torch.ones(4))
    # L_max 8, L_cache 4: penalties −1, −(7−4)/4, 0, 0 on scores of 1: the shaped scores 0, 0.25, 1, 1
    assert stats["objective/rlhf_reward"] == pytest.approx((0 + 0.25 + 1 + 1) / 4, abs=1e-6)
    assert stats["objective/scores"] == pytest.approx(1.0)  # the raw scores are logged as given
    # the truncated response is out of the loss: none of its tokens count
    assert stats["loss/rows_in_loss_frac"] == pytest.approx(0.75)
    assert experience.response_mask.sum(1).tolist() == [0, 7, 3, 2]


def test_train_fills_the_batch_with_informative_groups(model, tokenizer):
    dead = set(PROMPTS[::2])  # every response to these prompts scores 0: its group has no signal
    trained = []

    def reward(prompts, completions):
        return [0.0 if p in dead else reward_for_early_letters([p], [c])[0] + 1e-3 * i
                for i, (p, c) in enumerate(zip(prompts, completions))]

    trainer = PPOTrainer(config(algorithm="dapo", max_sampling_rounds=6), model, tokenizer, reward_fn=reward)
    learn = trainer.ppo.learn

    def spy(rollout, scores):
        trained.append(scores.clone())
        return learn(rollout, scores)

    trainer.ppo.learn = spy
    history = trainer.train(PROMPTS * 4, max_iterations=4, progress=False)
    assert len(history) == 4
    for scores, stats in zip(trained, history):
        groups = scores.view(-1, 4)
        assert (groups != groups[:, :1]).any(1).all()  # every trained group informative
        assert stats["loss/rows_in_loss_frac"] == 1.0
        assert stats["dynamic_sampling/rounds"] >= 1
    assert sum(h["dynamic_sampling/rounds"] for h in history) > 4  # half the prompts are dead: more draws
    assert 0 < history[0]["dynamic_sampling/informative_frac"] < 1


def test_dynamic_sampling_gives_up_after_max_rounds_and_trains_on_nothing(model, tokenizer, caplog):
    calls = []

    def reward(prompts, completions):  # informative in the first iteration, constant afterwards
        calls.append(1)
        return [float(i % 3) for i in range(len(completions))] if len(calls) == 1 else [1.0] * len(completions)

    trainer = PPOTrainer(config(algorithm="dapo", max_sampling_rounds=2, kl_coef=0.0), model, tokenizer,
                         reward_fn=reward)
    trainer.train(PROMPTS * 4, max_iterations=1, progress=False)  # Adam now has moments
    before = [p.detach().clone() for p in trainer.policy.parameters()]
    with caplog.at_level(logging.WARNING):
        [stats] = trainer.train(PROMPTS * 4, max_iterations=1, progress=False)
    assert stats["dynamic_sampling/rounds"] == 2 and stats["loss/rows_in_loss_frac"] == 0.0
    assert "after 2 batches (max_sampling_rounds) 0 of 2 groups" in caplog.text
    # no token in the loss: no optimiser step at all (Adam would otherwise move on its stale moments)
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.policy.parameters()))


def test_step_api_leaves_uninformative_groups_out_and_says_so_once(model, tokenizer, caplog):
    trainer = PPOTrainer(config(algorithm="dapo"), model, tokenizer)
    prompts = [p for p in PROMPTS[:2] for _ in range(4)]
    with caplog.at_level(logging.WARNING):
        stats = trainer.step(prompts, trainer.generate(prompts), [1.0] * 4 + [0.0, 1.0, 0.5, 0.2])
        trainer.step(prompts, trainer.generate(prompts), [1.0] * 4 + [0.0, 1.0, 0.5, 0.2])
    assert stats["loss/rows_in_loss_frac"] == 0.5
    assert caplog.text.count("step() trains on the batch it is given") == 1
