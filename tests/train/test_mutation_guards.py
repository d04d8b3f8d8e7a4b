"""The PPO update path checked end to end against hand-computed outcomes: each test here fails for
a one-line bug that the rest of the suite would let through (benchmarks/mutation.py plants them)."""

import copy

import pytest
import torch

from tether import PPOConfig, PPOTrainer

from .test_invariants import fixed_rollout


def perturbed(model, scale=0.5, seed=3):
    """A copy of ``model`` with noise on every weight: a reference the policy differs from."""
    other = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return other


def test_adaptive_kl_raises_beta_when_the_kl_is_above_target(model, tokenizer):
    """A reference far from the policy gives a large positive KL: β must grow by the clipped error
    +0.2 (β ← β·(1 + 0.2·n/H)); fed −KL it would shrink."""
    trainer = PPOTrainer(PPOConfig(batch_size=8, mini_batch_size=8, ppo_epochs=1, learning_rate=0.0,
                                   adaptive_kl=True, kl_target=0.01, kl_horizon=100), model, tokenizer,
                         ref_model=perturbed(model))
    stats = trainer.ppo.learn(fixed_rollout(tokenizer), torch.zeros(8))
    assert stats["objective/kl"] > 0.05  # the reference really differs
    assert trainer.kl_ctl.value == pytest.approx(0.05 * (1 + 0.2 * 8 / 100))


def test_minibatches_are_reshuffled_every_epoch_and_reproducible_from_the_seed(model, tokenizer):
    def orders(seed):
        trainer = PPOTrainer(PPOConfig(batch_size=8, mini_batch_size=2, gradient_accumulation_steps=1, ppo_epochs=3,
                                       learning_rate=0.0, seed=seed), copy.deepcopy(model), tokenizer)
        seen = []
        real = trainer.ppo.accumulate_gradients
        trainer.ppo.accumulate_gradients = lambda exp, rows: (seen.append(rows.tolist()), real(exp, rows))[1]
        trainer.ppo.learn(fixed_rollout(tokenizer), torch.arange(8.0))
        return [sum(seen[e * 4 : (e + 1) * 4], []) for e in range(3)]

    epochs = orders(seed=0)
    assert all(sorted(order) == list(range(8)) for order in epochs)  # every row once per epoch
    assert epochs[0] != list(range(8)) and len({tuple(o) for o in epochs}) == 3  # shuffled, anew each epoch
    assert orders(seed=0) == epochs and orders(seed=1) != epochs


def test_the_update_clips_the_global_gradient_norm_of_every_trained_parameter(model, tokenizer):
    """With SGD (lr 1) the step is the clipped gradient itself: its norm over policy *and* value head
    together equals max_grad_norm (clipping the policy alone leaves the value head's larger)."""
    policy = copy.deepcopy(model)
    trainer = PPOTrainer(PPOConfig(batch_size=8, mini_batch_size=8, ppo_epochs=1, max_grad_norm=1e-3), policy,
                         tokenizer)
    params = [p for p in policy.parameters()] + list(trainer.value_head.parameters())
    sgd = torch.optim.SGD(params, lr=1.0)
    trainer.ppo.optimizer = sgd
    trainer.ppo.scheduler = torch.optim.lr_scheduler.LambdaLR(sgd, lambda _: 1.0)
    before = [p.detach().clone() for p in params]
    trainer.ppo.learn(fixed_rollout(tokenizer), torch.arange(8.0) * 10)
    step = torch.cat([(p.detach() - b).flatten() for p, b in zip(params, before)])
    head_step = torch.cat([(p.detach() - b).flatten() for p, b in zip(params[-2:], before[-2:])])
    assert step.norm().item() == pytest.approx(1e-3, rel=1e-3)
    assert 0 < head_step.norm().item() < 1e-3


