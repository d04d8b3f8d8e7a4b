"""Invariants of the update: split-independence, lr=0, frozen reference, clipping, saving."""

import copy

import pytest
import torch

from tether import PPOConfig, PPOTrainer
from tether.data import left_pad, right_pad
from tether.rollout import Rollout

PROMPTS = ["hello there", "abc", "what is up", "zz top", "one", "two two", "three", "four four four"]


def fixed_rollout(tokenizer, n=8):
    """Deterministic prompts and responses of different lengths (some ended with EOS)."""
    prompts = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS[:n]]
    eos = tokenizer.eos_token_id
    responses = [[10 + i, 20 + i, 30 + i][: 1 + i % 3] + ([eos] if i % 2 else []) for i in range(n)]
    p_ids, p_mask = left_pad(prompts, tokenizer.pad_token_id)
    r_ids, r_mask = right_pad(responses, tokenizer.pad_token_id)
    return Rollout(p_ids, p_mask, r_ids, r_mask, torch.tensor([bool(i % 2) for i in range(n)]))


def grads_of_one_step(model, tokenizer, micro, accumulation, aggregation="token-mean"):
    config = PPOConfig(batch_size=8, mini_batch_size=micro, gradient_accumulation_steps=accumulation,
                       ppo_epochs=1, value_model="separate", loss_aggregation=aggregation, entropy_coef=0.01, kl_loss_coef=0.1)
    trainer = PPOTrainer(config, copy.deepcopy(model), tokenizer)
    experience, _ = trainer.make_experience(fixed_rollout(tokenizer), torch.arange(8.0))
    trainer.optimizer.zero_grad()
    sums = trainer.accumulate_gradients(experience, torch.arange(8))
    grads = [p.grad.clone() for p in trainer.policy.parameters() if p.grad is not None]
    grads += [p.grad.clone() for p in trainer.critic.parameters() if p.grad is not None]
    return grads, sums


