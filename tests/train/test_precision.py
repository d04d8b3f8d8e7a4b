"""precision: auto | fp32 | bf16-mixed, and activation checkpointing."""

import copy

import pytest
import torch

from tether import PPOConfig, PPOTrainer
from tether.train import precision as precision_module
from tether.train.precision import Precision

from .test_invariants import fixed_rollout


def test_auto_follows_the_hardware(monkeypatch):
    monkeypatch.delenv("TETHER_PRECISION", raising=False)
    monkeypatch.setattr(precision_module, "cpu_supports_bf16", lambda: False)
    chosen = Precision.resolve("auto", torch.device("cpu"))
    assert chosen.mode == "fp32" and "without native bf16" in chosen.reason
    monkeypatch.setattr(precision_module, "cpu_supports_bf16", lambda: True)
    assert Precision.resolve("auto", torch.device("cpu")).mode == "bf16-mixed"
    assert Precision.resolve("fp32", torch.device("cpu")).mode == "fp32"  # a user can always force either
    monkeypatch.setattr(precision_module, "cpu_supports_bf16", lambda: False)
    assert Precision.resolve("bf16-mixed", torch.device("cpu")).mode == "bf16-mixed"
    monkeypatch.setenv("TETHER_PRECISION", "fp32")
    monkeypatch.setattr(precision_module, "cpu_supports_bf16", lambda: True)
    assert Precision.resolve("auto", torch.device("cpu")).mode == "fp32"


def _grads(model, tokenizer, **overrides):
    config = PPOConfig(batch_size=8, mini_batch_size=8, ppo_epochs=1, value_model="head", **overrides)
    trainer = PPOTrainer(config, copy.deepcopy(model), tokenizer)
    experience, _ = trainer.make_experience(fixed_rollout(tokenizer), torch.arange(8.0))
    trainer.optimizer.zero_grad()
    trainer.accumulate_gradients(experience, torch.arange(8))
    return trainer, {n: p.grad.clone() for n, p in trainer.policy.named_parameters() if p.grad is not None}


def test_bf16_mixed_gradients_are_close_to_fp32_and_weights_stay_fp32(model, tokenizer):
    _, fp32 = _grads(model, tokenizer, precision="fp32")
    trainer, mixed = _grads(model, tokenizer, precision="bf16-mixed")
    assert all(p.dtype == torch.float32 for p in trainer.policy.parameters())  # master weights
    assert all(p.dtype == torch.bfloat16 for p in trainer.ref_model.parameters())  # frozen: bf16
    assert trainer.value_head.summary.weight.dtype == torch.float32
    # bf16 keeps 8 bits of mantissa: each product is off by ~0.4 %, the gradients by a few % of their norm
    for name, g in fp32.items():
        rel = (mixed[name] - g).norm() / g.norm().clamp(min=1e-12)
        assert rel < 0.1, (name, rel.item())
    # and they are not fp32's: the forward really ran in bf16
    assert any(not torch.equal(mixed[n], g) for n, g in fp32.items())


def test_updates_below_bf16_resolution_are_kept(model, tokenizer):
    """A model loaded in bf16: bf16-mixed trains float32 master weights, so an lr·step far below a
    weight's bf16 resolution (~0.4 % of it) still moves it; pure bf16 weights would round it away."""
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    w = bf16.model.layers[0].mlp.up_proj.weight.detach()
    big = w.abs() > 1e-2  # weights whose bf16 spacing (>= 2^-14) is far above the step
    tiny_step = 1e-6
    assert torch.equal((w + tiny_step).to(torch.bfloat16)[big], w[big])  # lost in bf16
    config = PPOConfig(batch_size=8, mini_batch_size=8, ppo_epochs=1, learning_rate=tiny_step,
                       precision="bf16-mixed", max_grad_norm=None)
    trainer = PPOTrainer(config, bf16, tokenizer)
    before = trainer.policy.model.layers[0].mlp.up_proj.weight.detach().clone()
    assert before.dtype == torch.float32
    trainer.step(["hello there", "abc", "what is up", "zz top", "one", "two two", "three", "four"],
                 ["yes", "no", "maybe", "ok", "fine", "b", "so", "sure"], [1.0, 0.0, 0.5, -1.0, 2.0, 0.0, 1.0, -0.5])
    after = trainer.policy.model.layers[0].mlp.up_proj.weight.detach()
    moved = (after - before).abs()[big]
    assert (moved > 0).float().mean() > 0.5 and moved.max() < 1e-4  # moved, by about lr per Adam step


def test_activation_checkpointing_gives_the_same_gradients_and_recomputes(model, tokenizer):
    _, plain = _grads(model, tokenizer, precision="fp32")
    calls = []
    trainer = PPOTrainer(PPOConfig(batch_size=8, mini_batch_size=8, ppo_epochs=1, value_model="head",
                                   gradient_checkpointing=True), copy.deepcopy(model), tokenizer)
    experience, _ = trainer.make_experience(fixed_rollout(tokenizer), torch.arange(8.0))
    for layer in trainer.policy.model.layers:  # count the layers that run under torch's checkpoint
        real = layer._gradient_checkpointing_func
        layer._gradient_checkpointing_func = lambda *a, _real=real, **k: calls.append(1) or _real(*a, **k)
    trainer.optimizer.zero_grad()
    trainer.accumulate_gradients(experience, torch.arange(8))
    assert len(calls) == 2  # both layers of the training forward (scoring, without gradients, is not)
    assert not trainer.policy.training and not trainer.policy.model.layers[0].training  # back to eval
    for name, p in trainer.policy.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(p.grad, plain[name], rtol=1e-4, atol=1e-6)


