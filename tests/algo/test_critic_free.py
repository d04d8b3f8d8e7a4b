"""GRPO, RLOO and REINFORCE++ estimators against hand-computed groups."""

import math

import pytest
import torch

from tether.algo import discounted_returns, grpo_advantages, rloo_advantages


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
