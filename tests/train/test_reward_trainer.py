"""RewardTrainer on a tiny random reward model: it learns a clear preference, saves, reloads, normalises."""

import json
import random

import pytest
import torch

from tether.config import RewardConfig
from tether.rewards.model import NORMALIZATION_FILE, RewardModelScorer
from tether.train.reward import RewardTrainer
from tiny import tiny_reward_model

WORDS = ["sun", "tree", "road", "cup", "book", "rain", "door", "bird"]


def pairs(n, seed):
    """Chosen completions say 'great', rejected ones 'awful'; the rest is random filler."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        filler = " ".join(rng.choices(WORDS, k=3))
        rows.append({"prompt": f"about the {rng.choice(WORDS)}", "chosen": f"{filler} great",
                     "rejected": f"{filler} awful"})
    return rows


def trainer(tokenizer, train, eval_=None, **overrides):
    config = RewardConfig(**{"learning_rate": 3e-3, "batch_size": 8, "epochs": 6, "max_length": 64,
                             "warmup_ratio": 0.0, **overrides})
    return RewardTrainer(config, tiny_reward_model(tokenizer), tokenizer, train, eval_)


def test_reward_model_learns_a_clear_preference(tokenizer, tmp_path):
    t = trainer(tokenizer, pairs(64, 0), pairs(32, 1))
    before = t.evaluate()
    history = t.train(progress=False)
    after = history[-1]
    assert after["eval/accuracy"] >= 0.95
    assert after["eval/reward_gap"] > before["eval/reward_gap"] + 1.0
    assert history[-1]["train/loss"] < history[0]["train/loss"]


def test_saved_reward_model_loads_in_transformers_and_scores_normalised(tokenizer, tmp_path):
    from transformers import AutoModelForSequenceClassification

    t = trainer(tokenizer, pairs(32, 0), epochs=2)
    t.train(progress=False)
    prompts = ["a", "b", "c", "d", "e"]
    completions = ["sun great", "road awful", "cup", "book great great", "rain awful"]
    shift, scale = t.fit_normalization(prompts, completions)
    raw = t.score(prompts, completions)
    path = t.save_pretrained(tmp_path / "rm")
    reloaded = AutoModelForSequenceClassification.from_pretrained(path)
    assert reloaded.config.num_labels == 1
    assert json.loads((path / NORMALIZATION_FILE).read_text()) == {"shift": shift, "scale": scale}
    scorer = RewardModelScorer.from_pretrained(str(path))
    scores = torch.tensor(scorer(prompts, completions))
    assert scores == pytest.approx([(r - shift) / scale for r in raw], abs=1e-5)
    assert scores.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert scores.std().item() == pytest.approx(1.0, abs=1e-4)


def test_default_normalisation_uses_the_training_completions(tokenizer):
    t = trainer(tokenizer, pairs(16, 0), epochs=1)
    shift, scale = t.fit_normalization()
    rows = t.train_pairs
    raw = torch.tensor(t.score([p.prompt for p in rows] * 2, [p.chosen for p in rows] + [p.rejected for p in rows]))
    assert shift == pytest.approx(raw.mean().item(), abs=1e-5)
    assert scale == pytest.approx(raw.std().item(), rel=1e-4)


def test_margin_changes_the_loss(tokenizer):
    rows = pairs(8, 0)
    plain = trainer(tokenizer, rows)
    with_margin = trainer(tokenizer, [dict(r, margin=3.0) for r in rows])
    batch = plain.train_pairs
    a = plain._train_step(batch)["loss"]
    b = with_margin._train_step(with_margin.train_pairs)["loss"]
    assert b > a  # the same untrained model misses a 3-logit margin by more


def test_two_label_model_is_refused(tokenizer):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    model = LlamaForSequenceClassification(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16,
                                                       intermediate_size=32, num_hidden_layers=1,
                                                       num_attention_heads=2, num_labels=2))
    with pytest.raises(ValueError, match="num_labels=2; expected 1"):
        RewardTrainer(RewardConfig(), model, tokenizer, pairs(2, 0))


def test_over_long_pairs_are_counted(tokenizer, caplog):
    rows = pairs(4, 0)
    rows[2] = dict(rows[2], prompt="x" * 200)
    with caplog.at_level("WARNING"):
        trainer(tokenizer, rows)
    assert "1 training pair(s) exceed max_length=64" in caplog.text and "first: pair 2" in caplog.text


def test_over_long_pairs_are_named_by_file_and_line(tokenizer, tmp_path, caplog):
    rows = pairs(4, 0)
    rows[1] = dict(rows[1], chosen="y" * 300)
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with caplog.at_level("WARNING"):
        trainer(tokenizer, path)
    assert "first: " + str(path) + ":2" in caplog.text
