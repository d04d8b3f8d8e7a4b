import math

import pytest
import torch

from tether.algo import bradley_terry_loss


def test_bradley_terry_loss_matches_hand_computed_values():
    chosen = torch.tensor([2.0, 0.0, 1.0])
    rejected = torch.tensor([1.0, 0.0, 3.0])
    loss, stats = bradley_terry_loss(chosen, rejected)
    # -log σ(1) = log(1 + e^-1); -log σ(0) = log 2; -log σ(-2) = log(1 + e^2)
    expected = [math.log1p(math.exp(-1)), math.log(2), math.log1p(math.exp(2))]
    assert loss.item() == pytest.approx(sum(expected) / 3, rel=1e-5)  # float32 log-sigmoid against Python floats
    assert stats["correct"].item() == 1.5  # one right, one tie (½), one wrong
    assert stats["gap"].item() == pytest.approx(1 + 0 - 2)
    assert stats["loss"].item() == pytest.approx(sum(expected), rel=1e-5)  # float32 log-sigmoid against Python floats


def test_margin_asks_for_a_larger_gap():
    chosen, rejected = torch.tensor([1.0]), torch.tensor([0.0])
    loss, _ = bradley_terry_loss(chosen, rejected, margin=torch.tensor([1.0]))
    assert loss.item() == pytest.approx(math.log(2))


def test_gradient_pushes_chosen_up_and_rejected_down():
    chosen = torch.tensor([0.5], requires_grad=True)
    rejected = torch.tensor([0.5], requires_grad=True)
    bradley_terry_loss(chosen, rejected)[0].backward()
    assert chosen.grad.item() == pytest.approx(-0.5)
    assert rejected.grad.item() == pytest.approx(0.5)


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="must both be"):
        bradley_terry_loss(torch.zeros(2, 1), torch.zeros(2, 1))
