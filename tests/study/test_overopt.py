"""The over-optimisation study's best-of-n arm, shrunken to tiny models: every artefact, resumability, and the
pieces (label noise, curves) against hand-computed values."""

import json

import pytest
import torch

from tether.config import ConfigError
from tether.study.overopt import ProxySpec, bon_curves, noisy_subset, overopt_config, run_overopt
from tiny import save_tiny_models


def checksum_gold(prompts, completions):
    """A deterministic annotator with few ties on random-model text."""
    return [float(sum(map(ord, c)) % 11) for c in completions]


def test_defaults_follow_the_design_and_overrides_are_checked():
    config = overopt_config()
    assert config.heldout_prompts >= 64 and config.pool_samples >= 32
    assert [p.data_fraction for p in config.proxies] == [1.0, 0.25, 0.25] and config.proxies[2].label_noise == 0.25
    assert overopt_config(["rm.epochs=1"]).rm.learning_rate == config.rm.learning_rate  # the section's defaults kept
    with pytest.raises(ConfigError, match="did you mean 'pool_samples'"):
        overopt_config(["pool_sample=4"])
    with pytest.raises(ConfigError, match="pool_samples and samples_per_prompt must be >= 2"):
        overopt_config(["pool_samples=1"])


def test_a_quarter_of_the_prompts_with_a_quarter_of_the_labels_flipped():
    rows = [{"prompt": f"p{i}", "chosen": f"c{i}{j}", "rejected": f"r{i}{j}"} for i in range(8) for j in range(4)]
    subset = noisy_subset(rows, ProxySpec("q", 0.25, 0.25), seed=0)
    assert len({r["prompt"] for r in subset}) == 2 and len(subset) == 8  # whole prompts: 2 of 8, their 4 pairs
    flipped = [r for r in subset if r["chosen"].startswith("r")]
    assert len(flipped) == 2  # 25 % of 8
    assert noisy_subset(rows, ProxySpec("q", 0.25, 0.25), seed=0) == subset  # reproducible


def test_curves_are_zero_at_n_1_and_follow_the_proxy_ranking():
    proxy = torch.tensor([[0.0, 1.0, 2.0]])
    gold = torch.tensor([[0.0, 3.0, -3.0]])  # the proxy's favourite is gold's worst
    curves = bon_curves(proxy, gold)
    assert curves["gold"][0, 0] == 0 and curves["proxy"][0, 0] == 0
    # n = 3 picks sample 2: gold −3 − mean(0) = −3; proxy 2 − 1 = 1; n = 2: gold (3 − 3 − 3)/3 = −1
    assert curves["gold"][0].tolist() == pytest.approx([0.0, -1.0, -3.0])
    assert curves["proxy"][0].tolist() == pytest.approx([0.0, 2 / 3, 1.0])
    assert curves["d"][0] == 0


def test_the_best_of_n_arm_runs_end_to_end_and_resumes(tmp_path, model, tokenizer):
    save_tiny_models(tmp_path, model, tokenizer)
    out = tmp_path / "study"
    overrides = [f"policy.name_or_path={tmp_path / 'policy'}", "policy.lora.target_modules=[q_proj]",
                 f"reward_backbone={tmp_path / 'rm'}", "heldout_prompts=6", "pool_samples=4", "pair_prompts=8",
                 "samples_per_prompt=3", "rm.epochs=1", "rm.max_length=64", "gold_tie_margin=0",
                 "max_new_tokens=6", "sample_batch_size=5", "bootstrap_rounds=50"]
    summary = run_overopt(out, overrides, gold_fn=checksum_gold, stage="bon")
    assert set(summary["bon"]) == {"all", "quarter", "quarter-noise"} and summary["rl"] == {}
    for arm in summary["bon"].values():
        assert len(arm["gold"]["R"]) == 4 and arm["gold"]["R"][0] == 0 and len(arm["d"]) == 4
        assert all(low <= high for low, high in arm["gold"]["R_ci95"])
        assert 0 <= arm["proxy_accuracy"] <= 1 and arm["gold"]["alpha_ci95"][0] <= arm["gold"]["alpha_ci95"][1]
    assert json.loads((out / "summary.json").read_text()) == summary
    for name in ("config.yaml", "report.md", "bon.png", "pool/pairs.json", "bon/scores.json", "bon/samples.jsonl",
                 "proxies/all/study.json", "proxies/quarter-noise/config.json"):
        assert (out / name).exists(), name
    assert len((out / "bon/samples.jsonl").read_text().splitlines()) == 24  # 6 prompts x 4 samples
    # killed after part of the pool: the rerun keeps the done chunks and draws the same samples as before
    samples = (out / "bon/samples.jsonl").read_text().splitlines()
    (out / "bon/samples.jsonl").write_text("\n".join(samples[:10]) + "\n")  # two chunks of 5 were written
    (out / "bon/scores.json").unlink()
    (out / "summary.json").unlink()
    again = run_overopt(out, overrides, gold_fn=checksum_gold, stage="bon")
    assert (out / "bon/samples.jsonl").read_text().splitlines() == samples
    assert again["bon"]["all"]["gold"]["R"] == summary["bon"]["all"]["gold"]["R"]
    # a resumed study's time is the sum of its calls', not the last call's
    assert len(again["calls_seconds"]) == 2 and again["wall_seconds"] == pytest.approx(sum(again["calls_seconds"]), abs=0.2)


