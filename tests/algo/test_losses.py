import math

import pytest
import torch

from tether.algo import aggregate, ppo_policy_loss, value_loss


def _log(xs):
    return torch.tensor([[math.log(x) for x in xs]])


def test_policy_loss_and_clipfrac_on_chosen_ratios():
    ratios = [0.5, 1.0, 1.5, 1.1]
    adv = torch.tensor([[1.0, 1.0, 1.0, -1.0]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    loss, stats = ppo_policy_loss(_log(ratios), torch.zeros(1, 4), adv, mask, cliprange=0.2)
    # per token: max(−A·r, −A·clip(r)) = [−0.5, −1.0, −1.2, 1.1]
    assert loss.item() == pytest.approx((-0.5 - 1.0 - 1.2 + 1.1) / 4)
    assert stats["clipped"].item() == 1.0  # only r = 1.5 with A > 0 is clipped
    assert stats["ratio"].item() == pytest.approx(sum(ratios))
    assert stats["approxkl"].item() == pytest.approx(sum(0.5 * math.log(r) ** 2 for r in ratios))
    assert stats["policykl"].item() == pytest.approx(-sum(math.log(r) for r in ratios))  # Σ logπ_old − logπ_new


def test_dual_clip_caps_negative_advantage_loss():
    adv = torch.tensor([[-1.0, 1.0]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    logp = _log([5.0, 5.0])
    plain, _ = ppo_policy_loss(logp, torch.zeros(1, 2), adv, mask, cliprange=0.2)
    dual, _ = ppo_policy_loss(logp, torch.zeros(1, 2), adv, mask, cliprange=0.2, dual_clip=3.0)
    assert plain.item() == pytest.approx((5.0 - 1.2) / 2)
    assert dual.item() == pytest.approx((3.0 - 1.2) / 2)


def test_policy_gradient_is_zero_where_clipped():
    logp = _log([1.5]).requires_grad_(True)
    loss, _ = ppo_policy_loss(logp, torch.zeros(1, 1), torch.tensor([[1.0]]), torch.ones(1, 1, dtype=torch.bool))
    loss.backward()
    assert logp.grad.item() == 0.0


def test_value_loss_hand_computed():
    values = torch.tensor([[1.0, 2.0]])
    old = torch.tensor([[0.0, 2.0]])
    returns = torch.tensor([[1.0, 0.0]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    loss, stats = value_loss(values, old, returns, mask, cliprange_value=0.2)
    # token 0: max(0, (0.2 − 1)²) = 0.64 (clipped); token 1: max(4, 4) = 4
    assert loss.item() == pytest.approx(0.5 * (0.64 + 4.0) / 2)
    assert stats["clipped"].item() == 1.0
    assert stats["error"].item() == pytest.approx(0.0 + 4.0)
    unclipped, _ = value_loss(values, old, returns, mask, cliprange_value=None)
    assert unclipped.item() == pytest.approx(0.5 * 4.0 / 2)


def test_aggregation_modes():
    loss = torch.tensor([[1.0, 2.0, 50.0], [3.0, 50.0, 50.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    assert aggregate(loss, mask, "token-mean", 3, 2).item() == pytest.approx(2.0)
    assert aggregate(loss, mask, "seq-mean-token-mean", 3, 2).item() == pytest.approx((1.5 + 3.0) / 2)
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        aggregate(loss, mask, "sum", 3, 2)


def test_masked_positions_never_reach_the_loss():
    adv = torch.tensor([[1.0, float("nan")]])
    logp = torch.tensor([[0.0, float("inf")]])
    mask = torch.tensor([[True, False]])
    loss, stats = ppo_policy_loss(logp, torch.zeros(1, 2), adv, mask)
    assert math.isfinite(loss.item()) and loss.item() == -1.0


@pytest.mark.parametrize("advantage, ratio, active", [
    (2.0, 1.5, "clipped"),     # A > 0, ρ > 1 + ε: capped at (1 + ε)·A, no gradient
    (2.0, 0.5, "unclipped"),   # A > 0, ρ < 1 − ε: the unclipped (smaller) objective, full gradient
    (-2.0, 0.5, "clipped"),    # A < 0, ρ < 1 − ε: capped at (1 − ε)·A, no gradient
    (-2.0, 1.5, "unclipped"),  # A < 0, ρ > 1 + ε: the unclipped (more negative) objective, full gradient
])
def test_clipped_objective_in_all_four_sign_and_region_cases(advantage, ratio, active):
    """L = max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε)), ε = 0.2, hand-computed value and gradient
    ∂L/∂logπ = −A·ρ where the unclipped term is active, 0 where the clipped one is."""
    eps = 0.2
    logprobs = torch.tensor([[math.log(ratio)]], requires_grad=True)
    loss, stats = ppo_policy_loss(logprobs, torch.zeros(1, 1), torch.tensor([[advantage]]),
                                  torch.ones(1, 1, dtype=torch.bool), cliprange=eps)
    loss.backward()
    clipped_ratio = min(max(ratio, 1 - eps), 1 + eps)
    if active == "clipped":
        assert loss.item() == pytest.approx(-advantage * clipped_ratio, rel=1e-6)
        assert logprobs.grad.item() == 0.0 and stats["clipped"].item() == 1.0
    else:
        assert loss.item() == pytest.approx(-advantage * ratio, rel=1e-6)
        assert logprobs.grad.item() == pytest.approx(-advantage * ratio, rel=1e-6)
        assert stats["clipped"].item() == 0.0
