"""TRL 0.11.4's PPO surface, second round: encoder-decoder policies, TRL-era loading arguments, TRL's
trainer internals and no silent changes (precision, lengths, score handling, logging)."""

import logging
import math

import numpy as np
import pytest
import torch

from tether import PPOConfig, PPOTrainer


def tiny_t5(tokenizer, seed: int = 0):
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    config = T5Config(vocab_size=len(tokenizer), d_model=32, d_ff=64, d_kv=8, num_layers=2, num_heads=4,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      decoder_start_token_id=tokenizer.pad_token_id)
    return T5ForConditionalGeneration(config).eval()


def ids(tokenizer, text):
    return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"])


# ---------------------------------------------------------------- encoder-decoder policies

def test_encoder_decoder_logprobs_equal_the_models_own_teacher_forced_forward(tokenizer):
    """response_forward on [left-padded prompt | response] = log softmax of T5's own forward with
    labels=response (transformers shifts them right itself): an independent path."""
    from tether.models.forward import response_forward

    model = tiny_t5(tokenizer)
    prompts = [ids(tokenizer, "hello there"), ids(tokenizer, "hi")]
    responses = [ids(tokenizer, "abc"), ids(tokenizer, "de")]
    pad = tokenizer.pad_token_id
    P, T = max(map(len, prompts)), max(map(len, responses))
    input_ids = torch.full((2, P + T), pad)
    attention = torch.zeros((2, P + T), dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        input_ids[i, P - len(p) : P], attention[i, P - len(p) : P] = p, 1
        input_ids[i, P : P + len(r)], attention[i, P : P + len(r)] = r, 1
    with torch.no_grad():
        ours = response_forward(model, input_ids, attention, T, temperature=2.0).logprobs
        for i, (p, r) in enumerate(zip(prompts, responses)):
            logits = model(input_ids=p[None], labels=r[None]).logits[0] / 2.0
            expected = torch.log_softmax(logits, -1).gather(-1, r[:, None]).squeeze(-1)
            torch.testing.assert_close(ours[i, : len(r)], expected, atol=1e-5, rtol=1e-5)


def test_seq2seq_value_head_program_trains_on_decoder_tokens_only(tokenizer, caplog):
    from tether import AutoModelForSeq2SeqLMWithValueHead, AutoModelForCausalLMWithValueHead

    model = AutoModelForSeq2SeqLMWithValueHead.from_pretrained(tiny_t5(tokenizer))
    assert model.is_encoder_decoder is True
    assert not hasattr(AutoModelForCausalLMWithValueHead.from_pretrained(tiny_t5(tokenizer)), "is_encoder_decoder")
    before = {k: v.clone() for k, v in model.pretrained_model.state_dict().items()}
    trainer = PPOTrainer(PPOConfig(batch_size=2, mini_batch_size=1, learning_rate=1e-3), model, None, tokenizer)
    queries = [ids(tokenizer, "hello there"), ids(tokenizer, "hi")]
    responses = trainer.generate(queries, return_prompt=False, max_new_tokens=6, remove_padding=True)
    start = tokenizer.pad_token_id
    assert all(r[0].item() == start and len(r) <= 7 for r in responses)  # TRL's form: the decoder output
    with caplog.at_level(logging.WARNING):
        stats = trainer.step(queries, responses, [torch.tensor(1.0), torch.tensor(-1.0)])
    assert "left the first token after the decoder's start token out" in caplog.text  # said once
    lengths = [len(r) - 1 for r in responses]  # the start token is not an action
    assert stats["tokens/responses_len_mean"] == pytest.approx(sum(lengths) / 2 + 1)  # TRL counted it
    assert trainer.ppo.last_experience.response_mask.sum().item() == sum(lengths)  # every real token trained
    assert any(not torch.equal(before[k], v) for k, v in model.pretrained_model.state_dict().items())
    assert math.isfinite(stats["ppo/loss/total"])
    with pytest.raises(ValueError, match="encoder-decoder policy samples with the HF engine"):
        PPOTrainer(PPOConfig(batch_size=2, mini_batch_size=1), tiny_t5(tokenizer), tokenizer, engine="vllm")


# ---------------------------------------------------------------- loading arguments

def test_trl_era_loading_arguments_are_translated():
    from tether.compat.models import translate_loading_kwargs

    out = translate_loading_kwargs({"use_auth_token": "hf_x", "load_in_8bit": False, "load_in_4bit": False})
    assert out == {"token": "hf_x"}
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        with pytest.raises(ImportError, match="load_in_8bit=True.*pip install bitsandbytes"):
            translate_loading_kwargs({"load_in_8bit": True}, "AutoModelForCausalLMWithValueHead")
    with pytest.raises(ValueError, match="cannot both"):
        translate_loading_kwargs({"load_in_8bit": True, "load_in_4bit": True})


# ---------------------------------------------------------------- config

def test_trl_option_names_set_after_construction_map_onto_tether_options():
    config = PPOConfig(batch_size=2, mini_batch_size=1)
    config.kl_penalty = "abs"
    config.init_kl_coef = 0.3
    config.whiten_rewards = True
    assert (config.kl_estimator, config.kl_coef, config.kl_penalty, config.whiten_rewards) == ("abs", 0.3, "abs", True)
    config.use_score_scaling = True
    assert config.use_score_scaling is True
    with pytest.raises(AttributeError, match="did you mean 'kl_coef'"):
        config.kl_coeff = 0.1


def test_a_config_lists_trls_fields_for_hfargumentparser_but_copies_and_saves_its_own():
    import copy
    import dataclasses
    import pickle

    names = {f.name for f in dataclasses.fields(PPOConfig)}
    assert {"log_with", "init_kl_coef", "steps", "tracker_kwargs"} <= names  # the class: for HfArgumentParser
    config = PPOConfig(batch_size=4, mini_batch_size=2, init_kl_coef=0.3, steps=64)
    assert "init_kl_coef" not in dataclasses.asdict(config) and "kl_coef" in dataclasses.asdict(config)
    for clone in (copy.deepcopy(config), pickle.loads(pickle.dumps(config))):
        assert clone == config and (clone.kl_coef, clone.steps, clone.init_kl_coef) == (0.3, 64, 0.3)
        assert {f.name for f in dataclasses.fields(clone)} == {f.name for f in dataclasses.fields(config)}
    assert dataclasses.replace(config, batch_size=8).kl_coef == 0.3


# ---------------------------------------------------------------- score handling and rewards

def test_running_moments_match_numpy_over_the_whole_stream():
    from tether.algo import RunningMoments

    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, size=n) for n in (5, 8, 3)]
    running = RunningMoments()
    for i, b in enumerate(batches):
        mean, std = running.update(torch.tensor(b, dtype=torch.float32))
        assert mean == pytest.approx(b.mean(), rel=1e-5) and std == pytest.approx(b.std(ddof=1), rel=1e-5)
        seen = np.concatenate(batches[: i + 1])
        assert running.mean == pytest.approx(seen.mean(), rel=1e-5)
        assert running.std == pytest.approx(seen.std(ddof=1), rel=1e-4)


