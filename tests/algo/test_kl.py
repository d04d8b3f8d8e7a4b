import math

import pytest
import torch

from tether.algo import AdaptiveKLController, FixedKLController, kl_penalty


def test_estimators_hand_computed():
    logprobs = torch.tensor([math.log(0.5)])
    ref = torch.tensor([math.log(0.25)])
    log_ratio = math.log(0.5)  # log(π_ref / π)
    assert kl_penalty(logprobs, ref, "k1").item() == pytest.approx(-log_ratio)
    assert kl_penalty(logprobs, ref, "k2").item() == pytest.approx(0.5 * log_ratio**2)
    assert kl_penalty(logprobs, ref, "k3").item() == pytest.approx((0.5 - 1) - log_ratio)


def test_k3_and_k2_are_never_negative_and_zero_on_policy():
    torch.manual_seed(0)
    a, b = torch.randn(1000) * 3, torch.randn(1000) * 3
    assert (kl_penalty(a, b, "k3") >= 0).all()
    assert (kl_penalty(a, b, "k2") >= 0).all()
    assert (kl_penalty(a, b, "k1") < 0).any()  # k1 can go negative per sample
    for est in ("k1", "k2", "k3"):
        assert kl_penalty(a, a, est).abs().max().item() == 0.0


def test_k1_and_k3_are_unbiased_estimates_of_kl():
    # π = Categorical(p), π_ref = Categorical(q); sample from π; compare with the exact KL(π || π_ref)
    p = torch.tensor([0.6, 0.3, 0.1])
    q = torch.tensor([0.3, 0.3, 0.4])
    exact = (p * (p / q).log()).sum().item()
    gen = torch.Generator().manual_seed(0)
    samples = torch.multinomial(p, 200_000, replacement=True, generator=gen)
    for est in ("k1", "k3"):
        estimate = kl_penalty(p.log()[samples], q.log()[samples], est).mean().item()
        assert estimate == pytest.approx(exact, abs=0.01)


def test_unknown_estimator_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown KL estimator 'k4'"):
        kl_penalty(torch.zeros(1), torch.zeros(1), "k4")


def test_adaptive_controller_follows_ziegler_update():
    ctl = AdaptiveKLController(value=0.1, target=6.0, horizon=10000)
    ctl.update(current_kl=9.0, n_steps=100)  # error = 9/6 - 1 = 0.5 -> clipped to 0.2
    assert ctl.value == pytest.approx(0.1 * (1 + 0.2 * 100 / 10000))
    ctl = AdaptiveKLController(value=0.1, target=6.0, horizon=10000)
    ctl.update(current_kl=5.4, n_steps=100)  # error = -0.1
    assert ctl.value == pytest.approx(0.1 * (1 - 0.1 * 100 / 10000))


def test_fixed_controller_does_not_move():
    ctl = FixedKLController(0.05)
    ctl.update(100.0, 16)
    assert ctl.value == 0.05


def test_abs_estimator_is_the_absolute_log_ratio():
    from tether.algo import kl_penalty

    lp, ref = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -1.0]])
    assert kl_penalty(lp, ref, "abs").tolist() == [[0.5, 1.0]]  # TRL's kl_penalty="abs"


@pytest.mark.parametrize("base", ["k1", "k3", "abs"])
def test_straight_through_estimators_take_the_value_of_theirs_and_the_gradient_of_k2(base):
    logp = torch.tensor([0.3, -1.2], requires_grad=True)
    ref = torch.tensor([-0.2, -1.0])
    value = kl_penalty(logp, ref, base + "+")
    torch.testing.assert_close(value, kl_penalty(logp.detach(), ref, base), rtol=0, atol=0)
    value.sum().backward()
    # ∇k2 = (log π − log π_ref)·∇log π: 0.5 and −0.2
    assert logp.grad.tolist() == pytest.approx([0.5, -0.2])


def test_k3_plus_hand_computed():
    logp, ref = torch.tensor([0.3]), torch.tensor([-0.2])
    # log ρ = −0.5: k3 = e^−0.5 − 1 + 0.5
    assert kl_penalty(logp, ref, "k3+").item() == pytest.approx(math.exp(-0.5) - 0.5, abs=1e-7)
