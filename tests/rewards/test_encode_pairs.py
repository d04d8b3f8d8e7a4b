"""encode_pairs: how a reward model sees (prompt, completion), in training and scoring alike."""


from tether.rewards.model import encode_pairs, has_pair_template


def bert_like_tokenizer():
    """A word-level tokenizer with a BERT pair template: [CLS] A [SEP] B [SEP]."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = [f"w{i}" for i in range(100)] + ["question", "answer", "preamble", "end"]
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]")


def words(n, start=0):
    return " ".join(f"w{(start + i) % 100}" for i in range(n))


def decoded(tokenizer, enc, row=0):
    ids = enc["input_ids"][row][enc["attention_mask"][row].bool()].tolist()
    return tokenizer.convert_ids_to_tokens(ids)


def test_pair_template_is_used_when_the_tokenizer_has_one():
    tok = bert_like_tokenizer()
    assert has_pair_template(tok)
    enc = encode_pairs(tok, ["question w1"], ["answer w2"], max_length=32)
    assert decoded(tok, enc) == ["[CLS]", "question", "w1", "[SEP]", "answer", "w2", "[SEP]"]


def test_without_a_pair_template_prompt_and_completion_are_separated(tokenizer):
    assert not has_pair_template(tokenizer)
    enc = encode_pairs(tokenizer, ["What is the capital?"], ["Paris"], max_length=64)
    assert tokenizer.decode(enc["input_ids"][0]) == "What is the capital?\nParis"


def test_truncation_drops_the_start_of_the_prompt_and_keeps_the_completion():
    tok = bert_like_tokenizer()
    prompt = "preamble " + words(40) + " question"
    completion = words(10, start=50) + " end"
    enc = encode_pairs(tok, [prompt, "question"], [completion, "answer"], max_length=24)
    tokens = decoded(tok, enc)
    assert len(tokens) == 24 == enc["input_ids"].shape[1]
    assert tokens[-13:] == ["[SEP]"] + completion.split() + ["[SEP]"]  # the whole completion
    assert tokens[:2] == ["[CLS]", "w31"] and tokens[-14] == "question"  # the end of the prompt
    assert tok.padding_side == "right"


def test_truncation_without_a_pair_template_and_the_shared_tokenizer_is_untouched(tokenizer):
    tokenizer.padding_side = "left"  # as the policy uses it
    prompt = "preamble " + words(40) + " question"
    completion = words(10, start=50) + " end"
    enc = encode_pairs(tokenizer, [prompt, "q"], [completion, "a"], max_length=64)
    assert enc["input_ids"].shape[1] == 64
    text = tokenizer.decode(enc["input_ids"][0])
    assert text.endswith(" question\n" + completion) and "preamble" not in text
    assert enc["attention_mask"][1].tolist()[:3] == [1, 1, 1]  # right padding for the classifier ...
    assert tokenizer.padding_side == "left"  # ... without changing the tokenizer the policy shares


def test_a_completion_longer_than_the_window_keeps_its_end_and_the_prompts_end():
    tok = bert_like_tokenizer()
    enc = encode_pairs(tok, ["preamble " + words(20) + " question"], [words(60) + " end"], max_length=27)
    tokens = decoded(tok, enc)
    assert len(tokens) <= 27 and tokens[-2:] == ["end", "[SEP]"]
    assert "question" in tokens and "preamble" not in tokens
    sep = tokens.index("[SEP]")
    assert sep - 1 == (27 - 3) // 4  # the prompt keeps a quarter of the room
