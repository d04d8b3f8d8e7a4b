"""The RL arms' arithmetic against hand-computed values: evaluation points, per-prompt re-centring, d from the
KL, the RL law's fit, the paired verdict on a fall, and the gold log's resume rule."""

import json
import math

import pytest
import torch

from tether.config import ConfigError
from tether.study.overopt import DEFAULT_MINUTES, overopt_config, scaled_sizes
from tether.study.rl_arm import GoldLog, analyse_rl, eval_points, per_prompt_means


def test_evaluation_points_are_the_checkpoint_cadence():
    assert eval_points(30, 6) == [6, 12, 18, 24, 30]
    assert eval_points(2, 1) == [1, 2]
    for bad in ((10, 6), (0, 1), (4, 0)):
        with pytest.raises(ValueError, match="multiple of rl_eval_every"):
            eval_points(*bad)
    with pytest.raises(ConfigError, match="multiple of rl_eval_every"):
        overopt_config(["rl_iterations=10"])
    with pytest.raises(ConfigError, match="not among the proxies"):
        overopt_config(["rl_proxies=[everything]"])


def test_per_prompt_means():
    means = per_prompt_means([1.0, 3.0, 10.0, 20.0, 30.0], [0, 0, 1, 1, 1], 2)
    assert means.tolist() == [2.0, 20.0]


def _point(iteration, gold, proxy, kl):
    """Two prompts, two samples each: per-sample lists from per-prompt [a, b] pairs."""
    return {"iteration": iteration, "prompt": [0, 0, 1, 1], "gold": gold, "proxy": proxy, "kl": kl}


def test_recentred_scores_d_and_a_paired_fall():
    base_gold, base_proxy = torch.tensor([1.0, -1.0], dtype=torch.float64), torch.tensor([0.0, 0.0], dtype=torch.float64)
    points = [
        _point(5, [1.5, 1.5, -0.5, -0.5], [1, 1, 1, 1], [1.0, 1.0, 1.0, 1.0]),   # gold +0.5 on both prompts, KL 1
        _point(10, [1.2, 1.2, -0.8, -0.8], [2, 2, 2, 2], [4.0, 4.0, 3.0, 5.0]),  # gold +0.2, KL 4
        _point(15, [0.9, 1.1, -1.0, -1.0], [3, 3, 3, 3], [9.0, 9.0, 9.0, 9.0]),  # gold 0 and 0, KL 9
    ]
    arm = analyse_rl(points, base_gold, base_proxy, rounds=200)
    assert arm["d"] == pytest.approx([1.0, 2.0, 3.0])
    assert arm["gold"]["R"] == pytest.approx([0.5, 0.2, 0.0])
    assert arm["proxy"]["R"] == pytest.approx([1.0, 2.0, 3.0])
    assert arm["gold"]["best_iteration"] == 5
    assert arm["gold"]["last_minus_best"] == pytest.approx(-0.5)
    # every prompt fell by exactly 0.5: the paired interval is [−0.5, −0.5], below 0
    assert arm["gold"]["last_minus_best_ci95"] == pytest.approx([-0.5, -0.5]) and arm["gold"]["falls"]
    assert all(low <= r <= high for r, (low, high) in zip(arm["gold"]["R"], arm["gold"]["R_ci95"]))


def test_no_fall_when_gold_is_best_at_the_end_or_the_drop_is_noise():
    base = torch.zeros(2, dtype=torch.float64)
    rising = [_point(i, [0.1 * i] * 4, [0.1 * i] * 4, [float(i)] * 4) for i in (1, 2, 3)]
    assert not analyse_rl(rising, base, base, rounds=100)["gold"]["falls"]
    # one prompt falls, the other rises as much: no paired evidence of a fall
    noisy = [_point(1, [0.5, 0.5, 0.5, 0.5], [0] * 4, [1.0] * 4), _point(2, [0.0, 0.0, 0.9, 0.9], [0] * 4, [2.0] * 4)]
    arm = analyse_rl(noisy, base, base, rounds=300)
    assert arm["gold"]["best_iteration"] == 1 and arm["gold"]["last_minus_best_ci95"][1] > 0
    assert not arm["gold"]["falls"]


