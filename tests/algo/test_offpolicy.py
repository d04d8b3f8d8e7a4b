"""Engine-vs-trainer gap and truncated importance weights, against hand-computed numbers."""

import math

import pytest
import torch

from tether.algo import logprob_gap, ppo_policy_loss, truncated_importance_weights

LOGPROBS = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -4.0, -9.0]])
ENGINE = torch.tensor([[-1.5, -2.0, -0.1], [-0.3, -1.0, 0.0]])
MASK = torch.tensor([[True, True, True], [True, False, False]])


def test_logprob_gap_sums_absolute_differences_over_valid_tokens():
    gap = logprob_gap(LOGPROBS, ENGINE, MASK)
    # |Δ| on valid tokens: 0.5, 0, 0.4, 0 (masked 3.0 and 9.0 ignored)
    assert gap["sum"].item() == pytest.approx(0.9)
    assert gap["count"].item() == 4
    assert gap["max"].item() == pytest.approx(0.5)


def test_truncated_importance_weights_by_hand():
    weights, stats = truncated_importance_weights(LOGPROBS, ENGINE, MASK, cap=1.2)
    # ratios exp(Δ): e^0.5 = 1.6487 (capped at 1.2), e^0 = 1, e^-0.4 = 0.6703, 1; masked rows 0
    expected = torch.tensor([[1.2, 1.0, math.exp(-0.4)], [1.0, 0.0, 0.0]])
    torch.testing.assert_close(weights, expected)
    assert stats["ratio"].item() == pytest.approx(math.exp(0.5) + 1 + math.exp(-0.4) + 1)
    assert stats["capped"].item() == 1


def test_tis_cap_below_one_is_refused():
    with pytest.raises(ValueError, match="cap must be"):
        truncated_importance_weights(LOGPROBS, ENGINE, MASK, cap=0.5)


def test_policy_loss_weights_each_token_surrogate():
    """Ratio 1 (new = old): the clipped surrogate is −A per token; weights w give −Σ w·A / n."""
    old = torch.zeros(1, 3)
    new = torch.zeros(1, 3, requires_grad=True)
    adv = torch.tensor([[1.0, -2.0, 3.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    w = torch.tensor([[0.5, 1.0, 2.0]])
    loss, _ = ppo_policy_loss(new, old, adv, mask, is_weights=w)
    assert loss.item() == pytest.approx(-(0.5 * 1 - 2.0 * 1 + 3 * 2) / 3)
    loss.backward()  # d/dlogπ of −w·A·ρ at ρ = 1 is −w·A, over n = 3 tokens
    torch.testing.assert_close(new.grad, -(w * adv) / 3)
    plain, _ = ppo_policy_loss(new.detach(), old, adv, mask)
    assert plain.item() == pytest.approx(-(1 - 2 + 3) / 3)
