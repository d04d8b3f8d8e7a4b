"""TRL 0.11.4's public PPO surface, importable from tether, with TRL's documented behaviour."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tether import PPOConfig, PPOTrainer

# the stats TRL 0.11.4's own tests/test_ppo_trainer.py requires of step()
TRL_EXPECTED_STATS = [
    "objective/kl", "objective/kl_dist", "objective/logprobs", "objective/ref_logprobs", "objective/kl_coef",
    "objective/entropy", "ppo/mean_non_score_reward", "ppo/loss/policy", "ppo/loss/value", "ppo/loss/total",
    "ppo/policy/entropy", "ppo/policy/approxkl", "ppo/policy/policykl", "ppo/policy/clipfrac",
    "ppo/policy/advantages", "ppo/policy/advantages_mean", "ppo/policy/ratio", "ppo/returns/mean",
    "ppo/returns/var", "ppo/val/vpred", "ppo/val/error", "ppo/val/clipfrac", "ppo/val/mean", "ppo/val/var",
    "ppo/val/var_explained", "time/ppo/forward_pass", "time/ppo/compute_rewards", "time/ppo/optimize_step",
    "time/ppo/calc_stats", "time/ppo/total", "ppo/learning_rate",
]

# every field of TRL 0.11.4's PPOConfig, with a non-default value where that is harmless
TRL_FIELDS = dict(
    exp_name="x", seed=1, log_with=None, task_name="t", model_name="m", query_dataset="q", reward_model="r",
    remove_unused_columns=False, tracker_kwargs={}, accelerator_kwargs={}, project_kwargs={},
    tracker_project_name="p", push_to_hub_if_best_kwargs={}, steps=64, learning_rate=1e-5, adap_kl_ctrl=False,
    init_kl_coef=0.1, kl_penalty="mse", target=3.0, horizon=5000.0, gamma=0.99, lam=0.9, cliprange=0.1,
    cliprange_value=0.3, vf_coef=0.2, batch_size=8, forward_batch_size=None, mini_batch_size=2,
    gradient_accumulation_steps=2, world_size=None, ppo_epochs=2, max_grad_norm=0.5, optimize_cuda_cache=None,
    optimize_device_cache=False, early_stopping=False, target_kl=1.0, compare_steps=1, ratio_threshold=10.0,
    use_score_scaling=False, use_score_norm=False, score_clip=2.0, whiten_rewards=False,
    gradient_checkpointing=False, is_encoder_decoder=None, is_peft_model=None, backward_batch_size=None,
    global_backward_batch_size=None, global_batch_size=None, dataset_num_proc=None,
)


@pytest.fixture
def wrapped(model):
    from tether import AutoModelForCausalLMWithValueHead

    return AutoModelForCausalLMWithValueHead.from_pretrained(model)


def eos_heavy(model, tokenizer, bias: float = 10.0):
    """The tiny model with an LM head that puts ~99 % of the probability on EOS."""
    head = torch.nn.Linear(model.config.hidden_size, len(tokenizer), bias=True)
    torch.nn.init.zeros_(head.weight)
    with torch.no_grad():
        head.bias.zero_()
        head.bias[tokenizer.eos_token_id] = bias
    model.lm_head = head
    return model


def ids(tokenizer, text):
    return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_names_import_from_tether_and_tether_core():
    import tether
    import tether.core as core

    for name in ("AutoModelForCausalLMWithValueHead", "create_reference_model", "LengthSampler",
                 "respond_to_batch", "set_seed", "PPOConfig", "PPOTrainer"):
        assert getattr(tether, name) is not None
    for name in ("LengthSampler", "respond_to_batch", "set_seed", "masked_mean", "whiten", "logprobs_from_logits"):
        assert getattr(core, name) is not None


def test_value_head_model_from_an_object_a_directory_and_with_peft(model, tokenizer, tmp_path):
    from peft import LoraConfig

    from tether import AutoModelForCausalLMWithValueHead

    wrapped = AutoModelForCausalLMWithValueHead.from_pretrained(model, v_head_init_strategy="normal")
    ids_ = torch.tensor([[5, 6, 7, 8]])
    logits, loss, value = wrapped(input_ids=ids_)
    assert logits.shape == (1, 4, len(tokenizer)) and logits.dtype == torch.float32 and loss is None
    assert value.shape == (1, 4) and wrapped.pretrained_model is model
    assert wrapped.v_head.summary.weight.shape == (1, model.config.hidden_size)
    assert "v_head.summary.weight" in wrapped.state_dict()
    wrapped.save_pretrained(tmp_path / "vh")
    tokenizer.save_pretrained(tmp_path / "vh")
    again = AutoModelForCausalLMWithValueHead.from_pretrained(str(tmp_path / "vh"))
    torch.testing.assert_close(again.v_head.summary.weight, wrapped.v_head.summary.weight)
    lora = AutoModelForCausalLMWithValueHead.from_pretrained(
        str(tmp_path / "vh"), peft_config=LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    assert lora.is_peft_model
    assert lora.generate(input_ids=ids_, max_new_tokens=2, do_sample=False).shape == (1, 6)


def test_create_reference_model_freezes_a_copy_and_shares_the_first_layers(model):
    from tether import create_reference_model

    ref = create_reference_model(model)
    assert not any(p.requires_grad for p in ref.parameters()) and all(p.requires_grad for p in model.parameters())
    assert ref.model.layers[0].self_attn.q_proj.weight is not model.model.layers[0].self_attn.q_proj.weight
    shared = create_reference_model(model, num_shared_layers=1)
    # layer 0 (and the embeddings) are the same tensors, frozen in the policy too; layer 1 is a copy
    assert shared.model.layers[0].self_attn.q_proj.weight is model.model.layers[0].self_attn.q_proj.weight
    assert not model.model.layers[0].self_attn.q_proj.weight.requires_grad
    assert shared.model.layers[1].self_attn.q_proj.weight is not model.model.layers[1].self_attn.q_proj.weight
    assert model.model.layers[1].self_attn.q_proj.weight.requires_grad
    with pytest.raises(ValueError, match="no parameter matches layer 7"):
        create_reference_model(model, num_shared_layers=7)


def test_length_sampler_set_seed_and_respond_to_batch(model):
    from tether.core import LengthSampler, respond_to_batch, set_seed

    sampler = LengthSampler(4, 8)
    set_seed(3)
    first = [sampler() for _ in range(20)]
    set_seed(3)
    assert [sampler() for _ in range(20)] == first and set(first) <= set(range(4, 8)) and len(set(first)) > 1
    out = respond_to_batch(model, torch.tensor([[5, 6, 7]]), txt_len=5)
    assert out.shape == (1, 5)


def test_ppo_config_takes_every_trl_field_and_maps_them():
    config = PPOConfig(**TRL_FIELDS)
    assert (config.kl_coef, config.adaptive_kl, config.kl_target, config.kl_horizon) == (0.1, False, 3.0, 5000)
    assert config.kl_estimator == "k2" and config.kl_penalty == "mse" and config.init_kl_coef == 0.1
    assert config.query_dataset == "q" and config.log_with is None and config.exp_name == "x"
    assert config.total_ppo_epochs == math.ceil(64 / 8) and config.backward_batch_size == 4
    assert config.to_dict()["steps"] == 64
    assert PPOConfig().query_dataset == "stanfordnlp/imdb" and PPOConfig().steps == 20000  # TRL's defaults
    assert PPOConfig(forward_batch_size=2, batch_size=4).mini_batch_size == 2
    assert PPOConfig(kl_penalty="abs").kl_estimator == "abs"
    with pytest.warns(UserWarning, match="early stopping on policy KL is not implemented"):
        PPOConfig(early_stopping=True)
    with pytest.raises(TypeError, match="did you mean 'init_kl_coef'"):
        PPOConfig(init_kl_coeff=0.1)


def test_a_value_head_program_gets_trl_defaults_for_what_it_did_not_set(wrapped, model, tokenizer):
    trl = PPOTrainer(PPOConfig(mini_batch_size=4, init_kl_coef=0.1), wrapped, tokenizer)
    c = trl.config
    assert (c.batch_size, c.mini_batch_size, c.gradient_accumulation_steps) == (128, 4, 1)
    assert (c.learning_rate, c.kl_coef, c.adaptive_kl, c.max_grad_norm, c.temperature) == (1.41e-5, 0.1, True, None, 1.0)
    assert trl.value_head is wrapped.v_head and trl.model is wrapped and trl.policy is wrapped.pretrained_model
    assert not trl.value_head.training  # dropout off
    plain = PPOTrainer(PPOConfig(mini_batch_size=4), model, tokenizer)  # a tether program: tether's defaults
    assert (plain.config.batch_size, plain.config.temperature, plain.config.adaptive_kl) == (16, 0.7, False)


def test_trl_constructor_forms(wrapped, tokenizer):
    from tether import create_reference_model

    config = PPOConfig(batch_size=2, mini_batch_size=1)
    rows = [{"input_ids": ids(tokenizer, "hello")} for _ in range(5)]
    a = PPOTrainer(config, wrapped, None, tokenizer, rows)
    assert a.tokenizer is tokenizer and a.dataset is rows and a.ref_model is not None
    ref = create_reference_model(wrapped)
    b = PPOTrainer(config=config, model=wrapped, ref_model=ref, tokenizer=tokenizer, dataset=rows)
    assert b.ref_model is ref  # TRL's: the wrapper it was given
    sgd = torch.optim.SGD(wrapped.parameters(), lr=0.5)
    sched = torch.optim.lr_scheduler.StepLR(sgd, step_size=1, gamma=0.5)
    c = PPOTrainer(config, wrapped, None, tokenizer, rows, sgd, None, 1, sched)
    assert c.optimizer.optimizer is sgd and c.lr_scheduler.scheduler is sched  # accelerate's wrappers, as in TRL
    assert c.ref_model.pretrained_model.model.layers[0].mlp.up_proj.weight is wrapped.pretrained_model.model.layers[0].mlp.up_proj.weight
    q = [ids(tokenizer, "hi"), ids(tokenizer, "yo")]
    c.step(q, [ids(tokenizer, "ab"), ids(tokenizer, "cd")], [torch.tensor(1.0), torch.tensor(0.0)])
    assert sgd.param_groups[0]["lr"] == pytest.approx(0.25)  # the program's scheduler, once per step()
    with pytest.raises(TypeError, match="needs a tokenizer"):
        PPOTrainer(config, wrapped, None)


def test_dataloader_yields_batch_size_rows_through_the_collator(wrapped, tokenizer):
    from datasets import Dataset

    ds = Dataset.from_dict({"review": ["a b c"] * 7, "query": ["q"] * 7, "input_ids": [[1, 2]] * 7})
    collator = lambda rows: {k: [r[k] for r in rows] for k in rows[0]}  # noqa: E731
    trainer = PPOTrainer(PPOConfig(batch_size=3, mini_batch_size=1), wrapped, None, tokenizer, ds,
                         data_collator=collator)
    batches = list(trainer.dataloader)
    assert len(batches) == 2 and all(len(b["query"]) == 3 for b in batches)  # 7 rows: last partial dropped
    assert set(batches[0]) == {"query", "input_ids"}  # unused columns removed, as TRL did
    small = PPOTrainer(PPOConfig(batch_size=8, mini_batch_size=1), wrapped, None, tokenizer, ds, data_collator=collator)
    assert len(small.dataloader) == 0


def test_accelerator_attributes_programs_use(wrapped, tokenizer):
    trainer = PPOTrainer(PPOConfig(batch_size=2, mini_batch_size=1), wrapped, None, tokenizer)
    acc = trainer.accelerator
    assert acc.device == trainer.current_device == torch.device("cpu")
    assert acc.is_main_process and acc.num_processes == 1 and acc.process_index == 0 and not trainer.is_distributed
    assert acc.unwrap_model(wrapped) is wrapped
    assert acc.gather(torch.tensor([1.0, 2.0])).tolist() == [1.0, 2.0]
    acc.wait_for_everyone()


def test_eos_token_id_minus_one_runs_to_max_new_tokens(model, tokenizer):
    trainer = PPOTrainer(PPOConfig(batch_size=2, mini_batch_size=1), eos_heavy(model, tokenizer), tokenizer)
    q = ids(tokenizer, "hello")
    torch.manual_seed(0)
    assert trainer.generate(q, return_prompt=False, max_new_tokens=8).shape[1] < 3  # stops at EOS
    single = trainer.generate(q, return_prompt=False, max_new_tokens=8, eos_token_id=-1)
    assert single.shape == (1, 8) and (single == tokenizer.eos_token_id).sum() > 3  # EOS sampled, no stop
    assert trainer.generate(q, max_new_tokens=8, eos_token_id=-1).shape == (1, len(q) + 8)
    # a list is cut after its first EOS (TRL's remove_padding), unless remove_padding=False
    cut = trainer.generate([q, q], return_prompt=False, max_new_tokens=8, eos_token_id=-1)
    assert all(int(r[-1]) == tokenizer.eos_token_id and len(r) <= 8 for r in cut)
    full = trainer.generate([q, q], return_prompt=False, max_new_tokens=8, eos_token_id=-1, remove_padding=False)
    assert all(len(r) == 8 for r in full)


def test_min_length_forces_that_many_tokens(model, tokenizer):
    trainer = PPOTrainer(PPOConfig(batch_size=2, mini_batch_size=1), eos_heavy(model, tokenizer), tokenizer)
    q = ids(tokenizer, "hello")
    out = trainer.generate(q, max_new_tokens=8, min_length=len(q) + 5)
    assert out.shape[1] >= len(q) + 5


def test_temperature_unset_samples_at_one_in_a_trl_program(wrapped, tokenizer):
    trainer = PPOTrainer(PPOConfig(batch_size=2, mini_batch_size=1), wrapped, None, tokenizer)
    q = [ids(tokenizer, "hello"), ids(tokenizer, "abc")]
    responses = trainer.generate(q, return_prompt=False, max_new_tokens=4, top_k=0.0, top_p=1.0)
    seen = []
    real = trainer.ppo.make_experience
    trainer.ppo.make_experience = lambda r, s: seen.append(r.temperature) or real(r, s)
    trainer.step(q, responses, [torch.tensor(1.0), torch.tensor(0.0)])
    assert seen == [1.0]


def _step_grads(wrapped_factory, tokenizer, responses, masks):
    trainer = PPOTrainer(PPOConfig(batch_size=2, mini_batch_size=2, ppo_epochs=1, learning_rate=0.0),
                         wrapped_factory(), None, tokenizer)
    q = [ids(tokenizer, "hello"), ids(tokenizer, "abc")]
    stats = trainer.step(q, responses, [torch.tensor(1.0), torch.tensor(-1.0)], masks)
    return [p.grad.clone() for p in trainer.policy.parameters() if p.grad is not None], stats


def test_response_masks_restrict_the_loss(model, tokenizer):
    import copy

    from tether import AutoModelForCausalLMWithValueHead

    torch.manual_seed(0)
    base = AutoModelForCausalLMWithValueHead.from_pretrained(model)
    factory = lambda: copy.deepcopy(base)  # noqa: E731
    a = [ids(tokenizer, "xyzw"), ids(tokenizer, "pqrs")]
    b = [torch.cat([r[:-1], ids(tokenizer, "!")]) for r in a]  # differ only in the last token
    masks = [torch.tensor([1, 1, 1, 0]), torch.tensor([1, 0, 1, 0])]
    ga, sa = _step_grads(factory, tokenizer, a, masks)
    gb, _ = _step_grads(factory, tokenizer, b, masks)
    for x, y in zip(ga, gb):  # masked-out last tokens carry no loss, and nothing comes after them
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-7)
    assert sa["tokens/response_len_mean"] == pytest.approx(2.5)  # tether's key: 3 and 2 trained tokens
    assert sa["tokens/responses_len_mean"] == pytest.approx(4.0)  # TRL's key: the tokens given, as TRL counted
    gc, _ = _step_grads(factory, tokenizer, b, None)
    assert any(not torch.allclose(x, y) for x, y in zip(ga, gc))
    with pytest.raises(ValueError, match="response_masks\\[0\\] has 3 entries"):
        _step_grads(factory, tokenizer, a, [torch.ones(3), torch.ones(4)])


def test_trl_step_trains_on_every_given_token_and_reports_trls_stats(wrapped, tokenizer):
    trainer = PPOTrainer(PPOConfig(batch_size=2, mini_batch_size=1), wrapped, None, tokenizer)
    eos = tokenizer.eos_token_id
    q = [ids(tokenizer, "hello"), ids(tokenizer, "abc")]
    r = [torch.cat([ids(tokenizer, "ab"), torch.tensor([eos]), ids(tokenizer, "cd")]), ids(tokenizer, "xyz")]
    stats = trainer.step(q, r, [torch.tensor(1.0), torch.tensor(0.0)])
    assert stats["tokens/responses_len_mean"] == pytest.approx(4.0)  # 5 and 3 tokens: nothing cut at the EOS
    assert set(TRL_EXPECTED_STATS) <= set(stats)
    assert stats["ppo/mean_scores"] == pytest.approx(0.5) and stats["env/reward_mean"] == pytest.approx(0.5)
    assert stats["objective/logprobs"].shape == (2, 5)


def test_generate_ref_response_and_greedy_evaluation_in_a_trl_program(wrapped, tokenizer, caplog):
    trainer = PPOTrainer(PPOConfig(batch_size=2, mini_batch_size=1), wrapped, None, tokenizer)
    q = [ids(tokenizer, "hello"), ids(tokenizer, "abc")]
    response, ref = trainer.generate(q, return_prompt=False, generate_ref_response=True, max_new_tokens=3, top_k=0)
    assert len(response) == len(ref) == 2
    greedy = trainer.generate(q, return_prompt=False, do_sample=False, max_new_tokens=3)
    assert [g.tolist() for g in greedy] == [g.tolist() for g in trainer.generate(q, return_prompt=False,
                                                                                do_sample=False, max_new_tokens=3)]
    with caplog.at_level("WARNING"):
        trainer.step(q, greedy, [torch.tensor(1.0), torch.tensor(0.0)])  # as TRL did, with one warning
    assert "do_sample=False" in caplog.text and "as TRL did" in caplog.text


def test_log_stats_with_log_with_writes_metrics_and_samples(wrapped, tokenizer, tmp_path):
    config = PPOConfig(batch_size=2, mini_batch_size=1, log_with="tensorboard",
                       project_kwargs={"logging_dir": str(tmp_path / "logs")})
    trainer = PPOTrainer(config, wrapped, None, tokenizer)
    q = [ids(tokenizer, "hello"), ids(tokenizer, "abc")]
    rewards = [torch.tensor(1.0), torch.tensor(0.0)]
    stats = trainer.step(q, [ids(tokenizer, "ab"), ids(tokenizer, "cd")], rewards)
    trainer.log_stats(stats, {"query": ["hello", "abc"], "response": ["ab", "cd"]}, rewards)
    rows = [json.loads(line) for line in (tmp_path / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1  # one row per step: step() does not log, log_stats does (as TRL)
    assert rows[-1]["env/reward_mean"] == 0.5 and "ppo/loss/total" in rows[-1]
    assert len((tmp_path / "logs" / "samples.jsonl").read_text().splitlines()) == 2
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "logs").rglob("*"))
    quiet = PPOTrainer(PPOConfig(batch_size=2, mini_batch_size=1), wrapped, None, tokenizer)
    quiet.log_stats(stats, {"query": ["a"], "response": ["b"]}, rewards)  # no log directory: nothing, no error


def test_trl_gpt2_sentiment_notebook_runs_with_the_imports_changed(tmp_path, model, tokenizer):
    model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    script = Path(__file__).parent / "programs" / "gpt2_sentiment.py"
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "tiny"), str(tmp_path / "out")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rewards (before)" in done.stdout and "rewards (after)" in done.stdout  # the evaluation table
    keys = eval(done.stdout.split("STATS_KEYS", 1)[1].strip())  # noqa: S307 - our own script's output
    assert set(TRL_EXPECTED_STATS) <= set(keys)
    assert (tmp_path / "out" / "v_head.safetensors").exists()
    assert "wandb" in done.stderr  # log_with="wandb" without wandb installed: one clear warning


def test_a_config_from_hfargumentparser_counts_only_the_options_given(wrapped, tokenizer):
    """TRL's example scripts build PPOConfig with HfArgumentParser, which passes every field."""
    from transformers import HfArgumentParser

    config, = HfArgumentParser((PPOConfig,)).parse_args_into_dataclasses(args=["--mini_batch_size", "2"])
    trainer = PPOTrainer(config, wrapped, None, tokenizer)
    assert (trainer.config.batch_size, trainer.config.mini_batch_size, trainer.config.kl_coef) == (128, 2, 0.2)
    # TRL's own option names on the command line (examples/scripts/ppo.py --log_with=wandb ...)
    config, = HfArgumentParser((PPOConfig,)).parse_args_into_dataclasses(args=[
        "--log_with", "tensorboard", "--init_kl_coef", "0.1", "--steps", "64", "--adap_kl_ctrl", "False",
        "--kl_penalty", "abs", "--batch_size", "4"])
    assert (config.kl_coef, config.adaptive_kl, config.kl_estimator, config.log_with, config.steps) == \
        (0.1, False, "abs", "tensorboard", 64)
    assert config.total_ppo_epochs == 16 and config.use_score_scaling is False
    assert config.__dict__["_explicit"] == {"kl_coef", "adaptive_kl", "kl_estimator", "batch_size"}