def test_trl_score_scaling_norm_and_clip_in_trls_order():
    from tether.algo import RunningMoments
    from tether.compat.trl_trainer import trl_scores

    config = PPOConfig(batch_size=4, mini_batch_size=1, use_score_scaling=True, use_score_norm=True, score_clip=1.0)
    scores = torch.tensor([1.0, 2.0, 3.0, 6.0])
    out = trl_scores(scores, config, RunningMoments(), None)
    expected = np.clip((scores.numpy() - 3.0) / (np.std([1, 2, 3, 6], ddof=1) + np.finfo(np.float32).eps), -1, 1)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5)
    config = PPOConfig(batch_size=4, mini_batch_size=1, use_score_scaling=True)
    np.testing.assert_allclose(trl_scores(scores, config, RunningMoments(), None).numpy(),
                               scores.numpy() / np.std([1, 2, 3, 6], ddof=1), rtol=1e-5)


def test_whiten_rewards_scales_the_per_token_rewards_before_gae():
    """γ = λ = 1 and zero values: the first token's advantage before whitening is the sum of the
    rewards, so whitening the rewards (mean kept) divides it by their std (hand-computed)."""
    from tether.train.estimators import estimate_advantages

    scores = torch.tensor([2.0, -1.0])
    kl = torch.tensor([[0.5, 0.0, 1.0], [0.2, 0.4, 0.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    kw = dict(batch_size=2, mini_batch_size=1, gamma=1.0, lam=1.0, whiten_advantages=False)
    rewards = np.array([-0.1 * 0.5, 0.0, -0.1 * 1.0 + 2.0, -0.1 * 0.2, -0.1 * 0.4 - 1.0])
    mean, std = rewards.mean(), rewards.std(ddof=1)
    scaled = (rewards - mean) / np.sqrt(std ** 2 + 1e-8) + mean
    for whiten_rewards, r in ((False, rewards), (True, scaled)):
        adv, _, _ = estimate_advantages(PPOConfig(whiten_rewards=whiten_rewards, **kw), scores, kl,
                                        torch.zeros(2, 3), mask, 0.1)
        assert adv[0, 0].item() == pytest.approx(r[:3].sum(), rel=1e-5)
        assert adv[1, 0].item() == pytest.approx(r[3:].sum(), rel=1e-5)


# ---------------------------------------------------------------- no silent changes

def test_a_trl_program_runs_fp32_unless_it_asked_and_says_how_to_go_faster(model, monkeypatch, caplog):
    from tether.compat.trl_trainer import trl_precision
    from tether.train.precision import Precision

    monkeypatch.setattr(Precision, "resolve", classmethod(lambda cls, s, d: cls("bf16-mixed", "cpu", "CPU with AMX")
                                                             if s == "auto" else cls(s, "cpu", "set")))
    with caplog.at_level(logging.WARNING):
        chosen = trl_precision(PPOConfig(batch_size=2, mini_batch_size=1), model, "cpu")
    assert chosen.mode == "fp32" and "precision='bf16-mixed'" in caplog.text
    asked = PPOConfig(batch_size=2, mini_batch_size=1, accelerator_kwargs={"mixed_precision": "bf16"})
    assert trl_precision(asked, model, "cpu").mode == "bf16-mixed"
    assert trl_precision(PPOConfig(batch_size=2, mini_batch_size=1, precision="bf16-mixed"), model, "cpu").mixed
    assert trl_precision(PPOConfig(batch_size=2, mini_batch_size=1, precision="auto"), model, "cpu").mixed  # the docs' switch


def test_trl_program_without_max_new_tokens_gets_transformers_max_length_20(model, tokenizer, caplog):
    from tether import AutoModelForCausalLMWithValueHead

    trainer = PPOTrainer(PPOConfig(batch_size=2, mini_batch_size=1), AutoModelForCausalLMWithValueHead.from_pretrained(
        model), None, tokenizer)
    query = ids(tokenizer, "hello")  # 5 tokens: at most 15 new ones, prompt included in max_length
    eos_never = {"eos_token_id": -1}
    with caplog.at_level(logging.WARNING):
        out = trainer.generate([query, query], **eos_never)
    assert all(len(o) == 20 for o in out) and "max_length=20" in caplog.text


def test_trl_stats_ref_model_and_internals(model, tokenizer):
    from tether import AutoModelForCausalLMWithValueHead

    wrapped = AutoModelForCausalLMWithValueHead.from_pretrained(model)
    tokenizer.padding_side = "right"
    trainer = PPOTrainer(PPOConfig(batch_size=2, mini_batch_size=1), wrapped, None, tokenizer)
    assert tokenizer.padding_side == "right"  # the program's tokenizer is left as it was, as TRL did
    assert wrapped.current_device == torch.device("cpu") == trainer.current_device  # lora_tuning_peft.mdx uses it
    assert isinstance(trainer.ref_model, AutoModelForCausalLMWithValueHead)
    assert not any(p.requires_grad for p in trainer.ref_model.parameters())
    assert trainer.ref_model.pretrained_model is trainer.ppo.ref_model
    stats = trainer.step([ids(tokenizer, "hi"), ids(tokenizer, "yo")], [ids(tokenizer, "ab"), ids(tokenizer, "c")],
                         [torch.tensor(1.0), torch.tensor(0.0)])
    assert "time/ppo/compute_advantages" in stats
    with pytest.raises(ValueError, match="dimensional"):
        trainer.step([ids(tokenizer, "hi")] * 2, [ids(tokenizer, "ab")] * 2, [torch.tensor([[1.0]])] * 2)
    # TRL's _kl_penalty, hand-computed
    lp, ref = torch.tensor([[0.5, 0.2]]), torch.tensor([[0.4, 0.3]])
    trainer.config.kl_penalty = "mse"
    torch.testing.assert_close(trainer._kl_penalty(lp, ref), torch.tensor([[0.005, 0.005]]))
    trainer.config.kl_penalty = "full"
    p, q = torch.tensor([[[0.5, 0.5]]]), torch.tensor([[[0.9, 0.1]]])
    expected = (0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1))
    assert trainer._kl_penalty(p.log(), q.log()).item() == pytest.approx(expected, rel=1e-5)
    # TRL's loss on a hand-computable minibatch: ratio 1, advantages ±1, values = returns
    one = torch.ones(1, 2)
    pg, vf, st = trainer.loss(torch.zeros(1, 2), one, torch.zeros(1, 2, 3), one, torch.zeros(1, 2), one,
                              torch.tensor([[1.0, -1.0]]), one)
    assert pg.item() == pytest.approx(0.0) and vf.item() == pytest.approx(0.0)
    assert st["policy/entropy"].item() == pytest.approx(math.log(3), rel=1e-5)


# ---------------------------------------------------------------- reward adapters

def test_reward_adapter_scores_on_the_shared_base_and_survives_ppo_steps(model, tokenizer, tmp_path):
    """TRL's multi-adapter setup: policy LoRA, reference = adapters off, reward = a second (frozen)
    LoRA adapter with its score head, all on one base model. The adapter's scores equal those of the
    reward model it was trained as, before and after PPO updates of the policy adapter."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from tether import AutoModelForCausalLMWithValueHead

    model.save_pretrained(tmp_path / "base")
    inputs = torch.tensor([[5, 6, 7, 8, 9], [9, 8, 7, 6, 5]])
    torch.manual_seed(0)
    rm = AutoModelForSequenceClassification.from_pretrained(tmp_path / "base", num_labels=1)
    rm = get_peft_model(rm, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.3, task_type="SEQ_CLS",
                                       target_modules=["q_proj", "v_proj"]))
    optimizer = torch.optim.Adam([p for p in rm.parameters() if p.requires_grad], lr=1e-2)
    rm(inputs).logits.mean().backward()
    optimizer.step()
    rm.eval()
    with torch.no_grad():
        expected = rm(inputs).logits
    rm.save_pretrained(tmp_path / "rm-adapter")

    policy = get_peft_model(AutoModelForCausalLM.from_pretrained(tmp_path / "base"),
                            LoraConfig(r=4, lora_alpha=8, lora_dropout=0.3, task_type="CAUSAL_LM",
                                       target_modules=["q_proj", "v_proj"]))
    wrapped = AutoModelForCausalLMWithValueHead.from_pretrained(policy, reward_adapter=str(tmp_path / "rm-adapter"))
    torch.testing.assert_close(wrapped.compute_reward_score(inputs)[:, -1, :], expected, atol=1e-5, rtol=1e-5)
    trainer = PPOTrainer(PPOConfig(batch_size=2, mini_batch_size=1, learning_rate=1e-2), wrapped, None, tokenizer)
    assert trainer.ref_model is None  # the reference is the base with adapters off: no copy
    queries, responses = [ids(tokenizer, "hi"), ids(tokenizer, "yo")], [ids(tokenizer, "ab"), ids(tokenizer, "cd")]
    policy_lora = {n: p.clone() for n, p in policy.named_parameters() if "lora" in n and "reward" not in n}
    for _ in range(2):
        trainer.step(queries, responses, [torch.tensor(1.0), torch.tensor(0.0)])
        wrapped.train()  # as TRL's tests do between steps: dropout must still be off where it matters
    torch.testing.assert_close(trainer.compute_reward_score(inputs)[:, -1, :], expected, atol=1e-5, rtol=1e-5)
    params = dict(policy.named_parameters())
    assert any(not torch.equal(params[n], v) for n, v in policy_lora.items())  # the policy adapter trained
    for name, p in params.items():
        trainable = "lora" in name and "reward" not in name
        assert p.requires_grad == trainable, name
        assert (p.grad is not None) == trainable, name
    plain = AutoModelForCausalLMWithValueHead.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "base"))
    with pytest.raises(ValueError, match="does not support"):
        plain.compute_reward_score(inputs)


# ---------------------------------------------------------------- tether.extras

def test_best_of_n_keeps_the_best_scored_of_sample_size_texts(model, tokenizer):
    from tether import AutoModelForCausalLMWithValueHead
    from tether.core import LengthSampler
    from tether.extras import BestOfNSampler

    seen = []

    def score(texts):  # longer text without spaces scores higher: any deterministic rule will do
        seen.append(list(texts))
        return [sum(ch != " " for ch in t) * 1.0 + i * 1e-3 for i, t in enumerate(texts)]

    sampler = BestOfNSampler(AutoModelForCausalLMWithValueHead.from_pretrained(model), tokenizer, score,
                             LengthSampler(3, 6), sample_size=5, n_candidates=2, seed=0)
    queries = [ids(tokenizer, "hello"), ids(tokenizer, "abc")]
    out = sampler.generate(queries, do_sample=True, pad_token_id=tokenizer.pad_token_id)
    assert len(out) == 2 and len(seen) == 2 and all(len(texts) == 5 for texts in seen)
    for best, texts in zip(out, seen):
        scores = {t: sum(ch != " " for ch in t) + texts.index(t) * 1e-3 for t in texts}
        assert best == sorted(texts, key=lambda t: -scores[t])[:2]
    assert all(t.startswith(q) for q, texts in zip(("hello", "abc"), seen) for t in texts)  # query included, as TRL
    with pytest.raises(ValueError, match="n_candidates"):
        BestOfNSampler(model, tokenizer, score, LengthSampler(3, 6), sample_size=2, n_candidates=3)


# ---------------------------------------------------------------- tool-using episodes

def test_text_environment_runs_the_tool_protocol_and_masks_tool_tokens(model, tokenizer):
    """A scripted policy calls a tool, reads its answer and submits; the tool's tokens get mask 0,
    the model's 1, and step() trains on the model's tokens only."""
    from tether import AutoModelForCausalLMWithValueHead, TextEnvironment

    wrapped = AutoModelForCausalLMWithValueHead.from_pretrained(model)
    turns = iter(["<request><Calc>1+2<call> extra words", "Result=3<submit> more", "never used"])
    calls = []

    def scripted_generate(input_ids, attention_mask, stopping_criteria, **kwargs):
        text = next(turns)
        new = ids(tokenizer, text).repeat(input_ids.shape[0], 1)
        out = torch.cat([input_ids, new], dim=1)
        calls.append(bool(stopping_criteria[0](out, None).all()))  # our stop criterion sees the stop string
        return out

    wrapped.generate = scripted_generate
    env = TextEnvironment(wrapped, tokenizer, {"Calc": lambda q: str(eval(q))},  # noqa: S307 - test tool
                          lambda texts, answers: [float("Result=%d" % a in t) for t, a in zip(texts, answers)],
                          prompt="Q: ", generation_kwargs={"eos_token_id": -1, "max_new_tokens": 40})
    queries, responses, masks, rewards, histories = env.run(["what is 1+2?"], answers=[3])
    history = histories[0]
    assert history.text == "Q: what is 1+2?<request><Calc>1+2<call>3<response>Result=3<submit>"
    assert rewards == [1.0] and history.completed and calls == [True, True]
    text = tokenizer.decode(responses[0])
    assert text == "<request><Calc>1+2<call>3<response>Result=3<submit>"
    tool = len(ids(tokenizer, "3<response>"))
    call = len(ids(tokenizer, "<request><Calc>1+2<call>"))
    assert masks[0].tolist() == [1] * call + [0] * tool + [1] * (len(responses[0]) - call - tool)
    trainer = PPOTrainer(PPOConfig(batch_size=1, mini_batch_size=1), wrapped, None, tokenizer)
    trainer.step(queries, responses, [torch.tensor(1.0)], masks)
    assert trainer.ppo.last_experience.response_mask[0].tolist() == [bool(m) for m in masks[0].tolist()]
    assert env.parse_tool_call("<request><Calc>4*3<call>") == ("Calc", "4*3")
    assert env.parse_tool_call("no call here") == (None, None)


def test_dropout_stays_off_in_ppo_after_a_program_calls_model_train(tokenizer):
    """TRL's tests and programs call model.train() between steps; tether's forwards keep dropout off,
    so at lr 0 the new logprobs equal the old ones exactly (approx KL 0; with dropout it is not)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1]))
    from tiny import tiny_llama

    from tether import AutoModelForCausalLMWithValueHead

    wrapped = AutoModelForCausalLMWithValueHead.from_pretrained(tiny_llama(tokenizer, attention_dropout=0.5))
    trainer = PPOTrainer(PPOConfig(batch_size=2, mini_batch_size=1, learning_rate=0.0), wrapped, None, tokenizer)
    wrapped.train()
    stats = trainer.step([ids(tokenizer, "hello"), ids(tokenizer, "abc")],
                         [ids(tokenizer, "some answer"), ids(tokenizer, "other one")],
                         [torch.tensor(1.0), torch.tensor(0.0)])
    assert stats["policy/approxkl"] == 0.0 and stats["policy/clipfrac"] == 0.0


