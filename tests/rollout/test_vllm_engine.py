"""The vLLM rollout engine on a tiny Llama (CPU, fp32, in this process): its samples mean what the HF
engine's mean, its weights follow the policy every iteration (tied head and merged LoRA included),
and a weight update that did not happen stops the run.

Needs vLLM (``bash scripts/setup-vllm.sh``, then ``.venv-vllm/bin/python -m pytest -m vllm``); skipped
without it. vLLM's CPU attention supports head sizes of 32 and up, so the model has head_dim 32.
fp32 logprobs of vLLM and of the trainer's forward differ by ~1e-6 on this model (kernel order);
the tolerances (1e-4 max per token) are far below what one PPO update at lr 1e-2 moves them (> 1e-2)."""

import copy

import pytest
import torch

pytest.importorskip("vllm")

from tether import PPOConfig, PPOTrainer  # noqa: E402
from tether.rollout import HFEngine, SamplingParams  # noqa: E402
from tether.rollout.vllm import VLLMEngine  # noqa: E402
from tether.train.faults import EngineMismatchError  # noqa: E402
from tiny import tiny_llama  # noqa: E402

pytestmark = pytest.mark.vllm
PROMPTS = ["hello there", "abc", "what is up", "zz top"]


def vllm_llama(tokenizer, tied=True, seed=0, **overrides):
    return tiny_llama(tokenizer, seed=seed, hidden=64, head_dim=32, tie_word_embeddings=tied, **overrides)


def engine():
    return VLLMEngine(enforce_eager=True, kv_cache_gib=0.25, max_model_len=512)


def make_trainer(model, tokenizer, **overrides):
    config = dict(batch_size=4, mini_batch_size=2, ppo_epochs=2, max_new_tokens=8, learning_rate=1e-2)
    config.update(overrides)
    return PPOTrainer(PPOConfig(**config), model, tokenizer, engine=engine())


def iterate(trainer, prompts=PROMPTS):
    responses = trainer.generate(prompts)
    return trainer.step(prompts, responses, [float(len(r)) - 4 for r in responses])


def left_padded(tokenizer, prompts):
    rows = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    width = max(map(len, rows))
    ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows]).bool()
    return ids, mask


def test_engine_logprobs_equal_the_trainers_after_every_update(tokenizer):
    model = vllm_llama(tokenizer)
    trainer = make_trainer(model, tokenizer)
    start = copy.deepcopy(model.state_dict())
    try:
        for _ in range(3):
            stats = iterate(trainer)
            assert stats["rollout/logprob_diff_max"] < 1e-4
        moved = max((start[k] - v).abs().max().item() for k, v in trainer.policy.state_dict().items())
        assert moved > 1e-2  # the updates were real: stale weights would show
        assert trainer.engine.syncs == 3
    finally:
        trainer.close()


def test_an_update_skipped_stops_the_run(tokenizer, monkeypatch):
    trainer = make_trainer(vllm_llama(tokenizer), tokenizer)
    try:
        iterate(trainer)
        monkeypatch.setattr(trainer.engine, "update_weights", lambda model: None)
        with pytest.raises(EngineMismatchError):
            iterate(trainer)
    finally:
        trainer.close()


