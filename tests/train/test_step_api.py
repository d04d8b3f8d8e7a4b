"""The TRL-style step API: strings in, strings out; and the TRL ≤ 0.11 tensor form."""

import math

import pytest
import torch

from tether import PPOConfig, PPOTrainer
from tether.rewards import RewardError

REQUIRED_STATS = ["objective/kl", "objective/entropy", "objective/scores", "objective/rlhf_reward",
                  "policy/approxkl", "policy/clipfrac", "policy/ratio_mean", "val/clipfrac", "val/vpred",
                  "val/error", "loss/policy", "loss/value", "env/reward_mean", "env/reward_std",
                  "time/generate", "time/step", "tokens/response_len_mean"]
PROMPTS = ["hello there", "abc", "what is up", "zz top"]


def make_trainer(model, tokenizer, **overrides):
    config = dict(batch_size=4, mini_batch_size=2, ppo_epochs=2, max_new_tokens=6, learning_rate=1e-3)
    config.update(overrides)
    return PPOTrainer(PPOConfig(**config), model, tokenizer)


def test_seed_program_with_strings(model, tokenizer):
    trainer = make_trainer(model, tokenizer)
    for _ in range(2):
        responses = trainer.generate(PROMPTS, max_new_tokens=5)
        assert isinstance(responses, list) and all(isinstance(r, str) for r in responses)
        rewards = [len(r) for r in responses]
        stats = trainer.step(PROMPTS, responses, rewards)
    assert set(REQUIRED_STATS) <= set(stats)
    assert all(isinstance(v, float) and math.isfinite(v) for v in stats.values())
    assert stats["time/generate"] > 0


def test_trl_tensor_form(model, tokenizer):
    trainer = make_trainer(model, tokenizer)
    queries = [torch.tensor(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in PROMPTS]
    single = trainer.generate(queries[0], max_new_tokens=4)
    assert single.dim() == 2 and single.shape[0] == 1
    assert single[0, : len(queries[0])].tolist() == queries[0].tolist()  # return_prompt=True by default
    outs = trainer.generate(queries, return_prompt=False, max_new_tokens=4, do_sample=True, top_k=0.0,
                            top_p=1.0, pad_token_id=tokenizer.eos_token_id, min_length=-1)
    assert all(o.dim() == 1 and 1 <= len(o) <= 4 for o in outs)
    scores = [torch.tensor(float(len(o))) for o in outs]
    stats = trainer.step(queries, outs, scores)
    assert set(REQUIRED_STATS) <= set(stats)


def test_trl_011_positional_order(model, tokenizer):
    import copy

    ref = copy.deepcopy(model)
    trainer = PPOTrainer(PPOConfig(batch_size=4), model, ref, tokenizer)
    assert trainer.ref_model is ref and trainer.tokenizer is tokenizer


@pytest.mark.parametrize("scores, message", [
    ([1.0, 2.0, 3.0], "returned 3 scores for 4 responses"),
    ([1.0, float("nan"), 3.0, 4.0], "non-finite scores at rows \\[1\\]"),
    ([1.0, 2.0, float("inf"), 4.0], "non-finite scores at rows \\[2\\]"),
    (["a", 2.0, 3.0, 4.0], "must return numbers"),
])
def test_bad_reward_lists_are_clear_errors(model, tokenizer, scores, message):
    trainer = make_trainer(model, tokenizer)
    responses = trainer.generate(PROMPTS)
    before = [p.detach().clone() for p in trainer.policy.parameters()]
    with pytest.raises(RewardError, match=message):
        trainer.step(PROMPTS, responses, scores)
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.policy.parameters()))  # nothing changed


def test_wrong_batch_size_is_a_clear_error(model, tokenizer):
    trainer = make_trainer(model, tokenizer)
    with pytest.raises(ValueError, match="batch_size is 4"):
        trainer.step(PROMPTS[:2], ["a", "b"], [1.0, 2.0])


def test_responses_not_from_generate_are_tokenized_and_complete(model, tokenizer):
    trainer = make_trainer(model, tokenizer)
    stats = trainer.step(PROMPTS, ["yes", "no", "maybe", "ok"], [1.0, 0.0, 0.5, 0.2])
    assert stats["tokens/ended_frac"] == 1.0  # EOS appended: treated as complete answers


