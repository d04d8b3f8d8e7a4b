"""The seed loop and one demo PPO iteration on one device: tokens/s, s / iteration, peak memory.

    .venv/bin/python benchmarks/device_check.py                     # CUDA when present, else the CPU
    .venv/bin/python benchmarks/device_check.py --device cuda --iterations 5
    .venv/bin/python benchmarks/device_check.py --device cpu --precision fp32

Two jobs, each in this process, on SmolLM2-135M-Instruct (the packaged model) at tether's defaults for the
device (``precision: auto`` unless ``--precision``):
  seed   the TRL seed program: step API, full fine-tuning, value head, lr 1e-5, batch 16, mini-batch 4,
         4 PPO epochs, 48 new tokens, the rule reward 1 - len(r)/200; ``--iterations`` timed after one
         untimed warm-up iteration;
  demo   one iteration of ``tether demo``'s PPO settings (LoRA r=16 + value head, batch 16, mini-batch 8,
         2 epochs, 32 new tokens) with a keyword reward in place of the learned reward model.
Printed per job: generated tokens/s (sampling only), seconds per iteration (sampling + step), peak
resident memory of the process and, on CUDA, ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch


def peak_memory(device: torch.device) -> dict[str, float]:
    from tether.tracking.metrics import peak_rss_mib

    out = {"peak_rss_gib": peak_rss_mib() / 1024}
    if device.type == "cuda":
        out["gpu_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_job(name: str, trainer, prompts: list[str], reward, max_new_tokens: int, iterations: int,
            device: torch.device) -> dict:
    """``iterations`` timed step-API iterations after one warm-up; returns the figures."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds, tokens, generate_seconds = [], [], []
    for it in range(iterations + 1):
        batch = prompts[(it * 16) % len(prompts):][:16]
        sync(device)
        start = time.perf_counter()
        responses = trainer.generate(batch, max_new_tokens=max_new_tokens)
        sync(device)
        sampled = time.perf_counter()
        stats = trainer.step(batch, responses, reward(batch, responses))
        sync(device)
        if it:  # the first iteration warms up (kernels, allocator, lazy state)
            seconds.append(time.perf_counter() - start)
            generate_seconds.append(sampled - start)
            tokens.append(stats["tokens/response_len_mean"] * len(batch))
    return {"job": name, "precision": trainer.precision.mode, "s_per_iteration": statistics.fmean(seconds),
            "generate_tokens_per_s": sum(tokens) / sum(generate_seconds), **peak_memory(device)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16-mixed"), default="auto")
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations of the seed loop")
    parser.add_argument("--jobs", default="seed,demo", help="comma-separated: seed, demo")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible to torch")
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tether import LoraSettings, PPOConfig, PPOTrainer
    from tether.assets import resolve_model
    from tether.data import load_prompts
    from tether.models.loading import apply_lora
    from tether.rewards.rules import keyword_reward
    from tether.tracking.metrics import hardware_description

    jobs = [j for j in args.jobs.split(",") if j]
    unknown = [j for j in jobs if j not in ("seed", "demo")]
    if unknown:
        parser.error(f"--jobs: unknown {unknown}; choose from seed, demo")
    if len(jobs) > 1:  # each job in a process of its own, so each peak memory is that job's
        rows = []
        for job in jobs:
            command = [sys.executable, __file__, "--device", args.device, "--precision", args.precision,
                       "--iterations", str(args.iterations), "--threads", str(args.threads), "--jobs", job]
            out = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout
            rows += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
            print(out.split("\n\n")[0], flush=True)
        print_table(rows)
        return
    print(f"device: {hardware_description(device)}", flush=True)
    source = resolve_model("smollm2-135m-instruct")
    prompts = load_prompts("builtin:instructions")
    results = []
    for job in jobs:
        model = AutoModelForCausalLM.from_pretrained(source).to(device)
        tokenizer = AutoTokenizer.from_pretrained(source)
        if job == "seed":
            config = PPOConfig(learning_rate=1e-5, batch_size=16, mini_batch_size=4, ppo_epochs=4,
                               precision=args.precision)
            reward, tokens, iterations = (lambda p, r: [1 - len(x) / 200 for x in r]), 48, args.iterations
        else:
            model = apply_lora(model, LoraSettings(r=16, alpha=32))
            config = PPOConfig(batch_size=16, mini_batch_size=8, ppo_epochs=2, learning_rate=3e-4,
                               critic_learning_rate=1e-3, value_model="head", kl_coef=0.05, precision=args.precision)
            reward, tokens, iterations = keyword_reward, 32, 1
        trainer = PPOTrainer(config, model, tokenizer)
        result = run_job(job, trainer, prompts, reward, tokens, iterations, device)
        results.append(result)
        print(json.dumps(result), flush=True)
        del trainer, model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print_table(results)


def print_table(results: list[dict]) -> None:
    print(f"\n{'job':<6} {'precision':<11} {'s / iteration':>13} {'gen. tokens/s':>13} {'peak RSS GiB':>12} {'GPU peak GiB':>12}")
    for r in results:
        gpu = f"{r['gpu_peak_gib']:.2f}" if "gpu_peak_gib" in r else "-"
        print(f"{r['job']:<6} {r['precision']:<11} {r['s_per_iteration']:>13.1f} {r['generate_tokens_per_s']:>13.1f} "
              f"{r['peak_rss_gib']:>12.2f} {gpu:>12}")


if __name__ == "__main__":
    main()
