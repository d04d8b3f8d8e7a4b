"""Run by tests/distributed/test_data_parallel.py: once with plain python (1 process) and once under
torchrun (2 processes), on the same global batch. Rank 0 saves what the test compares."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tiny import tiny_llama, tiny_reward_model, tiny_tokenizer  # noqa: E402

from tether import LoraSettings, PPOConfig, PPOTrainer  # noqa: E402
from tether.models import apply_lora  # noqa: E402
from tether.train.distributed import Distributed, end_worker_process  # noqa: E402

GLOBAL_BATCH = 8
QUERIES = [f"question {i}: {'why ' * (i % 3)}" for i in range(GLOBAL_BATCH)]
RESPONSES = ["yes", "no way", "a longer answer here", "ok", "fine then", "b", "maybe so", "sure thing!"]
SCORES = [0.5, -1.0, 2.0, 0.0, 1.5, -0.5, 0.25, 1.0]
SGD_LR = 1.0
VARIANTS = {
    "separate-critic": dict(value_model="separate"),
    "value-head+adaptive-kl+whitened-scores": dict(value_model="head", adaptive_kl=True, kl_target=0.01,
                                                   whiten_scores=True, entropy_coef=0.01),
    "lora+seq-mean": dict(loss_aggregation="seq-mean-token-mean", kl_loss_coef=0.1, value_model="separate"),
    "reinforce_pp": dict(algorithm="reinforce_pp"),
    # groups of 2 (one per process pair of rows), one group of equal scores left out of the loss on rank 0
    # only: the sequence count that normalises the loss must be global and count rows in the loss
    "dapo+gspo_token+filtered": dict(algorithm="dapo", num_generations=2, policy_loss="gspo_token",
                                     loss_aggregation="seq-mean-token-mean"),
    "trl-value-head-model": dict(),  # a TRL program: AutoModelForCausalLMWithValueHead, TRL's defaults
    # FSDP2: every trained model sharded across the 2 processes (1 process: unsharded, the reference)
    "fsdp2+separate-critic": dict(sharding="fsdp2", value_model="separate", entropy_coef=0.01),
    "fsdp2+value-head+adaptive-kl": dict(sharding="fsdp2", value_model="head", adaptive_kl=True, kl_target=0.01),
    "fsdp2+lora+seq-mean": dict(sharding="fsdp2", loss_aggregation="seq-mean-token-mean", kl_loss_coef=0.1,
                                value_model="separate"),
    "fsdp2+reinforce_pp": dict(sharding="fsdp2", algorithm="reinforce_pp"),
    "fsdp2+tied-embeddings": dict(sharding="fsdp2", value_model="head"),
}


def full(tensor: torch.Tensor) -> torch.Tensor:
    """A sharded (DTensor) parameter or gradient as the whole tensor; a plain one as it is."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def run_variant(name: str, dist: Distributed) -> dict:
    tokenizer = tiny_tokenizer()
    model = tiny_llama(tokenizer, tie_word_embeddings="tied" in name)
    if "lora" in name:
        model = apply_lora(model, LoraSettings(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    if name.startswith("trl"):
        from tether import AutoModelForCausalLMWithValueHead

        model = AutoModelForCausalLMWithValueHead.from_pretrained(model)
    per_rank = GLOBAL_BATCH // dist.world_size
    # TRL's geometry is per process (its default: an optimiser step per mini batch); one global step
    # of the whole batch keeps the two runs comparable
    geometry = dict(gradient_accumulation_steps=per_rank // 2) if name.startswith("trl") else {}
    config = PPOConfig(batch_size=per_rank, mini_batch_size=2, ppo_epochs=1, seed=0,
                       **VARIANTS[name], **geometry)
    trainer = PPOTrainer(config, model, tokenizer)
    # plain SGD for this check: its update is lr x gradient, so parameters agree as closely as the
    # gradients do. AdamW divides by sqrt(v): on near-zero gradients it turns float noise (which
    # differs between 1 and 2 processes, and between AVX2 and AVX-512 kernels) into full-size steps.
    trainer.optimizer = torch.optim.SGD([{"params": g["params"]} for g in trainer.optimizer.param_groups], lr=SGD_LR)
    initial = {n: full(p.detach()).clone() for n, p in trainer.policy.named_parameters() if p.requires_grad}
    rows = slice(dist.rank * per_rank, (dist.rank + 1) * per_rank)
    k = config.num_generations
    queries = [QUERIES[i - i % k] for i in range(GLOBAL_BATCH)]  # groups of k rows share a prompt
    scores = [SCORES[0]] * 2 + SCORES[2:] if name.startswith("dapo") else SCORES
    stats = []
    for step in range(2):
        perturbed = [s + step for s in scores]
        stats.append(trainer.step(queries[rows], RESPONSES[rows], perturbed[rows]))
        if step == 0:
            grads = {n: full(p.grad).clone() for n, p in trainer.policy.named_parameters() if p.grad is not None}
            critic = trainer.critic or trainer.value_head
            if critic is not None:
                grads.update({f"critic.{n}": full(p.grad).clone() for n, p in critic.named_parameters()})
    params = {n: full(p.detach()).clone() for n, p in trainer.policy.named_parameters() if p.requires_grad}
    per_process = ("time/", "memory/")  # timings and memory differ between processes by nature
    from torch.distributed.tensor import DTensor

    policy = trainer.policy
    layout = {"sharded": all(isinstance(p, DTensor) for p in policy.parameters()),
              "tied": policy.get_output_embeddings().weight is policy.get_input_embeddings().weight}
    return {"layout": layout, "stats": [{k: v for k, v in s.items() if not k.startswith(per_process) and isinstance(v, float)}
                      for s in stats],
            "grads": grads, "params": params, "initial": initial}


def run_train(out: Path, dist: Distributed) -> None:
    """train() with output_dir: only rank 0 writes; a checkpoint to resume with another process count."""
    tokenizer = tiny_tokenizer()
    config = PPOConfig(batch_size=2, mini_batch_size=2, ppo_epochs=1, max_new_tokens=4, seed=1)
    trainer = PPOTrainer(config, tiny_llama(tokenizer), tokenizer,
                         reward_fn=lambda p, c: [float(len(x)) for x in c])
    trainer.train([f"prompt {i}" for i in range(12)], max_iterations=2, output_dir=out, save_every=1,
                  progress=False)


SHARDED_TRAIN = dict(batch_size=2, mini_batch_size=1, ppo_epochs=2, max_new_tokens=4, seed=1, sharding="fsdp2",
                     value_model="separate", temperature=1.0)
TRAIN_PROMPTS = [f"prompt {i}" for i in range(16)]


def length_reward(prompts, completions):
    return [float(len(x)) for x in completions]


def run_sharded_train(out: Path, dist: Distributed) -> None:
    """FSDP2 on 2 processes: an uninterrupted run, the same run stopped after 2 iterations and resumed,
    greedy generation, and the full optimiser state at a checkpoint (for the 1-process load to match)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    from tether.train.persistence import trained_modules

    tokenizer = tiny_tokenizer()

    def trainer():
        return PPOTrainer(PPOConfig(**SHARDED_TRAIN), tiny_llama(tokenizer, tie_word_embeddings=True), tokenizer,
                          reward_fn=length_reward)

    full_run = trainer()
    full_run.train(TRAIN_PROMPTS, max_iterations=4, output_dir=out / "full", save_every=1, progress=False)
    from torch.distributed.tensor import DTensor

    # forward-only, the reference has no backward to reshard its root: it must reshard after forward
    ref_sharded = all(isinstance(p, DTensor) for p in full_run.ppo.ref_model.parameters())
    trainer().train(TRAIN_PROMPTS, max_iterations=2, output_dir=out / "resumed", save_every=1, progress=False)
    resumed = trainer()
    resumed.train(TRAIN_PROMPTS, max_iterations=4, output_dir=out / "resumed", resume="latest", save_every=1,
                  progress=False)
    # the full optimiser state of the resumed run's step 2, for the 1-process load to compare with
    probe = trainer()
    probe.load_checkpoint(out / "resumed" / "checkpoints" / "step-000002")
    optim = get_optimizer_state_dict(trained_modules(probe.ppo), probe.optimizer,
                                     options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    mine = QUERIES[dist.rank * 4:(dist.rank + 1) * 4]
    greedy = probe.generate(mine, do_sample=False, max_new_tokens=6)  # sharded_rollout: gathered (the default)
    resharded = all(isinstance(p, DTensor) for p in probe.policy.parameters())  # gathered weights freed after
    probe.config.sharded_rollout = "per_layer"
    per_layer = probe.generate(mine, do_sample=False, max_new_tokens=6)
    greedy, per_layer = dist.gather_objects(greedy), dist.gather_objects(per_layer)
    if dist.is_main:
        torch.save({"optim": optim, "greedy": [g for part in greedy for g in part],
                    "per_layer": [g for part in per_layer for g in part], "resharded": resharded,
                    "ref_sharded": ref_sharded},
                   out / "sharded-probe.pt")


REWARD_TEXTS = ["a b c", "hello there", "why not", "ok"]
"""Scored by a sharded reward model: rank 0 scores three (three forwards), rank 1 one."""


def run_sharded_reward(out: Path, dist: Distributed) -> None:
    """FSDP2 shards a reward model too; a scoring call gathers it once, so ranks may run different
    numbers of forwards; train() scores through it."""
    from tether.rewards import RewardModelScorer
    from tether.train.sharding import is_sharded

    tokenizer = tiny_tokenizer()
    scorer = RewardModelScorer(tiny_reward_model(tokenizer), tokenizer, batch_size=1)
    trainer = PPOTrainer(PPOConfig(**{**SHARDED_TRAIN, "value_model": "head"}), tiny_llama(tokenizer), tokenizer,
                         reward_model=scorer)
    mine = REWARD_TEXTS[:3] if dist.rank == 0 else REWARD_TEXTS[3:]
    with trainer.dist.scoring(trainer.reward_fn):
        scores = trainer.reward_fn(["q"] * len(mine), mine)
    history = trainer.train(TRAIN_PROMPTS, max_iterations=2, progress=False)
    from torch.distributed.tensor import DTensor

    result = {"scores": [s for part in dist.gather_objects(list(scores)) for s in part],
              "sharded": is_sharded(scorer.model) and all(isinstance(p, DTensor) for p in scorer.model.parameters()),
              "iterations": len(history), "reward_mean": [h["env/reward_mean"] for h in history]}
    if dist.is_main:
        torch.save(result, out / "reward-probe.pt")


STREAMED = {"tied": dict(tied=True), "untied": dict(tied=False), "lora": dict(tied=True, lora=True)}
"""Models whose sharded weights run_weight_stream streams as the vLLM engine takes them."""


def streamed_model(name: str):
    """The model of a STREAMED case, the same on every rank and in the test (LoRA B made non-zero, so
    that a merge left out changes the weights)."""
    tokenizer = tiny_tokenizer()
    model = tiny_llama(tokenizer, tie_word_embeddings=STREAMED[name]["tied"])
    if STREAMED[name].get("lora"):
        model = apply_lora(model, LoraSettings(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
        torch.manual_seed(3)
        with torch.no_grad():
            for param_name, param in model.named_parameters():
                if "lora_B" in param_name:
                    param.normal_(0, 0.5)
    return model


def run_weight_stream(out: Path, dist: Distributed) -> None:
    """The vLLM engine's weight stream from an FSDP2-sharded model: every tensor's name and value, the
    dtype each shard had when it was gathered, and the most gathered tensors alive at once."""
    import weakref

    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor

    from tether.rollout.vllm import engine_weights
    from tether.train.sharding import shard

    gathered_dtypes, alive = [], []
    full_tensor = DTensor.full_tensor

    def recording_full_tensor(self, *args, **kwargs):
        gathered_dtypes.append(self.dtype)
        result = full_tensor(self, *args, **kwargs)
        alive.append(weakref.ref(result))
        return result

    DTensor.full_tensor = recording_full_tensor
    mesh = init_device_mesh("cpu", (dist.world_size,))
    results = {}
    try:
        for name in STREAMED:
            model = shard(streamed_model(name), mesh, mixed_precision=False, force_sum=True)
            dtype = None if STREAMED[name].get("lora") else torch.bfloat16
            gathered_dtypes.clear(), alive.clear()
            weights, most_alive = {}, 0
            for key, value in engine_weights(model, dtype):
                most_alive = max(most_alive, sum(ref() is not None for ref in alive))
                weights[key] = value.clone()
                del value
            results[name] = {"weights": weights, "most_alive": most_alive, "gathered_dtypes": set(gathered_dtypes),
                             "gathers": len(gathered_dtypes),
                             "sharded": all(isinstance(p, DTensor) for p in model.parameters())}
    finally:
        DTensor.full_tensor = full_tensor
    if dist.is_main:
        torch.save(results, out / "weight-stream.pt")


def main() -> None:
    out = Path(sys.argv[1])
    dist = Distributed.from_environment()
    torch.set_num_threads(1)
    results = {name: run_variant(name, dist) for name in VARIANTS}
    if dist.is_main:
        torch.save(results, out / f"results-{dist.world_size}.pt")
    if dist.world_size > 1:
        run_train(out / "train-2proc", dist)
        run_sharded_train(out / "sharded", dist)
        run_sharded_reward(out / "sharded", dist)
        run_weight_stream(out / "sharded", dist)
        end_worker_process(0)  # as the CLI does: no gloo abort in interpreter finalisation


if __name__ == "__main__":
    main()
