import pytest
import torch

from tether.rewards import RewardError, RewardModelScorer, call_reward, make_rule


def test_rules():
    assert make_rule("keyword", {"words": ["happy"]})([None] * 2, ["Happy happy joy", "sad"]) == [2.0, 0.0]
    assert make_rule("length", {"target_words": 2})([None], ["one two three"]) == [-0.5]
    with pytest.raises(ValueError, match="unknown rule 'nope'"):
        make_rule("nope")


def test_reward_function_faults_are_named():
    def boom(prompts, completions):
        raise KeyError("x")

    with pytest.raises(RewardError, match="boom raised KeyError"):
        call_reward(boom, ["p"], ["c"])
    with pytest.raises(RewardError, match="returned 1 scores for 2 responses"):
        call_reward(lambda p, c: [1.0], ["p", "q"], ["c", "d"])
    assert call_reward(lambda p, c: torch.tensor([1.0, 2.0]), ["p", "q"], ["c", "d"]).tolist() == [1.0, 2.0]


def test_reward_model_with_its_own_tokenizer_scores_text(tokenizer):
    """The reward model's vocabulary differs from the policy's: it must receive re-tokenised text."""
    from tiny import tiny_reward_model, tiny_tokenizer

    rm_tokenizer = tiny_tokenizer(chat_template=False)
    rm = tiny_reward_model(rm_tokenizer)
    scorer = RewardModelScorer(rm, rm_tokenizer, shift=1.0, scale=2.0)
    scores = scorer(["prompt one", [{"role": "user", "content": "two"}]], ["answer", "another answer"])
    enc = rm_tokenizer("prompt one\nanswer", return_tensors="pt")  # no pair template: joined by a newline
    expected = (rm(**enc).logits[0, 0].item() - 1.0) / 2.0
    assert scores[0] == pytest.approx(expected, rel=1e-5)


def test_reward_model_must_have_one_label(tokenizer):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    rm = LlamaForSequenceClassification(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                                    num_hidden_layers=1, num_attention_heads=2, num_labels=2,
                                                    pad_token_id=tokenizer.pad_token_id))
    with pytest.raises(ValueError, match="num_labels=2"):
        RewardModelScorer(rm, tokenizer)


def test_sentiment_rule_scores_vader_compound():
    from tether.rewards import make_rule

    scores = make_rule("sentiment")(["p"] * 3, ["What a wonderful, happy day!", "The table is brown.",
                                                 "This is terrible and I hate it."])
    assert scores[0] > 0.5 and scores[1] == 0.0 and scores[2] < -0.5


@pytest.mark.parametrize("mean, std, warns", [
    (190.0, 50.0, True),    # len(r): a large offset, a small spread
    (-5.0, 1.0, True),      # negative offsets too
    (0.1, 0.25, False),     # centred scores
    (3.0, 2.0, False),      # 3 <= 2 * 2: the spread is large enough
    (0.9, 0.01, False),     # |mean| <= 1: small scores never warn
])
def test_offset_scores_hint(mean, std, warns):
    from tether.rewards.base import offset_scores_hint

    hint = offset_scores_hint(mean, std)
    assert (hint is not None) == warns
    if warns:
        assert "whiten_scores=True" in hint and f"{mean:.4g}" in hint