@pytest.mark.parametrize("aggregation", ["token-mean", "seq-mean-token-mean"])
def test_gradient_does_not_depend_on_micro_batch_split(model, tokenizer, aggregation):
    one_grads, one = grads_of_one_step(model, tokenizer, micro=8, accumulation=1, aggregation=aggregation)
    acc_grads, acc = grads_of_one_step(model, tokenizer, micro=1, accumulation=8, aggregation=aggregation)
    # sums over other micro-batch shapes: other matmul blockings (and AVX2 vs AVX-512 kernels) round
    # differently, ~1e-7 relative; a wrong normalisation changes the loss by a factor
    assert acc["loss_total"] == pytest.approx(one["loss_total"], rel=1e-4, abs=1e-6)
    assert len(one_grads) == len(acc_grads) > 0
    for a, b in zip(one_grads, acc_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_learning_rate_zero_leaves_policy_unchanged(model, tokenizer):
    trainer = PPOTrainer(PPOConfig(batch_size=8, mini_batch_size=4, ppo_epochs=2, learning_rate=0.0,
                                   max_new_tokens=6), model, tokenizer)
    before = copy.deepcopy(trainer.policy.state_dict())
    for _ in range(2):
        responses = trainer.generate(PROMPTS)
        stats = trainer.step(PROMPTS, responses, [float(len(r)) for r in responses])
        # training micro-batches drop other padding columns than the scoring ones, so the same
        # weights give logprobs equal up to float rounding (~1e-7, kernel-dependent), not bit for bit
        assert stats["policy/ratio_mean"] == pytest.approx(1.0, abs=1e-5)
        assert stats["policy/approxkl"] < 1e-10 and stats["policy/clipfrac"] == 0.0
        assert stats["objective/kl"] == 0.0  # policy and reference score identical inputs
    after = trainer.policy.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_reference_never_changes_and_policy_does(model, tokenizer):
    trainer = PPOTrainer(PPOConfig(batch_size=8, mini_batch_size=4, ppo_epochs=1, learning_rate=1e-2,
                                   max_new_tokens=6), model, tokenizer)
    ref_before = copy.deepcopy(trainer.ref_model.state_dict())
    policy_before = copy.deepcopy(trainer.policy.state_dict())
    responses = trainer.generate(PROMPTS)
    trainer.step(PROMPTS, responses, [float(len(r)) for r in responses])
    assert all(torch.equal(ref_before[k], v) for k, v in trainer.ref_model.state_dict().items())
    assert any(not torch.equal(policy_before[k], v) for k, v in trainer.policy.state_dict().items())
    assert not any(p.requires_grad for p in trainer.ref_model.parameters())


def test_gradient_clipping_is_applied(model, tokenizer):
    """TRL once configured max_grad_norm but never applied it."""
    trainer = PPOTrainer(PPOConfig(batch_size=8, mini_batch_size=8, ppo_epochs=1, max_grad_norm=1e-3,
                                   learning_rate=0.0), model, tokenizer)
    experience, _ = trainer.make_experience(fixed_rollout(tokenizer), torch.arange(8.0) * 10)
    trainer.optimizer.zero_grad()
    trainer.accumulate_gradients(experience, torch.arange(8))
    norm_before = trainer.ppo._clip_gradients()
    assert norm_before > 1e-3
    params = [p for g in trainer.optimizer.param_groups for p in g["params"] if p.grad is not None]
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
    assert total.item() == pytest.approx(1e-3, rel=1e-3)


def test_no_eos_penalty_replaces_score(model, tokenizer):
    trainer = PPOTrainer(PPOConfig(batch_size=8, missing_eos_score=-1.0, kl_coef=0.0), model, tokenizer)
    rollout = fixed_rollout(tokenizer)
    _, stats = trainer.make_experience(rollout, torch.full((8,), 5.0))
    # half the responses end with EOS: rlhf reward = mean of [5, -1, 5, -1, ...]
    assert stats["objective/rlhf_reward"] == pytest.approx(2.0)
    assert stats["objective/scores"] == pytest.approx(5.0)  # raw scores are reported unchanged


def test_masked_positions_carry_no_entropy_kl_or_value(model, tokenizer):
    trainer = PPOTrainer(PPOConfig(batch_size=8), model, tokenizer)
    rollout = fixed_rollout(tokenizer)
    experience, stats = trainer.make_experience(rollout, torch.arange(8.0))
    invalid = ~experience.response_mask
    for name in ("values", "advantages", "returns"):
        assert getattr(experience, name)[invalid].abs().max().item() == 0.0
    # entropy over valid tokens only, from an independent route (torch.distributions on HF logits)
    ids, attn = rollout.input_ids, rollout.attention_mask
    positions = (attn.cumsum(-1) - 1).clamp(min=0)
    logits = trainer.policy(input_ids=ids, attention_mask=attn, position_ids=positions).logits
    T = rollout.response_ids.shape[1]
    dist = torch.distributions.Categorical(logits=logits[:, -T - 1 : -1] / trainer.config.temperature)
    expected = dist.entropy()[rollout.response_mask].mean().item()
    assert stats["objective/entropy"] == pytest.approx(expected, rel=1e-4)


def test_value_model_is_saved_and_reloads(model, tokenizer, tmp_path):
    """TRL once dropped the value model when saving."""
    from transformers import AutoModelForCausalLM

    from tether.models import ValueModel

    trainer = PPOTrainer(PPOConfig(batch_size=8, mini_batch_size=4, ppo_epochs=1, learning_rate=1e-2,
                                   max_new_tokens=4, value_model="separate"), model, tokenizer)
    responses = trainer.generate(PROMPTS)
    trainer.step(PROMPTS, responses, [float(len(r)) for r in responses])
    out = trainer.save_pretrained(tmp_path / "ckpt")
    policy = AutoModelForCausalLM.from_pretrained(out)
    for a, b in zip(policy.parameters(), trainer.policy.parameters()):
        assert torch.equal(a, b)
    critic = ValueModel.from_pretrained(out / "critic")
    ids = torch.tensor([[5, 6, 7]])
    torch.testing.assert_close(critic(ids, torch.ones_like(ids), torch.arange(3)[None]),
                               trainer.critic(ids, torch.ones_like(ids), torch.arange(3)[None]))
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp dirs left behind


def test_value_head_mode_has_no_separate_critic(model, tokenizer):
    trainer = PPOTrainer(PPOConfig(batch_size=8, mini_batch_size=4, ppo_epochs=1, value_model="head",
                                   max_new_tokens=4), model, tokenizer)
    assert trainer.critic is None and trainer.value_head is not None
    responses = trainer.generate(PROMPTS)
    stats = trainer.step(PROMPTS, responses, [float(len(r)) for r in responses])
    assert stats["val/error"] > 0
    assert trainer.value_head.summary.weight.abs().sum() > 0  # the head was trained


def test_adaptive_kl_controller_moves_beta(model, tokenizer):
    trainer = PPOTrainer(PPOConfig(batch_size=8, mini_batch_size=4, ppo_epochs=1, learning_rate=0.0,
                                   adaptive_kl=True, kl_target=1.0, kl_horizon=100), model, tokenizer)
    responses = trainer.generate(PROMPTS)
    trainer.step(PROMPTS, responses, [0.0] * 8)
    # KL is 0 at lr=0, so the error is clipped to −0.2: β ← β·(1 − 0.2·8/100)
    assert trainer.kl_ctl.value == pytest.approx(0.05 * (1 - 0.2 * 8 / 100))