def test_a_bf16_trl_model_runs_bf16_mixed_and_says_its_weights_are_cast(model, tokenizer, caplog):
    from tether import AutoModelForCausalLMWithValueHead

    wrapped = AutoModelForCausalLMWithValueHead.from_pretrained(model.to(torch.bfloat16))
    with caplog.at_level(logging.WARNING):
        trainer = PPOTrainer(PPOConfig(batch_size=2, mini_batch_size=1), wrapped, None, tokenizer)
    assert trainer.precision.mixed and "cast to float32 in place" in caplog.text
    assert all(p.dtype == torch.float32 for p in wrapped.pretrained_model.parameters())


def test_an_encoder_decoder_policy_trains_through_train_too():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1]))
    from tiny import tiny_tokenizer

    tok = tiny_tokenizer(chat_template=False)
    trainer = PPOTrainer(PPOConfig(batch_size=2, mini_batch_size=1, max_new_tokens=5, whiten_scores=True),
                         tiny_t5(tok), tok)
    stats = trainer.train(["hello there", "abc", "xyz", "qq"], reward_fn=lambda p, c: [float(len(x)) for x in c],
                          max_iterations=2, progress=False)
    assert len(stats) == 2 and all(math.isfinite(s["loss/total"]) for s in stats)
    assert 0 < stats[-1]["tokens/response_len_mean"] <= 5
