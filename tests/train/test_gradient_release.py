"""Gradient release (optimizer_in_backward): the same update as stepping after backward, without holding every
gradient at once; refused where it cannot give the same update."""

import copy

import pytest
import torch

from tether import PPOConfig, PPOTrainer
from tether.config import ConfigError
from tether.train.optim import StepInBackward

PROMPTS = ["hello there", "abc", "what is up", "zz top"]
RESPONSES = ["a b c", "yes", "no no no", "zz"]
SCORES = [1.0, -0.5, 0.25, 0.75]


def trained(model, tokenizer, release: bool, probe=None):
    config = PPOConfig(batch_size=4, mini_batch_size=2, gradient_accumulation_steps=1, ppo_epochs=2,
                       max_new_tokens=4, learning_rate=1e-2, max_grad_norm=None, weight_decay=0.01,
                       optimizer_in_backward=release, seed=0)
    trainer = PPOTrainer(config, copy.deepcopy(model), tokenizer)
    if probe is not None:
        for p in trainer.model.parameters():
            if p.requires_grad:
                p.register_post_accumulate_grad_hook(probe(trainer.model))
    stats = [trainer.step(PROMPTS, RESPONSES, SCORES) for _ in range(2)]
    return trainer, stats


def test_release_makes_the_same_update_as_a_step_after_backward(model, tokenizer):
    plain, plain_stats = trained(model, tokenizer, release=False)
    released, released_stats = trained(model, tokenizer, release=True)
    moved = max((p - q).abs().max().item() for p, q in zip(plain.model.parameters(), model.parameters()))
    assert moved > 1e-3  # the updates are large enough for the comparison to mean something
    for (name, a), b in zip(plain.model.named_parameters(), released.model.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)  # fused AdamW per tensor: same math
    for a, b in zip(plain_stats, released_stats):
        assert b["policy/grad_norm"] == pytest.approx(a["policy/grad_norm"], rel=1e-4)
        assert b["loss/total"] == pytest.approx(a["loss/total"], rel=1e-4, abs=1e-6)


def test_release_never_holds_more_than_the_current_gradient(model, tokenizer):
    """A probe hook (after tether's) counts the other parameters holding a gradient when each one completes."""
    held = []

    def probe(module):
        return lambda p: held.append(sum(q.grad is not None for q in module.parameters()))

    trained(model, tokenizer, release=True, probe=probe)
    assert held and max(held) <= 1  # at most the tied / current one; without release it grows to all of them
    held.clear()
    trained(model, tokenizer, release=False, probe=probe)
    assert max(held) > 5


@pytest.mark.parametrize("options, message", [
    (dict(max_grad_norm=1.0, gradient_accumulation_steps=1), "max_grad_norm: null"),
    (dict(max_grad_norm=None), "gradient_accumulation_steps: 1"),  # the default accumulates the whole batch
])
def test_release_is_refused_where_it_cannot_give_the_same_update(options, message):
    with pytest.raises(ConfigError, match=message):
        PPOConfig(batch_size=4, mini_batch_size=2, optimizer_in_backward=True, **options)


def test_a_non_finite_gradient_is_not_stepped_and_is_reported():
    layer = torch.nn.Linear(3, 2)
    before = layer.weight.detach().clone()
    optimizer = torch.optim.AdamW(layer.parameters(), lr=0.1)
    stepper = StepInBackward(optimizer)
    stepper.begin()
    (layer(torch.tensor([[1.0, float("inf"), 0.0]])).sum()).backward()
    norm, non_finite = stepper.end()
    assert non_finite and torch.equal(layer.weight, before)  # the weight's gradient is inf: no step
    stepper.begin()
    (layer(torch.ones(1, 3)).sum()).backward()
    norm, non_finite = stepper.end()
    # d sum / d W = ones [2, 3], d / d b = ones [2]: norm sqrt(8)
    assert not non_finite and norm == pytest.approx(8 ** 0.5) and not torch.equal(layer.weight, before)
    assert all(p.grad is None for p in layer.parameters())  # freed as they were stepped