def test_a_tied_head_left_out_of_the_update_stops_the_run(tokenizer, monkeypatch):
    """vLLM's CPU backend keeps its own lm_head: the update must send it even when tied."""
    import tether.rollout.vllm as vllm_engine

    full = vllm_engine.engine_weights
    model = vllm_llama(tokenizer, tied=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    trainer = make_trainer(model, tokenizer)
    try:
        iterate(trainer)
        monkeypatch.setattr(vllm_engine, "engine_weights",
                            lambda m, dtype: ((k, v) for k, v in full(m, dtype) if k != "lm_head.weight"))
        with pytest.raises(EngineMismatchError):
            iterate(trainer)
    finally:
        trainer.close()


def test_lora_policy_is_sampled_with_its_adapters_merged(tokenizer):
    from tether import LoraSettings
    from tether.models import apply_lora

    model = apply_lora(vllm_llama(tokenizer, tied=False), LoraSettings(r=4, alpha=8))
    trainer = make_trainer(model, tokenizer, learning_rate=5e-2)
    try:
        for _ in range(3):
            stats = iterate(trainer)
            assert stats["rollout/logprob_diff_max"] < 1e-4
        lora_b = [p for n, p in trainer.policy.named_parameters() if "lora_B" in n]
        assert max(p.abs().max().item() for p in lora_b) > 1e-2  # adapters trained (they start at 0)
    finally:
        trainer.close()


@pytest.mark.parametrize("min_new_tokens", [0, 3])
def test_greedy_responses_and_stops_equal_the_hf_engines(tokenizer, min_new_tokens):
    """Greedy decoding is deterministic: both engines must produce the same tokens, cut at the same
    stop token, within the same max_new_tokens (and the same min_new_tokens before a stop)."""
    model = vllm_llama(tokenizer, initializer_range=0.3)  # sharp logits: varied greedy paths, no near-ties
    prompts = ["hello there", "abc", "what is up", "zz top", "a", "the quick brown fox"]
    ids, mask = left_padded(tokenizer, prompts)
    probe = SamplingParams(max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    free = HFEngine(model).generate(ids, mask, probe)
    # stop tokens: tokens greedy decoding reaches mid-response, so some rows stop early, some do not;
    # one of them comes second in a row, where min_new_tokens=3 forbids it
    stops = sorted({int(free.response_ids[0, 4]), int(free.response_ids[1, 6]), int(free.response_ids[2, 1])})
    params = SamplingParams(max_new_tokens=12, do_sample=False, eos_token_ids=stops, min_new_tokens=min_new_tokens,
                            pad_token_id=tokenizer.pad_token_id)
    hf = HFEngine(model).generate(ids, mask, params)
    vllm = engine()
    try:
        vllm.update_weights(model)
        out = vllm.generate(ids, mask, params)
    finally:
        vllm.close()
    assert hf.ended.any() and not hf.ended.all()  # the stop tokens matter here
    width = hf.response_ids.shape[1]
    assert out.response_ids.shape[1] == width
    assert torch.equal(out.response_ids, hf.response_ids)
    assert torch.equal(out.response_mask, hf.response_mask)
    assert torch.equal(out.ended, hf.ended)
    assert out.sample_logprobs is None  # greedy: not samples of π, no logprobs to compare


def test_group_sampling_is_one_request_per_prompt_and_seeded_by_torch(tokenizer, monkeypatch):
    model = vllm_llama(tokenizer)
    prompts = ["hello there"] * 3 + ["abc"] * 3
    ids, mask = left_padded(tokenizer, prompts)
    params = SamplingParams(max_new_tokens=10, temperature=1.0, pad_token_id=tokenizer.pad_token_id,
                            eos_token_ids=[tokenizer.eos_token_id])
    vllm = engine()
    try:
        vllm.update_weights(model)
        calls = []
        real = vllm.llm.generate
        monkeypatch.setattr(vllm.llm, "generate", lambda reqs, sps, **kw: calls.append([s.n for s in sps]) or
                            real(reqs, sps, **kw))
        torch.manual_seed(5)
        first = vllm.generate(ids, mask, params)
        torch.manual_seed(5)
        again = vllm.generate(ids, mask, params)
        torch.manual_seed(6)
        other = vllm.generate(ids, mask, params)
    finally:
        vllm.close()
    assert calls[0] == [3, 3]  # two prompts, n = 3 each
    rows = [tuple(r[m].tolist()) for r, m in zip(first.response_ids, first.response_mask)]
    assert len(set(rows[:3])) > 1 and len(set(rows[3:])) > 1  # a group's samples differ
    assert torch.equal(first.response_ids, again.response_ids)  # tether's RNG decides the samples
    assert not torch.equal(first.response_ids, other.response_ids)
    assert first.response_mask.sum(1).max() <= 10


def test_starting_the_engine_leaves_the_processs_rngs_and_threads_alone(tokenizer):
    import random

    import numpy as np

    model = vllm_llama(tokenizer)
    real_set_num_threads = torch.set_num_threads
    threads = torch.get_num_threads()
    random.seed(11)
    np.random.seed(11)
    torch.manual_seed(11)
    expected = random.random(), np.random.rand(), torch.rand(3)
    random.seed(11)
    np.random.seed(11)
    torch.manual_seed(11)
    vllm = engine()
    try:
        vllm.update_weights(model)  # starts vLLM, which seeds every global RNG with its own seed
        drawn = random.random(), np.random.rand(), torch.rand(3)
        assert drawn[0] == expected[0] and drawn[1] == expected[1]
        assert torch.equal(drawn[2], expected[2])  # the run's seed still decides every later draw
        assert torch.set_num_threads is real_set_num_threads  # vLLM's CPU worker replaces it with a no-op
        assert torch.get_num_threads() == threads
    finally:
        vllm.close()


def test_train_loop_runs_with_the_vllm_engine(tokenizer, tmp_path):
    import json

    trainer = make_trainer(vllm_llama(tokenizer), tokenizer)
    try:
        history = trainer.train(PROMPTS * 2, reward_fn=lambda p, c: [float(len(x)) - 4 for x in c],
                                max_iterations=2, output_dir=tmp_path, progress=False)
    finally:
        trainer.close()
    assert len(history) == 2
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(r["rollout/logprob_diff_max"] < 1e-4 for r in rows)
    assert (tmp_path / "final" / "config.json").exists()


def test_penalties_are_refused_with_the_option_named(tokenizer):
    trainer = make_trainer(vllm_llama(tokenizer), tokenizer)
    try:
        with pytest.raises(ValueError, match="repetition_penalty"):
            trainer.generate(PROMPTS, repetition_penalty=1.3)
    finally:
        trainer.close()


TORCHRUN_SETUPS = {"ddp": "sharding: ddp", "fsdp2": "sharding: fsdp2",
                   "fsdp2+lora": "sharding: fsdp2, value_model: separate"}


@pytest.mark.parametrize("setup", list(TORCHRUN_SETUPS))
def test_torchrun_two_processes_each_sample_with_their_own_engine(tokenizer, tmp_path, setup):
    """`tether ppo` under torchrun with rollout.engine: vllm, a tiny Llama saved to disk: each rank
    starts an engine, samples its share of the prompts and keeps it in step with the policy, whether
    every rank holds the policy (ddp) or half of it (fsdp2: the weights are gathered one tensor at a
    time into each rank's engine, LoRA merged). The engine's logprobs of its samples equal the trainer's
    in every iteration, so each update reached it whole."""
    import json
    import os
    import subprocess
    import sys

    vllm_llama(tokenizer).save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": f"question {i}"}) for i in range(8)))
    config = tmp_path / "run.yaml"
    lora = ", lora: {r: 4, alpha: 8}" if "lora" in setup else ""
    config.write_text(f"model: {{name_or_path: {tmp_path / 'tiny'}{lora}}}\ndata: {{path: {prompts}}}\n"
                      "reward: {rule: length}\n"
                      f"train: {{batch_size: 2, ppo_epochs: 1, max_new_tokens: 6, learning_rate: 0.01, "
                      f"{TORCHRUN_SETUPS[setup]}}}\n"
                      "rollout: {engine: vllm, enforce_eager: true, kv_cache_gib: 0.25, max_model_len: 256}\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CI": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "tether", "ppo", "--config", str(config), "--out", str(tmp_path / "run")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)  # printed once, by rank 0 (vLLM prints nothing there)
    assert summary["iterations"] == 2 and summary["engine"] == "vllm"
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["rollout/logprob_diff_max"] < 1e-4 for r in rows)
    # both ranks trained: 2 ranks x 2 rows sampled per iteration, rank 0's two logged
    assert len((tmp_path / "run" / "samples.jsonl").read_text().splitlines()) == 4


def test_a_batch_larger_than_one_scheduler_step_samples_with_seeds(tokenizer):
    """More prompt tokens than one scheduler step takes: with chunked prefill, vLLM on a CPU fails on
    seeded requests whose prefill was split ("CPU Generator does not use offset")."""
    model = vllm_llama(tokenizer)
    prompts = [f"prompt number {i} with some more words" for i in range(40)]  # ~1400 prompt tokens
    ids, mask = left_padded(tokenizer, prompts)
    assert int(mask.sum()) > 512
    params = SamplingParams(max_new_tokens=4, temperature=1.0, pad_token_id=tokenizer.pad_token_id)
    vllm = VLLMEngine(enforce_eager=True, kv_cache_gib=0.25, max_model_len=512, max_num_batched_tokens=512)
    try:
        vllm.update_weights(model)
        out = vllm.generate(ids, mask, params)
    finally:
        vllm.close()
    assert out.response_ids.shape == (40, 4)
