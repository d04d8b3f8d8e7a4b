"""HFEngine samples from softmax(z / T) alone: nothing from the checkpoint's generation_config."""

import copy

import torch
from transformers import GenerationConfig

from tether.rollout import HFEngine, SamplingParams


def _sample(model, tokenizer, seed: int = 0):
    prompts = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in ("ab", "hello", "xyz", "q")] * 4
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts]).bool()
    params = SamplingParams(max_new_tokens=48, temperature=1.0, eos_token_ids=[tokenizer.eos_token_id],
                            pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    return HFEngine(model).generate(ids, mask, params)


def _repeats(rollout) -> int:
    """Tokens equal to an earlier token of the same response (0 under no_repeat_ngram_size=1)."""
    total = 0
    for row, m in zip(rollout.response_ids, rollout.response_mask):
        tokens = row[m].tolist()
        total += len(tokens) - len(set(tokens))
    return total


def test_checkpoint_generation_settings_do_not_change_the_samples(model, tokenizer):
    plain = copy.deepcopy(model)
    plain.generation_config = GenerationConfig()
    shipped = GenerationConfig(no_repeat_ngram_size=1, repetition_penalty=3.0, min_p=0.3, typical_p=0.5,
                               top_k=5, top_p=0.5, temperature=0.1, bad_words_ids=[[65], [66]],
                               suppress_tokens=list(range(97, 123)), max_new_tokens=3)
    model.generation_config = shipped
    reference = _sample(plain, tokenizer)
    got = _sample(model, tokenizer)
    assert _repeats(reference) > 0  # the random model repeats tokens when sampled purely
    assert torch.equal(got.response_ids, reference.response_ids)
    assert got.temperature == 1.0
    assert model.generation_config is shipped  # restored afterwards


def test_peft_wrapped_model_ignores_the_base_models_generation_config(model, tokenizer):
    from tether import LoraSettings
    from tether.models import apply_lora

    plain = apply_lora(copy.deepcopy(model), LoraSettings(r=2, alpha=4, target_modules=["q_proj"]))
    plain.get_base_model().generation_config = GenerationConfig()
    wrapped = apply_lora(model, LoraSettings(r=2, alpha=4, target_modules=["q_proj"]))
    wrapped.get_base_model().generation_config = GenerationConfig(no_repeat_ngram_size=1, repetition_penalty=5.0)
    wrapped.load_state_dict(plain.state_dict())
    assert torch.equal(_sample(wrapped, tokenizer).response_ids, _sample(plain, tokenizer).response_ids)


def _head_inputs_while_sampling(model, tokenizer):
    """(shape, contiguous) of every input the LM head's own forward received during a sampling."""
    head = model.get_output_embeddings()
    seen, forward = [], head.forward

    def recording(x):
        seen.append((tuple(x.shape), x.is_contiguous()))
        return forward(x)

    head.forward = recording
    try:
        rollout = _sample(model, tokenizer)
    finally:
        del head.forward
    return seen, rollout


def test_the_lm_head_gets_contiguous_rows_in_the_prefill(model, tokenizer):
    # a bf16 model's prefill hands the head hidden[:, -1:, :] (batch stride L·H): torch.matmul then takes
    # the batched path and on a CPU copies the weight to [B, H, V] (7 GB and 16 s for SmolLM2 at B=128)
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    seen, rollout = _head_inputs_while_sampling(bf16, tokenizer)
    assert seen[0][0][:2] == (16, 1)  # the prefill: one position per row, 16 rows
    assert all(contiguous for _, contiguous in seen)
    assert rollout.response_mask.sum() > 16
    # the view the hook replaces really is one the head would otherwise get
    hidden = torch.zeros(16, 5, 8)
    assert not hidden[:, -1:, :].is_contiguous()


def test_the_response_mask_ends_at_the_first_eos(tokenizer):
    """What transformers returns after a row's EOS (padding, or tokens of a batch still running) is
    not part of the response: mask False, ids padded, the row counted as ended."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id

    class Scripted(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))
            self.generation_config = GenerationConfig()

        def generate(self, input_ids, attention_mask, generation_config):
            new = torch.tensor([[5, eos, 7, 8], [5, 6, 7, 8]])
            return torch.cat([input_ids, new], dim=1)

    prompts = torch.tensor([[pad, 1, 2], [3, 4, 5]])
    params = SamplingParams(max_new_tokens=4, temperature=1.0, eos_token_ids=[eos], pad_token_id=pad)
    rollout = HFEngine(Scripted()).generate(prompts, prompts != pad, params)
    assert rollout.response_mask.tolist() == [[True, True, False, False], [True, True, True, True]]
    assert rollout.response_ids[0].tolist() == [5, eos, pad, pad] and rollout.ended.tolist() == [True, False]
