"""`tether eval`: reward, win rate, KL to a baseline, lengths and a sample table."""

import json

import pytest

from tether.cli import main
from tether.evaluation import EvalSettings, evaluate
from tiny import tiny_llama

PROMPTS = ["hello there", "abc", "what is up", "zz top", "one more", "last one"]


def length(prompts, completions):
    return [float(len(c)) for c in completions]


def test_evaluate_against_itself_and_another_model(model, tokenizer):
    settings = EvalSettings(max_new_tokens=6, batch_size=4, temperature=1.0)
    same = evaluate(model, tokenizer, PROMPTS, length, baseline=model, settings=settings)["summary"]
    assert same["kl_to_baseline"] == 0.0  # identical models: log-ratio exactly 0
    assert same["win_rate"] == 0.5 and same["reward_mean"] == same["baseline_reward_mean"]  # same seed, same samples

    other = tiny_llama(tokenizer, seed=7)
    result = evaluate(model, tokenizer, PROMPTS, length, baseline=other, settings=settings)
    rows, s = result["rows"], result["summary"]
    assert len(rows) == len(PROMPTS) and s["prompts"] == len(PROMPTS)
    wins = [1.0 if r["reward"] > r["baseline_reward"] else 0.5 if r["reward"] == r["baseline_reward"] else 0.0
            for r in rows]
    assert s["win_rate"] == pytest.approx(sum(wins) / len(wins))
    assert s["reward_mean"] == pytest.approx(sum(len(r["completion"]) for r in rows) / len(rows))
    assert s["kl_to_baseline"] == pytest.approx(sum(r["kl"] for r in rows) / len(rows))
    assert s["kl_to_baseline"] != 0.0
    assert 1 <= s["response_tokens_mean"] <= 6


def test_eval_command_writes_json_and_markdown(tmp_path, model, tokenizer, capsys):
    model.save_pretrained(tmp_path / "a")
    tokenizer.save_pretrained(tmp_path / "a")
    tiny_llama(tokenizer, seed=5).save_pretrained(tmp_path / "b")
    tokenizer.save_pretrained(tmp_path / "b")
    prompts = tmp_path / "heldout.csv"
    prompts.write_text("prompt,source\n" + "\n".join(f"question {i},test" for i in range(5)) + "\n")
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(tmp_path / "a"), "--baseline", str(tmp_path / "b"), "--reward", "length",
                 "--reward-arg", "target_words=2", "--prompts", str(prompts), "--max-new-tokens", "5",
                 "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["prompts"] == 5 and 0.0 <= printed["win_rate"] <= 1.0 and "kl_to_baseline" in printed
    assert json.loads((out / "eval.json").read_text())["summary"] == {k: v for k, v in printed.items() if k != "written"}
    assert "| prompt | completion | reward | baseline completion |" in (out / "eval.md").read_text()
    assert main(["eval", "--model", str(tmp_path / "a"), "--prompts", str(prompts)]) == 2  # no reward given


def test_win_rate_interval_is_the_wilson_interval():
    from tether.evaluation import win_rate_interval

    # 31 wins of 48: p = 0.6458; by hand, z = 1.96: centre (p + z²/2n) / (1 + z²/n) = 0.6352,
    # half-width z·sqrt(p(1-p)/n + z²/4n²) / (1 + z²/n) = 0.1306
    low, high = win_rate_interval([1.0] * 31 + [0.0] * 17)
    assert (low, high) == pytest.approx((0.5045, 0.7658), abs=2e-4)
    assert win_rate_interval([1.0] * 10)[1] == 1.0 and win_rate_interval([1.0] * 10)[0] > 0.69
    assert win_rate_interval([0.5] * 4) == pytest.approx((0.15, 0.85), abs=1e-3)  # ties: p = ½, half-width 0.350
