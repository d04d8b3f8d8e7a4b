"""The real packaged model: GGUF loading, the chat template, and one PPO step (slow: ~1-2 minutes)."""

import pytest
import torch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    from tether.assets import gguf_path, model_dir

    return gguf_path(), model_dir("smollm2-135m-instruct")


def test_gguf_loads_as_llama_and_matches_the_converted_copy(smollm2):
    from transformers import AutoModelForCausalLM

    from tether import load_causal_lm, load_tokenizer

    gguf, hf_dir = smollm2
    model = load_causal_lm(str(gguf.parent), gguf_file=gguf.name)
    tokenizer = load_tokenizer(str(gguf))
    assert type(model).__name__ == "LlamaForCausalLM"
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                         add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    converted = AutoModelForCausalLM.from_pretrained(hf_dir)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, converted(ids).logits)


def test_one_ppo_step_on_smollm2(smollm2, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tether import PPOConfig, PPOTrainer

    _, hf_dir = smollm2
    model = AutoModelForCausalLM.from_pretrained(hf_dir)
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    trainer = PPOTrainer(PPOConfig(batch_size=2, mini_batch_size=2, ppo_epochs=1, max_new_tokens=8,
                                   value_model="head"), model, tokenizer)
    prompts = ["Say hello.", "Name a colour."]
    responses = trainer.generate(prompts)
    assert all(isinstance(r, str) for r in responses)
    stats = trainer.step(prompts, responses, [1.0, 0.0])
    assert stats["policy/ratio_mean"] == pytest.approx(1.0, abs=1e-3)  # first epoch is on-policy
    assert stats["objective/entropy"] > 0
    trainer.save_pretrained(tmp_path / "ckpt")
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt").config.model_type == "llama"
