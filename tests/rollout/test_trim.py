"""Dropping all-padding columns from a micro-batch is exact and is what training does."""

import torch

from tether import PPOConfig, PPOTrainer
from tether.data import left_pad, right_pad
from tether.models import response_forward
from tether.rollout.types import Experience, padding_bounds, trim_padding_columns


def test_padding_bounds_by_hand():
    # prompt width 4 (left-padded), response width 3 (right-padded)
    attention = torch.tensor([[0, 0, 1, 1, 1, 1, 0],
                              [0, 1, 1, 1, 1, 0, 0]])
    response = attention[:, 4:].bool()
    assert padding_bounds(attention, response) == (1, 2)  # column 0 is padding in both rows; T' = 2
    full = torch.ones(2, 7, dtype=torch.long)
    assert padding_bounds(full, full[:, 4:].bool()) == (0, 3)
    # an all-padding prompt keeps its last column: it scores the first response token
    empty = torch.tensor([[0, 0, 0, 0, 1, 0, 0]])
    assert padding_bounds(empty, empty[:, 4:].bool()) == (3, 1)


def _experience(tokenizer, prompts, responses):
    p_ids, p_mask = left_pad([tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts],
                             tokenizer.pad_token_id)
    r_ids, r_mask = right_pad([tokenizer(r, add_special_tokens=False)["input_ids"] for r in responses],
                              tokenizer.pad_token_id)
    ids, mask = torch.cat([p_ids, r_ids], 1), torch.cat([p_mask, r_mask], 1).long()
    per_token = torch.arange(r_ids.numel(), dtype=torch.float).view_as(r_ids)
    return Experience(ids, mask, r_mask.bool(), per_token, per_token + 1, per_token + 2, per_token + 3, per_token + 4)


def test_trimmed_rows_score_the_same(model, tokenizer):
    exp = _experience(tokenizer, ["a long prompt here", "hi", "a prompt that is much longer than the rest", "mid"],
                      ["ok", "a longer answer", "x", "four"])
    # the rows without the longest prompt and the longest response: both sides can be cut
    rows = exp.select(torch.tensor([0, 3]))
    cut = rows.trimmed()
    assert cut.input_ids.shape[1] < rows.input_ids.shape[1]
    assert cut.response_len == rows.response_mask.sum(1).max() < exp.response_len
    for name in ("logprobs", "ref_logprobs", "values", "advantages", "returns"):
        torch.testing.assert_close(getattr(cut, name), getattr(rows, name)[:, : cut.response_len])
    full = response_forward(model, rows.input_ids, rows.attention_mask, rows.response_len, 0.7).logprobs
    short = response_forward(model, cut.input_ids, cut.attention_mask, cut.response_len, 0.7).logprobs
    valid = cut.response_mask
    torch.testing.assert_close(short[valid], full[:, : cut.response_len][valid], rtol=1e-5, atol=1e-5)


def test_training_forwards_skip_padding_columns(model, tokenizer):
    """One long row among short ones: micro-batches of one row each see only their own width."""
    widths = []
    model.register_forward_hook(lambda module, args, kwargs, out: widths.append(kwargs["input_ids"].shape[1]),
                                with_kwargs=True)
    config = PPOConfig(batch_size=4, mini_batch_size=1, ppo_epochs=1, max_new_tokens=8, learning_rate=1e-4,
                       use_chat_template=False, value_model="head", pad_to_multiple_of=1)
    trainer = PPOTrainer(config, model, tokenizer)
    prompts = ["hi", "yo", "a very much longer prompt than all the others", "ok"]
    responses = ["a", "b", "a long answer text", "c"]
    widths.clear()
    trainer.step(prompts, responses, [1.0, 0.0, 1.0, 0.0])
    full = max(widths)  # the long row: its prompt and response set the padded width
    assert widths.count(full) == 3  # scored by policy and reference, then trained once
    assert min(widths) <= 4  # "hi" + "a": 2 + 1 tokens (+ the final column)


# ------------------------------------------------------------------ widths rounded to a multiple


def test_widths_round_up_with_trailing_then_leading_then_new_columns():
    # prompt width 4, response width 3; trimmed: columns 1..5 (P' = 3, T' = 2, width 5)
    attention = torch.tensor([[0, 0, 1, 1, 1, 1, 0],
                              [0, 1, 1, 1, 1, 0, 0]])
    ids = torch.arange(14).view(2, 7) + 100
    response = attention[:, 4:].bool()
    cases = {  # multiple: (kept ids of row 0, response length, columns appended)
        1: (ids[0, 1:6], 2, 0),
        2: (ids[0, 1:7], 3, 0),  # width 6: the trailing column that exists
        7: (ids[0, 0:7], 3, 0),  # width 7: then the leading one
        4: (ids[0, 0:7], 4, 1),  # width 8: every existing column, then one new (id 0, mask 0)
        5: (ids[0, 1:6], 2, 0),  # already a multiple
    }
    for multiple, (row0, length, appended) in cases.items():
        cut_ids, cut_mask, t = trim_padding_columns(ids, attention, response, multiple)
        assert cut_ids.shape[1] % multiple == 0 and t == length, multiple
        torch.testing.assert_close(cut_ids[0, : cut_ids.shape[1] - appended], row0)
        assert (cut_ids[:, cut_ids.shape[1] - appended:] == 0).all()
        assert (cut_mask[:, cut_mask.shape[1] - appended:] == 0).all()
        # every real token kept, in place relative to the response start
        assert cut_mask.sum() == attention.sum()
        torch.testing.assert_close(cut_ids[:, -t:][:, :2], ids[:, 4:6])


