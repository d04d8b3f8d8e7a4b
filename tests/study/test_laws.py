"""The over-optimisation study's arithmetic against hand-computed values and brute-force enumeration."""

import itertools
import math

import pytest
import torch

from tether.study.laws import best_of_n, best_of_n_weights, bootstrap, fit_law, kl_best_of_n, law, peak, r_squared


def test_kl_of_best_of_n():
    assert kl_best_of_n(1) == 0.0
    assert kl_best_of_n(2) == pytest.approx(math.log(2) - 0.5)
    assert kl_best_of_n(32) == pytest.approx(2.4969, abs=1e-4)  # log 32 − 31/32
    with pytest.raises(ValueError):
        kl_best_of_n(0)


def test_best_of_two_of_three_by_hand():
    """select (1, 3, 2), value (10, 30, 20): subsets {0,1} → 30, {0,2} → 20, {1,2} → 30; mean 80/3."""
    got = best_of_n(torch.tensor([[1.0, 3.0, 2.0]]), torch.tensor([[10.0, 30.0, 20.0]]), 2)
    assert got.item() == pytest.approx(80 / 3)
    assert best_of_n_weights(3, 2).tolist() == pytest.approx([0, 1 / 3, 2 / 3])


@pytest.mark.parametrize("n", range(1, 7))
def test_best_of_n_equals_the_average_over_every_subset(n):
    g = torch.Generator().manual_seed(n)
    select, value = torch.randn(5, 6, generator=g), torch.randn(5, 6, generator=g)
    got = best_of_n(select, value, n)
    for p in range(5):
        subsets = list(itertools.combinations(range(6), n))
        expected = sum(value[p, max(s, key=lambda i: select[p, i])].item() for s in subsets) / len(subsets)
        assert got[p].item() == pytest.approx(expected, abs=1e-12)
    assert best_of_n_weights(6, n).sum().item() == pytest.approx(1.0)


def test_best_of_n_refuses_bad_shapes():
    with pytest.raises(ValueError):
        best_of_n(torch.ones(2, 3), torch.ones(2, 3), 4)
    with pytest.raises(ValueError):
        best_of_n(torch.ones(3), torch.ones(3), 1)


@pytest.mark.parametrize("form, alpha, beta", [("bon", 1.0, 0.25), ("rl", 0.8, 0.5)])
def test_fits_recover_exact_laws_and_their_peaks(form, alpha, beta):
    d = torch.linspace(0, 4, 17)
    r = law(d, alpha, beta, form)
    a, b = fit_law(d, r, form)
    assert (a, b) == pytest.approx((alpha, beta), abs=1e-9)
    assert r_squared(d, r, a, b, form) == pytest.approx(1.0)
    d_star, r_star = peak(a, b, form)
    assert law(d_star, a, b, form).item() == pytest.approx(r_star)
    near = torch.tensor([d_star * 0.9, d_star * 1.1])
    assert (law(near, a, b, form) < r_star).all()  # it is the maximum


def test_peaks_by_hand():
    assert peak(1.0, 0.25, "bon") == pytest.approx((2.0, 1.0))  # α/2β, α²/4β
    assert peak(1.0, 0.5, "rl") == pytest.approx((math.e, 0.5 * math.e))  # exp(α/β − 1), β d*
    assert peak(1.0, 0.0, "bon") is None and peak(1.0, -0.1, "rl") is None


def test_bootstrap_intervals_cover_a_known_mean_and_are_exact_for_a_constant():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, generator=g, dtype=torch.float64) + 3.0
    intervals = bootstrap(lambda idx: {"mean": x[idx].mean().item(), "const": 1.0, "never": float("nan")}, 200,
                          rounds=500)
    low, high = intervals["mean"]
    se = x.std().item() / math.sqrt(200)
    assert low < x.mean().item() < high and high - low == pytest.approx(2 * 1.96 * se, rel=0.25)
    assert intervals["const"] == (1.0, 1.0) and "never" not in intervals
