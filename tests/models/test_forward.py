"""The scoring forward agrees with the model's own generation, under left padding and temperature."""

import pytest
import torch

from tether.data import left_pad
from tether.models import position_ids_from_mask, response_forward
from tether.rollout import HFEngine, SamplingParams


def test_position_ids_count_from_first_real_token():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]


def test_logprobs_do_not_depend_on_left_padding(model, tokenizer):
    ids = tokenizer("hello world", add_special_tokens=False)["input_ids"]
    other = tokenizer("a much longer prompt than the first one", add_special_tokens=False)["input_ids"]
    alone_ids, alone_mask = left_pad([ids], tokenizer.pad_token_id)
    padded_ids, padded_mask = left_pad([ids, other], tokenizer.pad_token_id)
    # score the last 4 tokens of "hello world" as if they were the response
    alone = response_forward(model, alone_ids, alone_mask.long(), 4, temperature=1.0).logprobs
    padded = response_forward(model, padded_ids, padded_mask.long(), 4, temperature=1.0).logprobs
    torch.testing.assert_close(padded[0], alone[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_match_generate_scores(model, tokenizer, temperature):
    """Parity with HF: logprobs of the sampled tokens under generate's own logits (KV cache, left pad)."""
    from transformers import GenerationConfig

    prompts = [tokenizer("hi", add_special_tokens=False)["input_ids"],
               tokenizer("a longer prompt", add_special_tokens=False)["input_ids"]]
    ids, mask = left_pad(prompts, tokenizer.pad_token_id)
    torch.manual_seed(0)
    config = GenerationConfig(do_sample=True, temperature=temperature, top_k=0, top_p=1.0, max_new_tokens=6,
                              pad_token_id=tokenizer.pad_token_id, eos_token_id=None)
    out = model.generate(input_ids=ids, attention_mask=mask.long(), generation_config=config,
                         output_logits=True, return_dict_in_generate=True)
    response = out.sequences[:, ids.shape[1]:]
    hf = (torch.stack(out.logits, dim=1) / temperature).log_softmax(-1).gather(-1, response.unsqueeze(-1)).squeeze(-1)
    full_mask = torch.cat([mask, torch.ones_like(response, dtype=torch.bool)], 1).long()
    ours = response_forward(model, out.sequences, full_mask, response.shape[1], temperature).logprobs
    torch.testing.assert_close(ours, hf, rtol=1e-4, atol=1e-4)


def test_temperature_divides_logits(model, tokenizer):
    ids = torch.tensor([tokenizer("temperature", add_special_tokens=False)["input_ids"]])
    mask = torch.ones_like(ids)
    cold = response_forward(model, ids, mask, 3, temperature=0.5).logprobs
    logits = model(input_ids=ids).logits[:, -4:-1] / 0.5
    expected = logits.log_softmax(-1).gather(-1, ids[:, -3:].unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(cold, expected, rtol=1e-5, atol=1e-5)


def test_engine_uses_pure_sampling_not_model_defaults(model, tokenizer):
    """The model's generation_config (top_k=50 by default in HF) must not filter PPO's samples."""
    model.generation_config.top_k = 1  # would make sampling greedy if it leaked through
    ids, mask = left_pad([[5, 6, 7]] * 16, tokenizer.pad_token_id)
    torch.manual_seed(0)
    rollout = HFEngine(model).generate(ids, mask, SamplingParams(max_new_tokens=3, temperature=1.0,
                                                                 pad_token_id=tokenizer.pad_token_id))
    assert len({tuple(r.tolist()) for r in rollout.response_ids}) > 1


def test_dropout_is_off_in_scoring(tokenizer):
    from tiny import tiny_llama

    model = tiny_llama(tokenizer, attention_dropout=0.5)
    model.train()  # even if a user leaves it in train mode, PPOTrainer puts it in eval
    from tether import PPOConfig, PPOTrainer

    trainer = PPOTrainer(PPOConfig(batch_size=2), model, tokenizer)
    ids = torch.tensor([[5, 6, 7, 8]])
    a = response_forward(trainer.policy, ids, torch.ones_like(ids), 2, 1.0).logprobs
    b = response_forward(trainer.policy, ids, torch.ones_like(ids), 2, 1.0).logprobs
    assert torch.equal(a, b)


def test_bf16_logits_are_upcast_before_the_temperature_division(model, tokenizer):
    """Dividing bf16 logits by T in bf16 rounds every logit (~0.4 % relative): the logprobs must be
    those of float32(logits) / T, to float32 rounding of the log-softmax."""
    from tether.algo import logprobs_from_logits

    model = model.to(torch.bfloat16)
    with torch.no_grad():
        model.lm_head.weight.mul_(40)  # logits of a trained model's size (tens), where bf16 rounding shows
    ids = torch.tensor([tokenizer("a prompt and its response", add_special_tokens=False)["input_ids"]])
    mask = torch.ones_like(ids)
    got = response_forward(model, ids, mask, 8, temperature=0.7).logprobs
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits[:, -9:-1]
    upcast_first = logprobs_from_logits(logits.float() / 0.7, ids[:, -8:])
    divided_in_bf16 = logprobs_from_logits(logits / 0.7, ids[:, -8:])
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, upcast_first, rtol=0, atol=1e-4)
    assert (divided_in_bf16 - upcast_first).abs().max() > 1e-3  # the check can tell the two apart


def test_chunked_logprobs_and_entropy_equal_the_whole_batch(monkeypatch):
    import tether.models.forward as forward
    from tether.algo import entropy_from_logits, logprobs_from_logits

    torch.manual_seed(0)
    logits = torch.randn(5, 7, 300)
    tokens = torch.randint(0, 300, (5, 7))
    whole_lp = logprobs_from_logits(logits.float() / 0.8, tokens)
    whole_h = entropy_from_logits(logits.float() / 0.8)
    monkeypatch.setattr(forward, "CHUNK_ELEMENTS", 2 * 7 * 300)  # two rows at a time: chunks 2, 2, 1
    lp, h = forward.token_logprobs(logits, tokens, 0.8, with_entropy=True)
    torch.testing.assert_close(lp, whole_lp, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(h, whole_h, rtol=1e-6, atol=1e-6)


def test_lm_head_is_one_matmul_for_a_bf16_model():
    """The kept hidden states reach the LM head as a contiguous [B·T, H] block: a sliced view made
    torch's matmul fall back to a batched matmul over B copies of the [H, V] weight (2.4x slower
    for SmolLM2 in bf16 on CPU). The log-probs are those of the model's full logits."""
    from torch.profiler import profile

    from tiny import tiny_llama, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    model = tiny_llama(tokenizer).to(torch.bfloat16).requires_grad_(False)  # as the frozen reference is
    ids = torch.randint(3, len(tokenizer), (3, 12))
    mask = torch.ones_like(ids, dtype=torch.bool)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16), profile(record_shapes=True) as prof:
        out = response_forward(model, ids, mask, 5, 1.0)  # as the trainer scores under bf16-mixed
    lm_head = [e for e in prof.events() if e.name in ("aten::bmm", "aten::mm")
               and e.input_shapes and e.input_shapes[-1][-1] == len(tokenizer)]
    assert lm_head and all(e.name == "aten::mm" for e in lm_head)
    with torch.no_grad():
        full = model(input_ids=ids).logits[:, -6:-1].float()
    torch.testing.assert_close(out.logprobs, torch.log_softmax(full, -1).gather(-1, ids[:, -5:, None])[..., 0],
                               rtol=0, atol=0.02)  # bf16 logits; positions from the same mask


def test_left_padded_logprobs_of_a_gpt2_equal_its_own_unpadded_forward(tokenizer):
    """GPT-2 has learned absolute positions (RoPE models hide a missing position_ids): the scoring
    forward of a left-padded row equals GPT-2's own forward of the unpadded sequence."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)).eval()
    short = tokenizer("hello world", add_special_tokens=False)["input_ids"]
    longer = tokenizer("a much longer prompt than the first one", add_special_tokens=False)["input_ids"]
    ids, mask = left_pad([short, longer], tokenizer.pad_token_id)
    with torch.no_grad():
        padded = response_forward(gpt2, ids, mask.long(), 4, temperature=1.0).logprobs
        logits = gpt2(torch.tensor([short])).logits[0, -5:-1]
    expected = torch.log_softmax(logits, -1).gather(-1, torch.tensor(short[-4:])[:, None]).squeeze(-1)
    torch.testing.assert_close(padded[0], expected, rtol=1e-5, atol=1e-5)