def test_greedy_and_penalised_samples_are_for_evaluation_only(model, tokenizer):
    """generate() takes transformers' options (TRL programs evaluate with them), but step() refuses
    to train on samples that are not from the policy's softmax(logits / T)."""
    trainer = make_trainer(model, tokenizer)
    with pytest.raises(TypeError, match="unsupported arguments \\['colour'\\]"):
        trainer.generate(PROMPTS, colour="blue")
    greedy = trainer.generate(PROMPTS, do_sample=False)
    assert greedy == trainer.generate(PROMPTS, do_sample=False)  # deterministic
    for options, name in (({"do_sample": False}, "do_sample=False"), ({"repetition_penalty": 1.3}, "repetition_penalty"),
                          ({"num_beams": 2, "do_sample": False}, "num_beams")):
        responses = trainer.generate(PROMPTS, **options)
        with pytest.raises(ValueError, match=f"{name}.*not samples of the policy"):
            trainer.step(PROMPTS, responses, [0.0] * 4)


def test_step_scores_each_batch_at_the_temperature_it_was_sampled_with(model, tokenizer):
    """Old logprobs must be of the distribution that was sampled, also when an evaluation generate()
    at another temperature comes between sampling and step(), in text and tensor form."""
    from tether.models.forward import response_forward

    trainer = make_trainer(model, tokenizer, learning_rate=0.0, temperature=0.7)
    seen = []
    real = trainer.ppo.make_experience
    trainer.ppo.make_experience = lambda rollout, scores: seen.append(real(rollout, scores)) or seen[-1]
    queries = [torch.tensor(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in PROMPTS]
    for form in (PROMPTS, queries):
        responses = trainer.generate(form, temperature=1.3, return_prompt=False)
        trainer.generate(form, temperature=0.2)  # evaluation samples in between
        trainer.step(form, responses, [0.0] * 4)
        experience = seen[-1][0]
        assert experience.temperature == 1.3
        # independent check of the old logprobs: the same rows scored at 1.3 by hand
        with torch.no_grad():
            by_hand = response_forward(model, experience.input_ids, experience.attention_mask,
                                       experience.response_len, 1.3).logprobs
        mask = experience.response_mask
        torch.testing.assert_close(experience.logprobs[mask], by_hand[mask], rtol=1e-4, atol=1e-5)
    # responses not from generate(): the configured temperature
    trainer.step(PROMPTS, ["yes", "no", "maybe", "ok"], [0.0] * 4)
    assert seen[-1][0].temperature == 0.7


def test_one_step_batch_cannot_mix_temperatures(model, tokenizer):
    trainer = make_trainer(model, tokenizer)
    hot = trainer.generate(PROMPTS[:2], temperature=1.3)
    cold = trainer.generate(PROMPTS[2:], temperature=0.5)
    with pytest.raises(ValueError, match="different temperatures"):
        trainer.step(PROMPTS, hot + cold, [0.0] * 4)


def test_stop_token_ends_responses(model, tokenizer):
    stop = tokenizer.convert_tokens_to_ids("x")
    trainer = make_trainer(model, tokenizer, stop_token_ids=[stop])
    stats = trainer.step(PROMPTS, ["abxcd", "x", "no stop", "ax"], [1.0, 2.0, 3.0, 4.0])
    # "abxcd" is cut after x (3 tokens), "x" is 1, "no stop" + EOS is 8, "ax" is 2
    assert stats["tokens/response_len_mean"] == pytest.approx((3 + 1 + 8 + 2) / 4)


def test_step_reuses_generate_tokenization_and_caches_stay_bounded(model, tokenizer, monkeypatch):
    import tether.train.step_api as step_api_module
    import tether.train.step_inputs as step_inputs

    trainer = make_trainer(model, tokenizer)
    responses = trainer.generate(PROMPTS)
    calls = []
    real = step_inputs.tokenize_prompts
    monkeypatch.setattr(step_inputs, "tokenize_prompts", lambda *a, **k: calls.append(a) or real(*a, **k))
    trainer.step(PROMPTS, responses, [1.0, 2.0, 3.0, 4.0])
    assert calls == []  # the prompt ids from generate() were reused
    monkeypatch.setattr(step_api_module, "SAMPLE_CACHE_LIMIT", 6)
    for _ in range(3):
        trainer.generate(PROMPTS)
    assert len(trainer._sampled) <= 6 + len(PROMPTS)


def test_sequence_kl_is_zero_before_training_and_matches_a_manual_sum_after(model, tokenizer):
    from tether.algo import logprobs_from_logits

    trainer = make_trainer(model, tokenizer, learning_rate=1e-2)
    responses = trainer.generate(PROMPTS)
    assert trainer.sequence_kl(PROMPTS, responses) == [0.0] * 4  # policy == reference
    trainer.step(PROMPTS, responses, [1.0, 0.0, 1.0, 0.0])
    responses = trainer.generate(PROMPTS)
    kls = trainer.sequence_kl(PROMPTS, responses)
    # independent check, one sequence at a time, no padding: Σ log π − log π_ref over the response
    for prompt, completion, kl in zip(PROMPTS, responses, kls):
        p = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                          add_generation_prompt=True)
        p_ids = tokenizer(p, add_special_tokens=False)["input_ids"]
        r_ids = trainer._sampled.get((repr(prompt), completion))
        ids = torch.tensor([p_ids + r_ids])
        with torch.no_grad():
            lp = [logprobs_from_logits(m(ids).logits[:, len(p_ids) - 1 : -1] / trainer.config.temperature,
                                       ids[:, len(p_ids):]).sum().item()
                  for m in (trainer.policy, trainer.ref_model)]
        assert kl == pytest.approx(lp[0] - lp[1], abs=1e-4)
    assert any(abs(k) > 1e-6 for k in kls)


