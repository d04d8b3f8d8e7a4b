"""The policy-loss family (clip-higher PPO, GSPO, GSPO-token, CISPO) and Dr. GRPO's normalisation,
against values computed by hand from the papers' formulas (docs/algorithms.md), including which
tokens get a gradient."""

import math

import pytest
import torch

from tether.algo import (
    POLICY_LOSSES,
    aggregate,
    cispo_policy_loss,
    gspo_policy_loss,
    gspo_token_policy_loss,
    ppo_policy_loss,
)

# float32 rounding of exp/log on a handful of values: a few ulps of numbers of order 1
TOL = 1e-6


def _grad(loss_fn, logp, *args, **kwargs):
    logp = logp.clone().requires_grad_(True)
    loss, stats = loss_fn(logp, *args, **kwargs)
    loss.backward()
    return loss.item(), logp.grad, stats


def test_clip_higher_keeps_the_gradient_of_a_rising_rare_token():
    ratios = [0.5, 1.0, 1.5, 1.25, 0.7]
    logp = torch.tensor([[math.log(r) for r in ratios]])
    adv = torch.tensor([[1.0, 1.0, 1.0, 1.0, -1.0]])
    mask = torch.ones(1, 5, dtype=torch.bool)
    loss, grad, stats = _grad(ppo_policy_loss, logp, torch.zeros(1, 5), adv, mask, cliprange=0.2, cliprange_high=0.28)
    # max(−A·r, −A·clip(r, 0.8, 1.28)) = −0.5, −1, −1.28 (clipped), −1.25 (inside 1.28), 0.8 (clipped below)
    assert loss == pytest.approx((-0.5 - 1.0 - 1.28 - 1.25 + 0.8) / 5, abs=TOL)
    # d(−A·r)/dlog r = −A·r where the unclipped term is active, 0 where the clipped one is
    assert grad.tolist()[0] == pytest.approx([-0.5 / 5, -1.0 / 5, 0.0, -1.25 / 5, 0.0], abs=TOL)
    assert stats["clipped"].item() == 2
    # symmetric clipping (PPO) cuts r = 1.25 at 1.2: no gradient there
    loss_sym, grad_sym, _ = _grad(ppo_policy_loss, logp, torch.zeros(1, 5), adv, mask, cliprange=0.2)
    assert loss_sym == pytest.approx((-0.5 - 1.0 - 1.2 - 1.2 + 0.8) / 5, abs=TOL)
    assert grad_sym[0, 3].item() == 0.0


def _two_responses():
    """Row 0: three tokens, log-ratios 0.1, −0.1, 0.3 (s = e^0.1); row 1: two tokens 1e-4, 3e-4 and a pad."""
    log_ratio = torch.tensor([[0.1, -0.1, 0.3], [1e-4, 3e-4, 7.0]], dtype=torch.float64)
    old = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.7, -1.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    return old + log_ratio, old, mask


def test_gspo_clips_whole_responses_on_their_geometric_mean_ratio():
    logp, old, mask = _two_responses()
    adv = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, 0.0]], dtype=torch.float64)
    loss, grad, stats = _grad(gspo_policy_loss, logp, old, adv, mask, cliprange=3e-4, cliprange_high=4e-4,
                              aggregation="seq-mean-token-mean")
    s1, s2 = math.exp(0.1), math.exp(2e-4)  # (π/π_old)^(1/|y|): exp of the mean log-ratio; the pad is not read
    # row 0: A = 1, s1 > 1.0004: clipped, L = −1.0004; row 1: A = −1, s2 inside [0.9997, 1.0004]: L = s2
    assert loss == pytest.approx((-1.0004 + s2) / 2, abs=1e-12)
    assert grad[0].tolist() == [0.0, 0.0, 0.0]  # a clipped response: no token has a gradient
    # dL/dlog π_t = (1/2 responses) · s2 · (1/|y| = 1/2) on each valid token of row 1, 0 on its pad
    assert grad[1].tolist() == pytest.approx([s2 / 4, s2 / 4, 0.0], abs=1e-12)
    assert stats["clipped"].item() == 3  # the three tokens of the clipped response
    assert stats["ratio"].item() == pytest.approx(3 * s1 + 2 * s2, abs=1e-9)


def test_gspo_token_equals_gspo_for_per_response_advantages():
    torch.manual_seed(0)
    old = -torch.rand(4, 6, dtype=torch.float64) * 3
    logp = old + torch.randn(4, 6, dtype=torch.float64) * 4e-4
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[1, 4:] = False
    mask[3, 2:] = False
    adv = torch.tensor([1.5, -0.5, -2.0, 0.7], dtype=torch.float64)[:, None].expand(4, 6)
    seq, g_seq, _ = _grad(gspo_policy_loss, logp, old, adv, mask, cliprange=3e-4, cliprange_high=4e-4)
    tok, g_tok, _ = _grad(gspo_token_policy_loss, logp, old, adv, mask, cliprange=3e-4, cliprange_high=4e-4)
    assert tok == pytest.approx(seq, abs=1e-12)
    torch.testing.assert_close(g_tok, g_seq, rtol=0, atol=1e-12)
    assert (g_seq != 0).any() and (g_seq == 0).any()  # some responses clipped, some not: the test has teeth


