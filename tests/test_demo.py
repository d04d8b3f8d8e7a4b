"""The demo pipeline end to end, shrunken: tiny policy, tiny reward model, two PPO iterations."""

import json

import pytest

from tether.config import ConfigError
from tether.demo import demo_config, gold_pairs, run_demo
from tiny import save_tiny_models


def test_demo_defaults_are_the_packaged_models_and_valid():
    config = demo_config()
    assert config.policy.name_or_path == "smollm2-135m-instruct"
    assert config.reward_backbone == "all-minilm-l6-v2" and config.gold == "sentiment"
    assert config.ppo.batch_size % config.ppo.backward_batch_size == 0
    assert demo_config(["ppo.learning_rate=3e-5", "rm.epochs=1"]).ppo.learning_rate == 3e-5


def test_demo_split_evaluates_128_held_out_prompts_and_fills_every_batch():
    from tether.data.prompts import load_prompts

    config = demo_config()
    prompts = load_prompts(config.prompts)
    assert config.heldout_prompts >= 128
    train = len(prompts) - config.heldout_prompts
    assert train >= config.pair_prompts and train % config.ppo.batch_size == 0  # no prompt skipped by PPO
    assert train // config.ppo.batch_size >= config.iterations


def test_demo_overrides_are_checked():
    with pytest.raises(ConfigError, match="did you mean 'iterations'"):
        demo_config(["iteration=3"])
    with pytest.raises(ConfigError, match="samples_per_prompt must be >= 2"):
        demo_config(["samples_per_prompt=1"])


def test_gold_pairs_rank_every_untied_pair_of_a_prompt():
    rows = gold_pairs(["p", "q"], [["a", "b", "c"], ["x", "y", "z"]], [[0.5, 0.1, 0.5], [0.0, 0.0, 0.0]])
    assert [(r["chosen"], r["rejected"]) for r in rows] == [("a", "b"), ("c", "b")]  # a-c tie, q all ties
    rows = gold_pairs(["p"], [["a", "b", "c"]], [[0.5, 0.47, 0.1]], tie_margin=0.05)
    assert [(r["chosen"], r["rejected"]) for r in rows] == [("a", "c"), ("b", "c")]  # a-b within the margin


def test_paired_interval_of_a_known_change():
    from tether.demo import paired_interval

    before = [0.0, 1.0, 2.0, 3.0] * 10
    assert paired_interval(before, [b + 0.5 for b in before]) == pytest.approx((0.5, 0.5))  # every pair +0.5
    low, high = paired_interval(before, [b + (1.0 if i % 2 else 0.0) for i, b in enumerate(before)])
    assert low < 0.5 < high and 0.3 < low and high < 0.7  # half the prompts +1: mean 0.5, sd 0.5, n = 40


def checksum_gold(prompts, completions):
    """A deterministic annotator with few ties on random-model text."""
    return [float(sum(map(ord, c)) % 11) for c in completions]


def test_demo_runs_end_to_end_on_tiny_models(tmp_path, model, tokenizer, caplog):
    import logging
    import warnings

    save_tiny_models(tmp_path, model, tokenizer)
    out = tmp_path / "run"
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        summary = run_demo(out, [f"policy.name_or_path={tmp_path / 'policy'}", "policy.lora.target_modules=[q_proj]",
                                 f"reward_backbone={tmp_path / 'rm'}", "heldout_prompts=4", "pair_prompts=8",
                                 "samples_per_prompt=3", "rm.epochs=1", "rm.max_length=256", "gold_tie_margin=0", "iterations=2",
                                 "ppo.batch_size=4", "ppo.mini_batch_size=2", "ppo.max_new_tokens=8",
                                 "sample_batch_size=8"], gold_fn=checksum_gold)
    # the default run shows no warning a user cannot act on: none from tether, none from the libraries below it
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert [f"{w.category.__name__}: {w.message}" for w in caught] == []
    low, high = summary["gold_change_ci95"]
    assert low <= summary["gold_change"] <= high
    assert summary["gold_change"] == pytest.approx(summary["gold_score_trained"] - summary["gold_score_base"], abs=2e-4)
    for key in ("rm_accuracy", "gold_win_rate", "gold_score_base", "gold_score_trained", "kl", "wall_seconds",
                "peak_rss_mib"):
        assert isinstance(summary[key], float), key
    assert 0 <= summary["rm_accuracy"] <= 1 and 0 <= summary["gold_win_rate"] <= 1
    assert summary["iterations"] == 2 and summary["kl"] == summary["kl"]  # finite, not NaN
    assert summary["precision"] in ("fp32", "bf16-mixed") and "cores" in summary["hardware"]  # what the figures ran on
    assert json.loads((out / "summary.json").read_text()) == summary
    for name in ("config.yaml", "metrics.jsonl", "curves.png", "report.md", "final/adapter_config.json",
                 "reward_model/config.json", "reward_model/tether_reward_normalization.json",
                 "preferences/train.jsonl", "preferences/eval.jsonl", "heldout_samples.jsonl"):
        assert (out / name).exists(), name
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pairs = [json.loads(line) for line in (out / "preferences/train.jsonl").read_text().splitlines()]
    assert all(p["gold_chosen"] > p["gold_rejected"] for p in pairs)
    assert summary["rm_pairs_train"] == len(pairs)
    report = (out / "report.md").read_text()
    assert "| gold win rate, trained vs base |" in report and "![reward, gold score and KL" in report
    assert len([json.loads(x) for x in (out / "gold_curve.jsonl").read_text().splitlines()]) == 2