def test_trl_log_stats_writes_the_batch_next_to_the_metrics(tmp_path, model, tokenizer):
    import json

    from tether import PPOConfig, PPOTrainer

    trainer = PPOTrainer(PPOConfig(batch_size=2, mini_batch_size=2, ppo_epochs=1, max_new_tokens=3), model, tokenizer,
                         log_dir=tmp_path)
    batch = {"query": ["hi", "yo"]}
    batch["response"] = trainer.generate(batch["query"])
    rewards = [torch.tensor(1.0), torch.tensor(2.0)]
    stats = trainer.step(batch["query"], batch["response"], rewards)
    trainer.log_stats(stats, batch, rewards)
    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [(r["prompt"], r["score"], r["iteration"]) for r in rows] == [("hi", 1.0, 1), ("yo", 2.0, 1)]
    assert (tmp_path / "metrics.jsonl").exists()


def test_offset_scores_warn_once_unless_whitened(model, tokenizer, caplog):
    offset = [100.0, 101.0, 102.0, 103.0]  # like the seed's len(r): mean 101.5, std 1.3
    trainer = make_trainer(model, tokenizer, ppo_epochs=1)
    for _ in range(2):
        trainer.step(PROMPTS, trainer.generate(PROMPTS), offset)
    assert caplog.text.count("whiten_scores=True") == 1  # once per trainer, not every step
    caplog.clear()
    trainer = make_trainer(model, tokenizer, ppo_epochs=1, whiten_scores=True)
    trainer.step(PROMPTS, trainer.generate(PROMPTS), offset)
    trainer = make_trainer(model, tokenizer, ppo_epochs=1)
    trainer.step(PROMPTS, trainer.generate(PROMPTS), [0.5, -0.2, 0.1, 0.3])  # centred: no warning
    trainer = make_trainer(model, tokenizer, ppo_epochs=1)
    trainer.ppo.iteration = 30  # as after resuming a checkpoint: the critic is trained, raised scores are learnt
    trainer.step(PROMPTS, trainer.generate(PROMPTS), offset)
    assert "whiten_scores" not in caplog.text


def test_step_with_pad_equal_to_eos_does_not_end_responses_that_never_produced_eos(model, tokenizer):
    """Right padding with the EOS id must not count as a stop: those rows get missing_eos_score."""
    tokenizer.pad_token = tokenizer.eos_token
    trainer = make_trainer(model, tokenizer, missing_eos_score=-1.0, learning_rate=0.0)
    queries = [torch.tensor(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in PROMPTS]
    responses = [torch.tensor(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in ("a", "bb", "ccc", "dddd")]
    stats = trainer.step(queries, responses, [1.0, 0.5, 0.0, 0.0])
    assert stats["tokens/ended_frac"] == 0.0
    assert stats["tokens/response_len_mean"] == pytest.approx(2.5)
    # KL is 0 on the first step (policy == reference): the reward is the penalty score alone
    assert stats["objective/rlhf_reward"] == pytest.approx(-1.0, abs=1e-5)


def test_stats_report_peak_memory(model, tokenizer):
    trainer = make_trainer(model, tokenizer)
    stats = trainer.step(PROMPTS, ["yes", "no", "maybe", "ok"], [1.0, 0.0, 0.5, 0.2])
    assert 0.05 < stats["memory/peak_rss_gib"] < 64  # this process: torch and the tiny model
    assert "memory/gpu_peak_gib" not in stats  # CPU run
