"""Two CPU processes (gloo) on halves of a global batch match one process on the whole batch:
losses, gradients after one update, parameters and every logged statistic, within float tolerance.

Gradients of one process and of two differ by float rounding only (~1e-8 here; the summation order
differs); the tolerances (1e-4 relative, 1e-6 absolute) are two orders above that, and far below what a
missing ×N correction (gradients half as large) or per-process whitening (other advantages) changes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.distributed.worker import VARIANTS

WORKER = Path(__file__).with_name("worker.py")


def crash_report(stderr: str) -> str:
    """The Python stacks faulthandler printed (where a rank died), then the tail of stderr."""
    at = stderr.find("Fatal Python error")
    return (stderr[at:at + 4000] + "\n...\n" if at >= 0 else "") + stderr[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("dp")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CI": "1", "PYTHONFAULTHANDLER": "1"}  # a crash shows its stack
    subprocess.run([sys.executable, str(WORKER), str(out)], env=env, check=True, capture_output=True)
    launched = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                               str(WORKER), str(out)], env=env, capture_output=True, text=True)
    assert launched.returncode == 0, crash_report(launched.stderr)
    return out, torch.load(out / "results-1.pt"), torch.load(out / "results-2.pt")


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_two_processes_match_one_on_the_same_global_batch(runs, variant):
    _, one, two = runs
    one, two = one[variant], two[variant]
    for s1, s2 in zip(one["stats"], two["stats"]):
        assert s1.keys() == s2.keys()
        for key in s1:
            assert s2[key] == pytest.approx(s1[key], rel=1e-4, abs=1e-6), key
    if variant.startswith("fsdp2"):  # the 2-process run really was sharded, and tied weights stayed one
        assert two["layout"]["sharded"] and not one["layout"]["sharded"]
        assert two["layout"]["tied"] == one["layout"]["tied"] == ("tied" in variant)
    assert one["grads"].keys() == two["grads"].keys() and one["grads"]
    for name in one["grads"]:
        torch.testing.assert_close(two["grads"][name], one["grads"][name], rtol=1e-4, atol=1e-6, msg=name)
    # SGD (lr 1): parameters move by lr x the summed gradients, so they agree to the gradients' tolerance
    moved = max((one["params"][n] - one["initial"][n]).abs().max().item() for n in one["params"])
    assert moved > 1e-2  # the updates are large enough for the comparison to mean something
    for name in one["params"]:
        torch.testing.assert_close(two["params"][name], one["params"][name], rtol=1e-4, atol=1e-6, msg=name)


def test_the_reference_run_reports_the_hand_computed_global_mean(runs):
    """The 1-process run the 2-process run is compared with logs the mean of all 8 scores."""
    _, one, _ = runs
    stats = one["separate-critic"]["stats"][0]
    assert stats["env/reward_mean"] == pytest.approx(sum([0.5, -1.0, 2.0, 0.0, 1.5, -0.5, 0.25, 1.0]) / 8)


def test_only_rank_0_writes_and_a_2_process_checkpoint_resumes_in_1(runs, tokenizer):
    from tether import PPOConfig, PPOTrainer
    from tiny import tiny_llama

    out, _, _ = runs
    run = out / "train-2proc"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    samples = (run / "samples.jsonl").read_text().splitlines()
    assert len(samples) == 2 * 2  # rank 0's two rows per iteration, no duplicates from rank 1
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000001", "step-000002"]
    saved = torch.load(run / "checkpoints" / "step-000002" / "trainer_state.pt", weights_only=True)
    assert len(saved["rng"]) == 2  # one RNG state per process

    config = PPOConfig(batch_size=2, mini_batch_size=2, ppo_epochs=1, max_new_tokens=4, seed=1)
    trainer = PPOTrainer(config, tiny_llama(tokenizer), tokenizer, reward_fn=lambda p, c: [float(len(x)) for x in c])
    history = trainer.train([f"prompt {i}" for i in range(12)], max_iterations=4, output_dir=run, resume="latest",
                            progress=False)
    # 2 processes x 2 prompts used 8 prompts in 2 iterations; 1 process continues at prompt 8
    assert trainer.iteration == 4 and len(history) == 2


def _sharded_trainer(tokenizer):
    from tether import PPOConfig, PPOTrainer
    from tests.distributed.worker import SHARDED_TRAIN, length_reward
    from tiny import tiny_llama

    return PPOTrainer(PPOConfig(**SHARDED_TRAIN), tiny_llama(tokenizer, tie_word_embeddings=True), tokenizer,
                      reward_fn=length_reward)


def test_a_sharded_run_stopped_and_resumed_matches_an_uninterrupted_one(runs):
    out, _, _ = runs

    def rows(run):
        return [{k: v for k, v in json.loads(line).items() if not k.startswith(("time/", "memory/"))}
                for line in (out / "sharded" / run / "metrics.jsonl").read_text().splitlines()]

    full, resumed = rows("full"), rows("resumed")
    assert [r["step"] for r in full] == [1, 2, 3, 4]
    assert resumed == full  # bit for bit: weights and optimiser shards, RNG streams, data position
    assert (out / "sharded" / "full" / "checkpoints" / "step-000004" / "sharded" / ".metadata").exists()


def test_a_sharded_checkpoint_loads_in_one_process_with_its_optimiser_state(runs, tokenizer):
    from safetensors.torch import load_file

    from tether.train.persistence import trained_modules
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    out, _, _ = runs
    step = out / "sharded" / "resumed" / "checkpoints" / "step-000002"
    trainer = _sharded_trainer(tokenizer)
    trainer.load_checkpoint(step)  # one process: DCP reshards the 2 processes' shards into whole tensors
    # the weights are those of the gathered Hugging Face export written with the checkpoint
    exported = load_file(step / "model.safetensors")
    own = trainer.policy.state_dict()
    assert exported and all(torch.equal(own[k], v) for k, v in exported.items())
    assert trainer.policy.lm_head.weight is trainer.policy.model.embed_tokens.weight  # still tied
    # the optimiser state equals the 2 processes' state gathered there
    probe = torch.load(out / "sharded" / "sharded-probe.pt", weights_only=False)
    mine = get_optimizer_state_dict(trained_modules(trainer.ppo), trainer.optimizer)
    theirs = probe["optim"]
    assert mine["state"].keys() == theirs["state"].keys() and mine["state"]
    for name, state in theirs["state"].items():
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(mine["state"][name][key], state[key], rtol=0, atol=0, msg=f"{name}.{key}")


def test_the_final_export_of_a_sharded_run_loads_with_from_pretrained(runs, tokenizer):
    from transformers import AutoModelForCausalLM

    out, _, _ = runs
    final = out / "sharded" / "full" / "final"
    config = json.loads((final / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]  # not FSDP's class name
    model = AutoModelForCausalLM.from_pretrained(final)
    trainer = _sharded_trainer(tokenizer)
    trainer.load_checkpoint(out / "sharded" / "full" / "checkpoints" / "step-000004")
    for name, value in trainer.policy.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value, rtol=0, atol=0, msg=name)
    critic = (final / "critic" / "config.json")
    assert json.loads(critic.read_text())["architectures"][0].startswith("Llama")


def test_greedy_generation_from_a_sharded_policy_equals_one_process(runs, tokenizer):
    from tests.distributed.worker import QUERIES

    out, _, _ = runs
    probe = torch.load(out / "sharded" / "sharded-probe.pt", weights_only=False)
    trainer = _sharded_trainer(tokenizer)
    trainer.load_checkpoint(out / "sharded" / "resumed" / "checkpoints" / "step-000002")
    one = trainer.generate(QUERIES, do_sample=False, max_new_tokens=6)
    assert one == probe["greedy"] == probe["per_layer"]  # both rollout modes of the 2 sharded processes
    assert probe["resharded"]
    assert probe["ref_sharded"]  # after training: the frozen reference's root resharded after its forwards


def test_a_sharded_reward_model_scores_as_one_process(runs, tokenizer):
    """Its scores on each rank's rows (3 forwards on rank 0, 1 on rank 1) equal the unsharded model's;
    it stays sharded after scoring and inside train()."""
    from tests.distributed.worker import REWARD_TEXTS
    from tether.rewards import RewardModelScorer
    from tiny import tiny_reward_model

    out, _, _ = runs
    probe = torch.load(out / "sharded" / "reward-probe.pt", weights_only=False)
    one = RewardModelScorer(tiny_reward_model(tokenizer), tokenizer, batch_size=1)(["q"] * 4, REWARD_TEXTS)
    torch.testing.assert_close(torch.tensor(probe["scores"]), torch.tensor(list(one)), rtol=1e-5, atol=1e-6)
    assert probe["sharded"]
    assert probe["iterations"] == 2 and all(r == r for r in probe["reward_mean"])


@pytest.mark.parametrize("case", ["tied", "untied", "lora"])
def test_the_vllm_weight_stream_of_a_sharded_policy_gathers_one_cast_tensor_at_a_time(runs, case):
    """What the vLLM engine receives from a policy sharded on 2 processes: the names and values one
    process sends for the unsharded model (tied head under both names, LoRA merged), each shard cast
    to the engine's dtype before it is gathered, and never two gathered tensors alive at once."""
    from tests.distributed.worker import STREAMED, streamed_model
    from tether.rollout.vllm import engine_weights

    out, _, _ = runs
    probe = torch.load(out / "sharded" / "weight-stream.pt", weights_only=False)[case]
    expected = {k: v.detach().clone() for k, v in engine_weights(streamed_model(case))}
    assert probe["sharded"] and probe["most_alive"] == 1
    assert list(probe["weights"]) == list(expected)
    assert probe["gathers"] == len(expected)  # every tensor of the state dict is a shard, gathered once per name
    if STREAMED[case].get("lora"):
        assert not any("lora_" in k or "base_layer" in k for k in expected)
        base = streamed_model(case).get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight
        assert not torch.equal(expected["model.layers.0.self_attn.q_proj.weight"], base)  # the merge shows
        # the delta is computed on row shards of B (2 x [16, 4] @ [4, 32]) instead of one [32, 4] @ [4, 32]:
        # summation order is the same per row, float noise at most
        for key in expected:
            torch.testing.assert_close(probe["weights"][key], expected[key], rtol=1e-6, atol=1e-7, msg=key)
        assert probe["gathered_dtypes"] == {torch.float32}
    else:
        for key in expected:  # cast then gather = gather then cast, exactly
            assert probe["weights"][key].dtype == torch.bfloat16
            assert torch.equal(probe["weights"][key], expected[key].to(torch.bfloat16)), key
        assert probe["gathered_dtypes"] == {torch.bfloat16}
    assert STREAMED[case]["tied"] == ("lm_head.weight" in expected and torch.equal(
        expected["lm_head.weight"], expected["model.embed_tokens.weight"]))


def test_torchrun_runs_the_ppo_command(tmp_path, model, tokenizer):
    model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": f"question {i}"}) for i in range(8)))
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {{name_or_path: {tmp_path / 'tiny'}}}\ndata: {{path: {prompts}}}\n"
                      "reward: {rule: length}\ntrain: {batch_size: 2, ppo_epochs: 1, max_new_tokens: 4}\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CI": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "tether", "ppo", "--config", str(config), "--out", str(tmp_path / "run")],
                          env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)  # printed once, by rank 0
    assert summary["iterations"] == 2  # 8 prompts / (2 per process x 2 processes)
    assert (tmp_path / "run" / "final" / "model.safetensors").exists()