def test_ppo_advantages_are_whitened_when_asked_and_only_then(model, tokenizer):
    """Scores 0..70 on a fresh value head give advantages of std ≫ 1: whitened they have mean 0 and
    std 1 over the valid tokens; with whiten_advantages=False they keep their scale."""
    rollout = fixed_rollout(tokenizer)
    for whiten, check in ((True, lambda m, s: abs(m) < 1e-5 and s == pytest.approx(1.0, rel=1e-4)),
                          (False, lambda m, s: s > 5)):
        trainer = PPOTrainer(PPOConfig(batch_size=8, whiten_advantages=whiten), copy.deepcopy(model), tokenizer)
        experience, _ = trainer.make_experience(rollout, torch.arange(8.0) * 10)
        valid = experience.advantages[experience.response_mask]
        assert check(valid.mean().item(), valid.std().item())


def test_rloo_advantages_subtract_the_kl_from_the_score(model, tokenizer):
    """RLOO's shaped score is score − β·Σ_t kl_t: with equal scores in a group, the response with the
    larger KL gets the lower advantage; hand-computed from the experience's own KL."""
    from tether.algo import masked_sum

    beta = 0.5
    trainer = PPOTrainer(PPOConfig(batch_size=8, algorithm="rloo", num_generations=2, kl_coef=beta,
                                   whiten_advantages=False), model, tokenizer, ref_model=perturbed(model))
    experience, _ = trainer.make_experience(fixed_rollout(tokenizer), torch.zeros(8))
    mask = experience.response_mask
    kl = masked_sum(experience.logprobs - experience.ref_logprobs, mask, dim=1).view(4, 2)
    shaped = -beta * kl
    expected = (shaped - shaped.flip(1)).reshape(-1)  # k = 2: A_i = r_i − r_other
    first = experience.advantages[torch.arange(8), mask.float().argmax(1)]
    torch.testing.assert_close(first, expected, rtol=1e-4, atol=1e-5)


def test_loss_total_is_policy_plus_vf_coef_times_value(model, tokenizer):
    trainer = PPOTrainer(PPOConfig(batch_size=8, mini_batch_size=8, ppo_epochs=1, vf_coef=0.3), model, tokenizer)
    stats = trainer.ppo.learn(fixed_rollout(tokenizer), torch.arange(8.0))
    assert stats["loss/total"] == pytest.approx(stats["loss/policy"] + 0.3 * stats["loss/value"], rel=1e-5)


def test_each_minibatch_steps_on_its_own_gradient(model, tokenizer):
    """Two minibatches with SGD: the update equals the sum of the two minibatch gradients taken in
    turn — a missing zero_grad adds the first minibatch's gradient to the second step."""
    def run():
        policy = copy.deepcopy(model)
        trainer = PPOTrainer(PPOConfig(batch_size=8, mini_batch_size=4, gradient_accumulation_steps=1, ppo_epochs=1,
                                       max_grad_norm=None), policy, tokenizer)
        params = list(policy.parameters()) + list(trainer.value_head.parameters())
        sgd = torch.optim.SGD(params, lr=1e-3)
        trainer.ppo.optimizer, trainer.ppo.scheduler = sgd, torch.optim.lr_scheduler.LambdaLR(sgd, lambda _: 1.0)
        trainer.ppo.shuffle_generator = torch.Generator().manual_seed(0)
        return trainer, params

    trainer, params = run()
    before = [p.detach().clone() for p in params]
    experience, _ = trainer.make_experience(fixed_rollout(tokenizer), torch.arange(8.0))
    order = torch.randperm(8, generator=torch.Generator().manual_seed(0))
    probe, probe_params = run()
    for half in order.split(4):  # the reference: one gradient per minibatch, stepped in turn
        probe.ppo.optimizer.zero_grad(set_to_none=True)
        probe.ppo.accumulate_gradients(experience, half)
        probe.ppo.optimizer.step()
    expected = [p.detach().clone() for p in probe_params]
    trainer.ppo.ppo_update(experience)
    for p, e, b in zip(params, expected, before):
        torch.testing.assert_close(p.detach() - b, e - b, rtol=1e-4, atol=1e-8)
