import pytest
import torch

from tether.algo import gae, last_valid_index, token_rewards


def test_gae_three_tokens_hand_computed():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.6, 0.7]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    # δ2 = 1 − 0.7 = 0.3; δ1 = 0.7 − 0.6 = 0.1; δ0 = 0.6 − 0.5 = 0.1
    # A2 = 0.3; A1 = 0.1 + 0.5·0.3 = 0.25; A0 = 0.1 + 0.5·0.25 = 0.225
    assert adv.flatten().tolist() == pytest.approx([0.225, 0.25, 0.3])
    assert ret.flatten().tolist() == pytest.approx([0.725, 0.85, 1.0])


def test_gae_with_lambda_one_gives_discounted_returns():
    rewards = torch.tensor([[1.0, 0.0, 2.0]])
    values = torch.zeros(1, 3)
    adv, ret = gae(rewards, values, torch.ones(1, 3, dtype=torch.bool), gamma=0.9, lam=1.0)
    assert ret.flatten().tolist() == pytest.approx([1 + 0.81 * 2, 0.9 * 2, 2.0])


def test_gae_stops_at_the_last_valid_token():
    rewards = torch.tensor([[0.0, 1.0, 99.0]])
    values = torch.tensor([[0.5, 0.6, 42.0]])
    mask = torch.tensor([[True, True, False]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    # V after the last valid token is 0: δ1 = 1 − 0.6 = 0.4, A0 = 0.1 + 0.5·0.4
    assert adv.flatten().tolist() == pytest.approx([0.3, 0.4, 0.0])
    assert ret.flatten().tolist() == pytest.approx([0.8, 1.0, 0.0])


def test_token_rewards_put_score_on_last_valid_token_and_kl_everywhere():
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    rewards = token_rewards(torch.tensor([1.0, 2.0]), kl, kl_coef=0.5, mask=mask)
    assert rewards.flatten().tolist() == pytest.approx([-0.05, 1 - 0.1, 0.0, -0.2, -0.25, 2 - 0.3])


def test_last_valid_index():
    mask = torch.tensor([[True, False, False], [True, True, True], [True, True, False]])
    assert last_valid_index(mask).tolist() == [0, 2, 1]


def test_gae_skips_masked_tokens_inside_a_response():
    """A hole (say, a tool's output) is not an action: the values and advantages of the next valid
    token carry over it, so the same three actions give the same advantages with or without it."""
    rewards = torch.tensor([[0.0, 99.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 42.0, 0.6, 0.7]])
    mask = torch.tensor([[True, False, True, True]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    # the hand-computed three-token case above: A = 0.225, 0.25, 0.3 on the valid tokens
    assert adv.flatten().tolist() == pytest.approx([0.225, 0.0, 0.25, 0.3])
    assert ret.flatten().tolist() == pytest.approx([0.725, 0.0, 0.85, 1.0])