def test_the_rl_law_is_recovered_from_points_on_it():
    alpha, beta = 1.0, 0.5
    ds = [0.5, 1.0, 2.0, 3.0]
    base = torch.zeros(2, dtype=torch.float64)
    points = [_point(i, [d * (alpha - beta * math.log(d))] * 4, [d] * 4, [d * d] * 4) for i, d in enumerate(ds, 1)]
    arm = analyse_rl(points, base, base, rounds=50)
    assert arm["gold"]["alpha"] == pytest.approx(alpha) and arm["gold"]["beta"] == pytest.approx(beta)
    assert arm["gold"]["d_star"] == pytest.approx(math.exp(alpha / beta - 1))  # e: where d(α − β ln d) peaks
    assert arm["gold"]["r_squared"] == pytest.approx(1.0)


def test_the_law_fitted_on_the_first_two_thirds_is_checked_on_the_last_third():
    alpha, beta = 1.0, 0.5
    ds = [0.5, 1.0, 1.5, 2.0, 3.0, 4.0]   # iterations 1..6: the fit sees 1..4 (<= 2/3 of 6), predicts 5 and 6
    base = torch.zeros(2, dtype=torch.float64)
    on_law = [_point(i, [d * (alpha - beta * math.log(d))] * 4, [d] * 4, [d * d] * 4) for i, d in enumerate(ds, 1)]
    check = analyse_rl(on_law, base, base, rounds=50)["gold"]["extrapolation"]
    assert check["fit_iterations"] == [1, 2, 3, 4] and [r["iteration"] for r in check["later"]] == [5, 6]
    assert check["alpha"] == pytest.approx(alpha) and check["beta"] == pytest.approx(beta)
    assert check["later"][1]["predicted"] == pytest.approx(4 * (1 - 0.5 * math.log(4)))  # 1.2274
    assert check["holds"]
    # the last point falls 1.0 below the law on every prompt: the prediction misses it
    off = on_law[:5] + [_point(6, [4 * (1 - 0.5 * math.log(4)) - 1.0] * 4, [4.0] * 4, [16.0] * 4)]
    check = analyse_rl(off, base, base, rounds=50)["gold"]["extrapolation"]
    assert check["later"][1]["residual_ci95"] == pytest.approx([-1.0, -1.0]) and not check["holds"]


def test_a_negative_kl_estimate_counts_as_d_0():
    base = torch.zeros(1, dtype=torch.float64)
    points = [{"iteration": 1, "prompt": [0], "gold": [0.1], "proxy": [0.1], "kl": [-0.02]},
              {"iteration": 2, "prompt": [0], "gold": [0.2], "proxy": [0.2], "kl": [1.0]}]
    arm = analyse_rl(points, base, base, rounds=10)
    assert arm["d"] == [0.0, 1.0] and "alpha" not in arm["gold"]  # one point with d > 0: no fit


def test_gold_log_keeps_the_last_row_of_each_iteration(tmp_path):
    class Trainer:
        iteration = 0

    trainer = Trainer()
    log = GoldLog(lambda p, c: [1.0] * len(c), lambda p, c: [float(len(x)) for x in c], tmp_path / "g.jsonl", trainer)
    assert log(["p", "q"], ["ab", "abcd"]) == [1.0, 1.0]
    trainer.iteration = 1
    log(["p"], ["a"])
    trainer.iteration = 0  # resumed from iteration 0: iteration 1 is written again
    log(["p"], ["abcdef"])
    rows = GoldLog.read(tmp_path / "g.jsonl", 5)
    assert [(r["iteration"], r["gold"]) for r in rows] == [(1, 6.0), (2, 1.0)]
    assert GoldLog.read(tmp_path / "g.jsonl", 1) == rows[:1]


def test_minutes_scale_the_sizes():
    assert overopt_config(minutes=DEFAULT_MINUTES) == overopt_config()
    small = overopt_config(minutes=15)
    assert small.heldout_prompts == 16 and small.pair_prompts == 48
    assert small.rl_iterations % small.rl_eval_every == 0 and len(eval_points(small.rl_iterations, small.rl_eval_every)) >= 3
    assert small.rl_iterations < overopt_config().rl_iterations
    big = overopt_config(minutes=120)
    assert big.rl_iterations == 60 and big.heldout_prompts == 128
    assert overopt_config(["heldout_prompts=20"], minutes=15).heldout_prompts == 20  # overrides win
    with pytest.raises(ConfigError, match="--minutes must be > 0"):
        scaled_sizes(0)


def test_bon_verdict_names_each_side_of_zero():
    from tether.study.report import _bon_verdict

    assert _bon_verdict([0.002, 0.1]) == "gold bends (β > 0)"
    assert _bon_verdict([-0.03, 0.08]).startswith("no curvature")
    assert _bon_verdict([-0.12, -0.005]).startswith("no bend: β < 0")
