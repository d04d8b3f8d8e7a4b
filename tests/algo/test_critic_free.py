"""GRPO, RLOO and REINFORCE++ estimators against hand-computed groups."""

import math

import pytest
import torch

from tether.algo import (
    discounted_returns,
    gae,
    group_mean_baseline,
    grpo_advantages,
    informative_groups,
    overlong_penalty,
    rloo_advantages,
)


def test_grpo_hand_computed_group():
    # group 1: rewards 1, 2, 3 -> mean 2, unbiased std 1 -> -1, 0, 1 (eps aside)
    # group 2: rewards 0, 0, 6 -> mean 2, std sqrt(12) -> -2/√12, -2/√12, 4/√12
    adv = grpo_advantages(torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0, 6.0]), group_size=3, eps=0.0)
    s = math.sqrt(12)
    assert adv.tolist() == pytest.approx([-1, 0, 1, -2 / s, -2 / s, 4 / s], abs=1e-6)


def test_dr_grpo_does_not_divide_by_std():
    adv = grpo_advantages(torch.tensor([0.0, 0.0, 6.0]), group_size=3, scale_by_std=False)
    assert adv.tolist() == pytest.approx([-2, -2, 4])


@pytest.mark.parametrize("fn", [lambda s: grpo_advantages(s, 4), lambda s: grpo_advantages(s, 4, False),
                                lambda s: rloo_advantages(s, 4)])
def test_equal_rewards_give_zero_advantage(fn):
    adv = fn(torch.tensor([0.7, 0.7, 0.7, 0.7, 1.0, 2.0, 3.0, 4.0]))
    assert adv[:4].tolist() == [0.0] * 4  # no NaN from 0/0, no signal
    assert adv[4:].abs().sum() > 0


def test_rloo_leave_one_out_baseline():
    # r = 1, 2, 6: baselines (2+6)/2=4, (1+6)/2=3.5, (1+2)/2=1.5
    adv = rloo_advantages(torch.tensor([1.0, 2.0, 6.0]), group_size=3)
    assert adv.tolist() == pytest.approx([-3.0, -1.5, 4.5])
    # identity: k/(k-1) (r - mean)
    assert adv.tolist() == pytest.approx([1.5 * (r - 3.0) for r in (1.0, 2.0, 6.0)])


def test_groups_must_divide_the_batch():
    with pytest.raises(ValueError, match="not a whole number of groups of 4"):
        grpo_advantages(torch.zeros(6), 4)
    with pytest.raises(ValueError, match="at least 2 responses"):
        rloo_advantages(torch.zeros(4), 1)


def test_discounted_returns_hand_computed():
    rewards = torch.tensor([[1.0, 0.0, 2.0, 9.0], [0.5, 1.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    got = discounted_returns(rewards, mask, gamma=0.5)
    # row 0: G2 = 2, G1 = 0 + 0.5·2 = 1, G0 = 1 + 0.5·1 = 1.5; the masked 9 is ignored
    assert got.tolist() == [[1.5, 1.0, 2.0, 0.0], [1.0, 1.0, 0.0, 0.0]]
    assert discounted_returns(rewards, mask, gamma=1.0)[0].tolist() == [3.0, 2.0, 2.0, 0.0]


@pytest.mark.parametrize("value,k", [(3.3, 7), (100.1, 8), (0.3, 6)])
@pytest.mark.parametrize("fn", [grpo_advantages, group_mean_baseline, rloo_advantages])
def test_a_group_of_equal_rewards_gets_exactly_zero(fn, value, k):
    # float32 group statistics of these groups are off by an ulp: (r − mean)/(std + 1e-4) gave up to 0.07
    scores = torch.cat([torch.full((k,), value), torch.arange(k, dtype=torch.float32)])
    adv = fn(scores, k)
    assert adv[:k].tolist() == [0.0] * k
    assert adv.dtype == torch.float32 and adv[k:].abs().sum() > 0


def test_group_mean_baseline_hand_computed():
    assert group_mean_baseline(torch.tensor([1.0, 3.0, 2.0, 2.0, 0.0, 6.0]), 2).tolist() == [-1, 1, 0, 0, -3, 3]


def test_informative_groups_are_those_whose_scores_differ():
    scores = torch.tensor([1.0, 1.0, 1.0, 2.0, 0.0, 0.0, 0.5, -0.5])
    assert informative_groups(scores, 2).tolist() == [False, True, False, True]


def test_discounted_returns_skip_masked_holes_like_gae():
    # a hole at t = 1 (a tool's output inside the response): no reward and no discount step there
    rewards = torch.tensor([[1.0, 5.0, 2.0, 3.0]])
    mask = torch.tensor([[True, False, True, True]])
    got = discounted_returns(rewards, mask, gamma=0.5)
    # G3 = 3, G2 = 2 + 0.5·3 = 3.5, G0 = 1 + 0.5·3.5 = 2.75 (discounting through the hole gave 1.875)
    assert got.tolist() == [[2.75, 0.0, 3.5, 3.0]]
    advantages, _ = gae(rewards, torch.zeros_like(rewards), mask, gamma=0.5, lam=1.0)
    assert advantages.tolist() == got.tolist()


def test_discounted_returns_agree_with_gae_on_random_ragged_masks_with_holes():
    torch.manual_seed(0)
    rewards = torch.randn(8, 12, dtype=torch.float64)
    mask = torch.rand(8, 12) > 0.3
    mask[:, 0] = True
    for gamma in (1.0, 0.9):
        advantages, _ = gae(rewards, torch.zeros_like(rewards), mask, gamma=gamma, lam=1.0)
        torch.testing.assert_close(discounted_returns(rewards, mask, gamma), advantages, rtol=0, atol=1e-12)


def test_soft_overlong_punishment_hand_computed():
    # L_max = 20, L_cache = 5: 0 up to 15 tokens, then −(L − 15)/5, −1 at 20
    lengths = torch.tensor([10, 15, 16, 18, 20])
    assert overlong_penalty(lengths, 20, 5).tolist() == pytest.approx([0.0, 0.0, -0.2, -0.6, -1.0])
    assert overlong_penalty(lengths, 20, 5, factor=0.5).tolist() == pytest.approx([0.0, 0.0, -0.1, -0.3, -0.5])
    with pytest.raises(ValueError, match="overlong buffer"):
        overlong_penalty(lengths, 20, 21)