def test_precision_option_is_validated():
    from tether.config import ConfigError

    with pytest.raises(ConfigError, match="precision"):
        PPOConfig(precision="fp16")


def test_reward_trainer_takes_the_precision_option(tokenizer):
    from tiny import tiny_reward_model

    from tether import RewardConfig, RewardTrainer

    pairs = [{"prompt": "p", "chosen": "good answer", "rejected": "bad"}] * 4
    model = tiny_reward_model(tokenizer).to(torch.bfloat16)
    trainer = RewardTrainer(RewardConfig(batch_size=2, epochs=1, precision="bf16-mixed"), model, tokenizer, pairs)
    assert trainer.precision.mixed and all(p.dtype == torch.float32 for p in model.parameters())
    history = trainer.train(progress=False)
    assert history and history[0]["train/loss"] > 0


def test_bf16_mixed_step_api_end_to_end(model, tokenizer):
    """A smoke test of the whole step API under bf16-mixed: generate, sequence_kl (scored under the same
    autocast as step) and step, with a bf16 reference and float32 weights."""
    trainer = PPOTrainer(PPOConfig(batch_size=2, mini_batch_size=2, ppo_epochs=1, precision="bf16-mixed",
                                   max_new_tokens=4), copy.deepcopy(model), tokenizer)
    prompts = ["hello there", "abc"]
    responses = trainer.generate(prompts)
    kls = trainer.sequence_kl(prompts, responses)
    assert all(abs(k) < 0.5 for k in kls)  # policy == reference up to bf16 rounding of the reference copy
    stats = trainer.step(prompts, responses, [1.0, -1.0])
    assert all(torch.isfinite(torch.tensor(v)) for k, v in stats.items() if isinstance(v, float))


def test_math_attention_for_short_bf16_training_forwards_on_cpu(model, tokenizer):
    """On a CPU under bf16-mixed a short training forward uses sdpa's math kernel (its flash kernel's
    bf16 backward is slow there); long ones, fp32 and CUDA keep sdpa's own choice. The kernel
    changes the arithmetic order only: gradients agree with the default kernel's to bf16 rounding."""

    mixed = Precision("bf16-mixed", "cpu", "test")
    with mixed.training_attention(model, 4, 110):
        assert torch.backends.cuda.math_sdp_enabled() and not torch.backends.cuda.flash_sdp_enabled()
    assert torch.backends.cuda.flash_sdp_enabled()  # restored on exit
    layers, heads = model.config.num_hidden_layers, model.config.num_attention_heads
    too_long = int((precision_module.MATH_ATTENTION_BYTES / (4 * heads * layers * 6)) ** 0.5) + 1
    for precision, length in ((mixed, too_long), (Precision("fp32", "cpu", "t"), 110), (Precision("bf16-mixed", "cuda", "t"), 110)):
        with precision.training_attention(model, 4, length):
            assert torch.backends.cuda.flash_sdp_enabled()

    ids = torch.randint(3, len(tokenizer), (4, 24))
    grads = []
    for context in (mixed.training_attention(model, 4, 24), torch.autocast("cpu", torch.bfloat16)):
        m = copy.deepcopy(model).float()
        with torch.autocast("cpu", torch.bfloat16), context:
            loss = m(input_ids=ids).logits.float().logsumexp(-1).mean()
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None]))
    assert (grads[0] - grads[1]).norm() / grads[1].norm() < 0.05  # bf16 rounding of two orders of sums


def test_reference_is_copied_in_bf16_directly_with_ties_kept(tokenizer):
    """Under bf16-mixed the frozen reference is made in bf16 parameter by parameter (no full-precision
    copy first); tied weights stay one tensor; buffers and the policy are untouched."""
    from tether.train.build import make_reference
    from tiny import tiny_llama


    policy = tiny_llama(tokenizer, tie_word_embeddings=True)
    ref = make_reference(policy, None, torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in ref.parameters())
    assert ref.lm_head.weight is ref.model.embed_tokens.weight  # still tied
    assert ref.model.embed_tokens.weight.data_ptr() != policy.model.embed_tokens.weight.data_ptr()
    assert all(p.dtype == torch.float32 and p.requires_grad for p in policy.parameters())
    assert [b.dtype for b in ref.buffers()] == [b.dtype for b in policy.buffers()]
    torch.testing.assert_close(ref.model.embed_tokens.weight.float(), policy.model.embed_tokens.weight,
                               rtol=2**-8, atol=0)  # bf16 rounding of the same weights
    same = make_reference(policy, None)  # fp32: an exact copy
    assert all(torch.equal(a, b) for a, b in zip(same.parameters(), policy.parameters()))
