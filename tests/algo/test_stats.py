import math

import pytest
import torch

from tether.algo import entropy_from_logits, logprobs_from_logits, masked_mean, masked_sum, masked_var, whiten


def test_masked_mean_ignores_masked_values_even_inf():
    values = torch.tensor([[1.0, 2.0, float("inf")], [3.0, float("nan"), 0.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    assert masked_sum(values, mask).item() == 6.0
    assert masked_mean(values, mask).item() == 2.0
    assert masked_mean(values, mask, dim=1).tolist() == [1.5, 3.0]


def test_masked_var_is_unbiased_over_valid_positions():
    values = torch.tensor([1.0, 2.0, 3.0, 100.0])
    mask = torch.tensor([True, True, True, False])
    assert masked_var(values, mask).item() == pytest.approx(1.0)  # ((1)^2 + 0 + 1^2) / (3 - 1)
    assert masked_var(values, mask, unbiased=False).item() == pytest.approx(2 / 3)


def test_whiten_uses_valid_tokens_only_and_zeroes_the_rest():
    values = torch.tensor([[1.0, 2.0], [3.0, 100.0]])
    mask = torch.tensor([[True, True], [True, False]])
    out = whiten(values, mask, eps=0.0)
    assert out.flatten().tolist() == pytest.approx([-1.0, 0.0, 1.0, 0.0])


def test_whiten_without_mean_shift_keeps_the_mean():
    values = torch.tensor([1.0, 2.0, 3.0])
    out = whiten(values, torch.ones(3, dtype=torch.bool), shift_mean=False, eps=0.0)
    assert out.tolist() == pytest.approx([1.0, 2.0, 3.0])  # std is 1, so only the mean remains


def test_whiten_single_valid_token_is_centred_not_nan():
    out = whiten(torch.tensor([5.0, 7.0]), torch.tensor([True, False]))
    assert out.tolist() == [0.0, 0.0]


def test_logprobs_from_logits_hand_computed():
    logits = torch.tensor([[[0.0, math.log(2.0)]]])  # softmax = [1/3, 2/3]
    assert logprobs_from_logits(logits, torch.tensor([[1]])).item() == pytest.approx(math.log(2 / 3))
    assert logprobs_from_logits(logits, torch.tensor([[0]])).item() == pytest.approx(math.log(1 / 3))


def test_logprobs_from_logits_matches_log_softmax_gather():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11) * 4
    tokens = torch.randint(0, 11, (2, 5))
    reference = torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(logprobs_from_logits(logits, tokens), reference)


def test_entropy_uniform_and_peaked():
    uniform = torch.zeros(1, 1, 4)
    assert entropy_from_logits(uniform).item() == pytest.approx(math.log(4))
    peaked = torch.tensor([[[100.0, 0.0, 0.0]]])
    assert entropy_from_logits(peaked).item() == pytest.approx(0.0, abs=1e-6)
