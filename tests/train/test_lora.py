"""With LoRA the reference is the same weights with adapters disabled: no second copy."""

import copy

import torch

from tether import LoraSettings, PPOConfig, PPOTrainer
from tether.models import apply_lora, response_forward

PROMPTS = ["hello there", "abc", "what is up", "zz top"]


def test_lora_reference_is_the_base_model_with_adapters_disabled(model, tokenizer):
    base = copy.deepcopy(model)
    policy = apply_lora(model, LoraSettings(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    trainer = PPOTrainer(PPOConfig(batch_size=4, mini_batch_size=2, ppo_epochs=2, learning_rate=5e-2,
                                   max_new_tokens=5), policy, tokenizer)
    assert trainer.ref_model is None  # no frozen copy held
    frozen = {n: p.detach().clone() for n, p in policy.named_parameters() if "lora_" not in n}
    for _ in range(2):
        responses = trainer.generate(PROMPTS)
        stats = trainer.step(PROMPTS, responses, [float(len(r)) for r in responses])
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with trainer.ppo.reference() as ref:
        ref_lp = response_forward(ref, ids, torch.ones_like(ids), 3, 1.0).logprobs
    torch.testing.assert_close(ref_lp, response_forward(base, ids, torch.ones_like(ids), 3, 1.0).logprobs)
    policy_lp = response_forward(policy, ids, torch.ones_like(ids), 3, 1.0).logprobs
    assert not torch.allclose(policy_lp, ref_lp)  # the adapters learned something
    assert stats["objective/kl"] != 0.0
    # base weights untouched; only adapters (and the critic) are optimised
    for n, p in policy.named_parameters():
        if "lora_" not in n:
            assert torch.equal(frozen[n], p.detach())
    trained = {id(p) for g in trainer.optimizer.param_groups[:1] for p in g["params"]}
    assert all("lora_" in n for n, p in policy.named_parameters() if id(p) in trained)


def test_lora_critic_is_a_plain_copy_of_the_base(model, tokenizer):
    policy = apply_lora(model, LoraSettings(r=4, target_modules=["q_proj", "v_proj"]))
    trainer = PPOTrainer(PPOConfig(batch_size=4, value_model="separate"), policy, tokenizer)
    names = [n for n, _ in trainer.critic.named_parameters()]
    assert names and not any("lora_" in n for n in names)


def test_lora_checkpoint_loads_with_auto_model(model, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    model.save_pretrained(tmp_path / "base")
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    policy = apply_lora(base, LoraSettings(r=4, target_modules=["q_proj", "v_proj"]))
    trainer = PPOTrainer(PPOConfig(batch_size=4, mini_batch_size=2, ppo_epochs=1, learning_rate=5e-2,
                                   max_new_tokens=4), policy, tokenizer)
    trainer.step(PROMPTS, trainer.generate(PROMPTS), [1.0, 2.0, 3.0, 4.0])
    out = trainer.save_pretrained(tmp_path / "ckpt")
    loaded = AutoModelForCausalLM.from_pretrained(out)  # peft adapters + base_model_name_or_path
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, policy(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