def test_widened_rows_score_like_the_untrimmed_ones(model, tokenizer):
    """Rows widened to a multiple past their own width (new trailing columns included) give the same
    log-probs and values at every valid token, and per-token fields padded with zeros / False."""
    from tether.models import ValueHead

    exp = _experience(tokenizer, ["a long prompt here", "hi", "mid"], ["ok", "a longer answer", "four"])
    head = ValueHead(model.config.hidden_size)
    for multiple in (8, 64):
        wide = exp.trimmed(multiple)
        assert wide.input_ids.shape[1] % multiple == 0
        n = min(wide.response_len, exp.response_len)
        for name in ("response_mask", "logprobs", "ref_logprobs", "values", "advantages", "returns"):
            torch.testing.assert_close(getattr(wide, name)[:, :n], getattr(exp, name)[:, :n])
            assert not getattr(wide, name)[:, n:].any()
        full = response_forward(model, exp.input_ids, exp.attention_mask, exp.response_len, 0.7, head)
        padded = response_forward(model, wide.input_ids, wide.attention_mask, wide.response_len, 0.7, head)
        valid = exp.response_mask
        # float32 matmuls of different shapes: a few ulps of the model's activations
        for a, b in ((padded.logprobs, full.logprobs), (padded.values, full.values)):
            torch.testing.assert_close(a[:, :n][valid[:, :n]], b[valid], rtol=1e-5, atol=1e-5)


def test_encoder_decoder_rows_widened_score_the_same(tokenizer):
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    t5 = T5ForConditionalGeneration(T5Config(
        vocab_size=len(tokenizer), d_model=32, d_ff=64, d_kv=8, num_layers=2, num_heads=4,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id)).eval()
    exp = _experience(tokenizer, ["a long prompt here", "hi"], ["ok", "a longer answer"])
    wide = exp.trimmed(16)
    assert wide.response_len > exp.response_len  # new trailing columns were needed
    full = response_forward(t5, exp.input_ids, exp.attention_mask, exp.response_len, 1.0).logprobs
    padded = response_forward(t5, wide.input_ids, wide.attention_mask, wide.response_len, 1.0).logprobs
    valid = exp.response_mask
    torch.testing.assert_close(padded[:, : exp.response_len][valid], full[valid], rtol=1e-5, atol=1e-5)


def _trained(tokenizer, multiple, widths=None):
    from tiny import tiny_llama

    policy = tiny_llama(tokenizer)
    if widths is not None:
        policy.register_forward_hook(lambda m, a, kw, out: widths.append(kw["input_ids"].shape[1]), with_kwargs=True)
    config = PPOConfig(batch_size=4, mini_batch_size=2, ppo_epochs=2, max_new_tokens=8, learning_rate=1e-3,
                       use_chat_template=False, value_model="head", seed=0, pad_to_multiple_of=multiple)
    trainer = PPOTrainer(config, policy, tokenizer)
    prompts = ["hi", "yo there", "a very much longer prompt than all the others", "ok"]
    stats = [trainer.step(prompts, ["a", "bb b", "a long answer text", "c"], [1.0, 0.0, 1.0, 0.0]),
             trainer.step(prompts, ["no", "b", "x", "a somewhat long one"], [0.0, 1.0, 0.5, 0.0])]
    return trainer, stats


def test_rounded_widths_train_the_same_as_trimmed_ones(tokenizer):
    """pad_to_multiple_of changes shapes, not the update: statistics and parameters after two steps agree
    with the trimmed widths' within float32 rounding (different matmul shapes sum in different orders)."""
    widths = []
    wide, wide_stats = _trained(tokenizer, 16, widths)
    trimmed, trimmed_stats = _trained(tokenizer, 1)
    assert widths and all(w % 16 == 0 for w in widths)
    for key in ("objective/kl", "ppo/loss/total", "ppo/policy/approxkl", "ppo/val/vpred", "ppo/returns/mean"):
        for a, b in zip(wide_stats, trimmed_stats):
            assert abs(a[key] - b[key]) <= 1e-5 * max(1.0, abs(b[key])), key
    for (name, a), b in zip(wide.model.named_parameters(), trimmed.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_widths_are_rounded_by_default_only_where_oneDNN_keeps_a_primitive_per_shape(tokenizer):
    from tether.train.precision import Precision

    assert Precision("bf16-mixed", "cpu", "").width_multiple == 32
    assert Precision("fp32", "cpu", "").width_multiple == 1
    assert Precision("bf16-mixed", "cuda", "").width_multiple == 1
    from tiny import tiny_llama

    for precision, rounded in (("bf16-mixed", True), ("fp32", False)):
        widths = []
        policy = tiny_llama(tokenizer)
        policy.register_forward_hook(lambda m, a, kw, out: widths.append(kw["input_ids"].shape[1]), with_kwargs=True)
        config = PPOConfig(batch_size=4, mini_batch_size=1, ppo_epochs=1, max_new_tokens=8, use_chat_template=False,
                           value_model="head", precision=precision)
        trainer = PPOTrainer(config, policy, tokenizer)
        widths.clear()
        trainer.step(["hi", "yo", "a much longer prompt", "ok"], ["a", "b", "an answer", "c"], [1.0, 0.0, 1.0, 0.0])
        assert trainer.precision.mode == precision
        assert all(w % 32 == 0 for w in widths) == rounded, (precision, widths)
