"""Dropping all-padding columns from a micro-batch is exact and is what training does."""

import torch

from tether import PPOConfig, PPOTrainer
from tether.data import left_pad, right_pad
from tether.models import response_forward
from tether.rollout.types import Experience, padding_bounds


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
                       use_chat_template=False, value_model="head")
    trainer = PPOTrainer(config, model, tokenizer)
    prompts = ["hi", "yo", "a very much longer prompt than all the others", "ok"]
    responses = ["a", "b", "a long answer text", "c"]
    widths.clear()
    trainer.step(prompts, responses, [1.0, 0.0, 1.0, 0.0])
    full = max(widths)  # the long row: its prompt and response set the padded width
    assert widths.count(full) == 3  # scored by policy and reference, then trained once
    assert min(widths) <= 4  # "hi" + "a": 2 + 1 tokens (+ the final column)
