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


def _reference_gae(rewards, values, mask, gamma, lam):
    """GAE written out per row over the list of valid positions only (an independent reference)."""
    advantages = [[0.0] * len(r) for r in rewards]
    for b, (r, v, m) in enumerate(zip(rewards, values, mask)):
        valid = [t for t, keep in enumerate(m) if keep]
        running = 0.0
        for i in reversed(range(len(valid))):
            t = valid[i]
            next_v = v[valid[i + 1]] if i + 1 < len(valid) else 0.0
            delta = r[t] + gamma * next_v - v[t]
            running = delta + gamma * lam * running
            advantages[b][t] = running
    return advantages


def test_gae_with_gamma_and_lambda_below_one_on_a_ragged_batch():
    """γ < 1 and λ < 1, non-zero values, rows of different lengths and a hole: against a per-row
    reference over the valid positions (a δ without γ, or γλ without γ, gives other numbers)."""
    gamma, lam = 0.9, 0.8
    rewards = [[0.5, -1.0, 2.0, 0.3], [1.0, 0.2, 0.0, 0.0], [0.1, 0.0, -0.4, 0.7]]
    values = [[0.3, -0.2, 0.8, 0.5], [0.6, 1.5, 9.0, 9.0], [-0.5, 7.0, 0.25, 0.4]]
    mask = [[True, True, True, True], [True, True, False, False], [True, False, True, True]]
    adv, ret = gae(torch.tensor(rewards), torch.tensor(values), torch.tensor(mask), gamma, lam)
    expected = _reference_gae(rewards, values, mask, gamma, lam)
    for b in range(3):
        for t in range(4):
            if mask[b][t]:
                assert adv[b, t].item() == pytest.approx(expected[b][t], rel=1e-6, abs=1e-6)
                assert ret[b, t].item() == pytest.approx(expected[b][t] + values[b][t], rel=1e-6, abs=1e-6)
            else:
                assert adv[b, t].item() == 0.0 and ret[b, t].item() == 0.0
    # one value hand-computed: row 1, t = 0: δ0 = 1 + 0.9·1.5 − 0.6 = 1.75, δ1 = 0.2 − 1.5 = −1.3
    assert adv[1, 0].item() == pytest.approx(1.75 + 0.9 * 0.8 * -1.3, rel=1e-6)