def test_trl_quickstart_runs_as_written(model, tokenizer, tmp_path):
    """TRL 0.11.4's docs/source/quickstart.mdx, with the model replaced by a local one."""
    from transformers import AutoModelForCausalLM

    from tether import AutoModelForCausalLMWithValueHead

    model.save_pretrained(tmp_path / "gpt2")
    tokenizer.save_pretrained(tmp_path / "gpt2")
    model = AutoModelForCausalLMWithValueHead.from_pretrained(str(tmp_path / "gpt2"))
    ref_model = AutoModelForCausalLMWithValueHead.from_pretrained(str(tmp_path / "gpt2"))
    tokenizer.pad_token = tokenizer.eos_token
    ppo_config = {"mini_batch_size": 1, "batch_size": 1}
    config = PPOConfig(**ppo_config)
    ppo_trainer = PPOTrainer(config, model, ref_model, tokenizer)
    query_txt = "This morning I went to the "
    query_tensor = tokenizer.encode(query_txt, return_tensors="pt").to(model.pretrained_model.device)
    generation_kwargs = {"min_length": -1, "top_k": 0.0, "top_p": 1.0, "do_sample": True,
                         "pad_token_id": tokenizer.eos_token_id, "max_new_tokens": 20}
    response_tensor = ppo_trainer.generate([item for item in query_tensor], return_prompt=False, **generation_kwargs)
    tokenizer.decode(response_tensor[0])
    reward = [torch.tensor(1.0, device=model.pretrained_model.device)]
    train_stats = ppo_trainer.step([query_tensor[0]], [response_tensor[0]], reward)
    assert math.isfinite(train_stats["ppo/loss/total"])
    model.save_pretrained(tmp_path / "my-fine-tuned-model-ppo")
    AutoModelForCausalLM.from_pretrained(tmp_path / "my-fine-tuned-model-ppo")
    assert ppo_trainer.accelerator.state.deepspeed_plugin is None


def test_a_trainer_checkpoint_reloads_as_a_value_head_model(wrapped, tokenizer, tmp_path):
    from tether import AutoModelForCausalLMWithValueHead

    trainer = PPOTrainer(PPOConfig(batch_size=2, mini_batch_size=1), wrapped, None, tokenizer)
    with torch.no_grad():
        wrapped.v_head.summary.bias.fill_(0.25)
    trainer.save_pretrained(tmp_path / "ckpt")
    again = AutoModelForCausalLMWithValueHead.from_pretrained(str(tmp_path / "ckpt"))
    assert again.v_head.summary.bias.item() == pytest.approx(0.25)