def test_gspo_token_takes_per_token_advantages():
    logp = torch.tensor([[-1.0 + 1e-4, -2.0 + 3e-4]], dtype=torch.float64)
    old = torch.tensor([[-1.0, -2.0]], dtype=torch.float64)
    adv = torch.tensor([[2.0, -1.0]], dtype=torch.float64)
    mask = torch.ones(1, 2, dtype=torch.bool)
    loss, grad, _ = _grad(gspo_token_policy_loss, logp, old, adv, mask, cliprange=3e-4, cliprange_high=4e-4)
    s = math.exp(2e-4)  # s_{i,t} = sg[s_i]·π_t/sg[π_t]: value s on both tokens, gradient s·∇log π_t
    assert loss == pytest.approx((-2.0 * s + s) / 2, abs=1e-12)
    assert grad[0].tolist() == pytest.approx([-2.0 * s / 2, s / 2], abs=1e-12)


def test_cispo_weights_every_token_with_a_clipped_detached_ratio():
    logp = torch.tensor([[-1.0, -2.0, -0.5]])
    ratios = torch.tensor([[0.5, 1.0, 2.0]])
    old = logp - ratios.log()
    adv = torch.tensor([[1.0, 1.0, -1.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    loss, grad, stats = _grad(cispo_policy_loss, logp, old, adv, mask, cliprange=None, cliprange_high=0.28)
    # L_t = −sg(clip(r, −∞, 1.28))·A·log π: weights 0.5, 1, 1.28 (no lower bound)
    assert loss == pytest.approx((0.5 * 1 * 1.0 + 1 * 1 * 2.0 - 1.28 * 1 * 0.5) / 3, abs=TOL)
    # every token keeps a gradient, −w·A, even the one whose weight was truncated (PPO's clip would zero it)
    assert grad[0].tolist() == pytest.approx([-0.5 / 3, -1.0 / 3, 1.28 / 3], abs=TOL)
    assert stats["clipped"].item() == 1
    # a lower bound, when asked for, truncates from below too: 0.5 → 0.8
    loss_low, _, stats_low = _grad(cispo_policy_loss, logp, old, adv, mask, cliprange=0.2, cliprange_high=0.28)
    assert loss_low == pytest.approx((0.8 * 1.0 + 2.0 - 1.28 * 0.5) / 3, abs=TOL)
    assert stats_low["clipped"].item() == 2


def test_dr_grpo_normalises_by_a_constant_length():
    loss = torch.tensor([[1.0, 2.0, 50.0], [3.0, 50.0, 50.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    # Σ valid / (responses × max length): (1 + 2 + 3) / (2 × 4)
    assert aggregate(loss, mask, "seq-mean-token-sum-norm", 3, 2, norm_length=4).item() == pytest.approx(0.75)
    with pytest.raises(ValueError, match="norm_length"):
        aggregate(loss, mask, "seq-mean-token-sum-norm", 3, 2)


def test_a_step_with_no_token_in_the_loss_gives_zero_not_nan():
    loss = torch.ones(2, 3)
    mask = torch.zeros(2, 3, dtype=torch.bool)
    for mode in ("token-mean", "seq-mean-token-mean"):
        assert aggregate(loss, mask, mode, 0, 0).item() == 0.0


@pytest.mark.parametrize("name", sorted(POLICY_LOSSES))
def test_every_loss_splits_over_micro_batches_exactly(name):
    """Summing micro-batch losses normalised by the whole minibatch's counts gives the loss of the whole."""
    torch.manual_seed(1)
    old = -torch.rand(6, 5, dtype=torch.float64)
    logp = old + torch.randn(6, 5, dtype=torch.float64) * 0.2
    adv = torch.randn(6, 1, dtype=torch.float64).expand(6, 5)
    mask = torch.rand(6, 5) > 0.3
    mask[:, 0] = True
    kwargs = dict(aggregation="seq-mean-token-mean", num_tokens=mask.sum().item(), num_seqs=6)
    whole, _ = POLICY_LOSSES[name](logp, old, adv, mask, **kwargs)
    parts = sum(POLICY_LOSSES[name](logp[i:i + 2], old[i:i + 2], adv[i:i + 2], mask[i:i + 2], **kwargs)[0]
                for i in range(0, 6, 2))
    assert parts.item() == pytest.approx(whole.item(), abs=1e-12)