def test_the_rl_arms_run_end_to_end_and_a_killed_arm_ends_as_an_uninterrupted_one(tmp_path, model, tokenizer):
    save_tiny_models(tmp_path, model, tokenizer)
    out = tmp_path / "study"
    overrides = [f"policy.name_or_path={tmp_path / 'policy'}", "policy.lora.target_modules=[q_proj]",
                 f"reward_backbone={tmp_path / 'rm'}", "heldout_prompts=4", "pool_samples=3", "pair_prompts=8",
                 "samples_per_prompt=3", "rm.epochs=1", "rm.max_length=64", "gold_tie_margin=0",
                 "max_new_tokens=5", "sample_batch_size=8", "bootstrap_rounds=40", "proxies=[{name: all}, "
                 "{name: half, data_fraction: 0.5}]", "rl_proxies=[half]", "rl_iterations=3", "rl_eval_every=1",
                 "rl_eval_samples=2", "ppo.batch_size=4", "ppo.mini_batch_size=2"]
    summary = run_overopt(out, overrides, gold_fn=checksum_gold)
    assert summary["stage"] == "all" and set(summary["rl"]) == {"half"}
    arm = summary["rl"]["half"]
    assert arm["iteration"] == [1, 2, 3] and len(arm["d"]) == 3 and len(arm["gold"]["R"]) == 3
    assert [row["iteration"] for row in arm["train"]] == [1, 2, 3]  # the gold of every training batch
    assert all(d >= 0 for d in arm["d"]) and isinstance(arm["gold"]["falls"], bool)
    for name in ("rl.png", "rl/half/eval-3.json", "rl/half/metrics.jsonl", "rl/half/final"):
        assert (out / name).exists(), name
    report = (out / "report.md").read_text()
    assert "## RL (PPO, no KL penalty)" in report and "first two thirds" in report
    evaluation = json.loads((out / "rl/half/eval-3.json").read_text())
    assert len(evaluation["completion"]) == 8 and evaluation["prompt"] == [0, 0, 1, 1, 2, 2, 3, 3]
    # killed during iteration 3: its checkpoint and evaluation are gone; the rerun resumes from iteration 2
    # (data order, RNG streams, optimiser) and draws the same evaluation samples
    import shutil

    (out / "rl/half/eval-3.json").unlink()
    for checkpoint in (out / "rl/half/checkpoints").glob("step-000003"):
        shutil.rmtree(checkpoint)
    assert any((out / "rl/half/checkpoints").glob("step-000002"))
    again = run_overopt(out, overrides, gold_fn=checksum_gold)
    assert json.loads((out / "rl/half/eval-3.json").read_text()) == evaluation
    assert again["rl"]["half"]["gold"]["R"] == arm["gold"]["R"]
    # the same directory with other prompts refuses instead of mixing caches
    with pytest.raises(ConfigError, match="other prompts or sampling options"):
        run_overopt(out, overrides + ["heldout_prompts=5"], gold_fn=checksum_gold)
