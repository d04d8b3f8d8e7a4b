"""tether vs TRL's PPOTrainer on the same work: time per iteration, tokens/s, peak memory, overhead.

    .venv/bin/python benchmarks/vs_trl.py                       # 3 timed iterations each, ~35 min on 2 cores
    .venv/bin/python benchmarks/vs_trl.py --iterations 2 --peers trl0114 --reward rule   # the seed program
    .venv/bin/python benchmarks/vs_trl.py --iterations 2 --peers trl0114
    .venv/bin/python benchmarks/vs_trl.py --budget-minutes 5    # + reward reached in the same wall-clock time
    .venv/bin/python benchmarks/vs_trl.py --budget-minutes 5 --budget-only --peers trl0114

Peers, each installed by this script into its own virtual environment under the tether cache
(tether never depends on TRL):
  trl0114       trl==0.11.4 (transformers==4.46.3, accelerate==1.1.1, datasets==3.1.0, rich, peft): the
                step-API PPOTrainer with AutoModelForCausalLMWithValueHead — against tether's value head;
  trl0114-lora  the same with LoRA r=16 on q/k/v/o (peft_config, reference = adapters disabled) —
                against tether with the same adapters (the reference is the policy with them off);
  trl1120       trl==1.12.0 (transformers==5.24.0): trl.experimental.ppo, separate value model initialised
                from the reward model — against tether's separate critic (critic_init=reward_model).

Same work for all: SmolLM2-135M-Instruct (dequantised to safetensors once), the same chat-rendered
prompt token ids, batch 16, up to 48 new tokens at temperature 1, 4 PPO epochs of minibatches of 4
(16 optimiser steps), full fine-tuning unless LoRA is named, the same reward (``--reward model``: a SmolLM2 backbone with a
seeded one-label head, scored by each worker; ``--reward rule``: the seed program's rule ``1 - len(r)/200``
on the decoded text, no reward model in the process), 2 CPU threads. TRL runs in float32 (it has no mixed
precision for this API); tether at its default precision (``auto``: bf16-mixed on CPUs with
AVX512-BF16/AMX, fp32 on AVX2-only CPUs; ``--precision`` pins it). Runs alternate peer by peer; each run's first iteration is a
warm-up and is not timed. tether's overhead ratio = its iteration time / the time of the work no
implementation can avoid, measured in the same process (generation with the KV cache, one forward
per scoring model, forward+backward+AdamW per minibatch).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENVS = {  # name -> what pip installs there (after torch==2.13.0)
    "trl0114": ["trl==0.11.4", "transformers==4.46.3", "accelerate==1.1.1", "datasets==3.1.0", "rich", "peft==0.13.2"],
    "trl1120": ["trl==1.12.0", "transformers==5.24.0"],
}
PEERS = {  # each peer runs against tether on the same job: value model kind and LoRA rank (0: full fine-tuning)
    "trl0114": {"venv": "trl0114", "script": "trl_0114.py", "value_model": "head", "lora_r": 0},
    "trl0114-lora": {"venv": "trl0114", "script": "trl_0114.py", "value_model": "head", "lora_r": 16},
    "trl1120": {"venv": "trl1120", "script": "trl_1120.py", "value_model": "separate", "lora_r": 0},
}


def bench_dir() -> Path:
    from tether.assets import cache_root

    path = cache_root() / "bench"
    path.mkdir(parents=True, exist_ok=True)
    return path


def prepare_models(root: Path) -> tuple[Path, Path]:
    """SmolLM2 as a plain safetensors directory (every transformers version reads it) and the reward model."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from tether.assets import resolve_model
    from tether.models.loading import load_causal_lm, load_tokenizer

    policy, reward = root / "smollm2-135m-instruct", root / "reward-model"
    if not (policy / "model.safetensors").exists():
        source = resolve_model("smollm2-135m-instruct")
        load_causal_lm(source).save_pretrained(policy)
        tokenizer = load_tokenizer(source)
        tokenizer.save_pretrained(policy)
        config = json.loads((policy / "tokenizer_config.json").read_text())
        if config.get("tokenizer_class") not in (None, "PreTrainedTokenizerFast"):  # older transformers know this one
            config["tokenizer_class"] = "PreTrainedTokenizerFast"
            (policy / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    if not (reward / "model.safetensors").exists():
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_pretrained(policy, num_labels=1)
        model.config.pad_token_id = model.config.eos_token_id
        model.save_pretrained(reward)
    return policy, reward


def prepare_prompts(policy: Path, batches: int, batch_size: int) -> list[list[list[int]]]:
    from tether.data.prompts import load_prompts, tokenize_prompts
    from tether.models.loading import load_tokenizer

    tokenizer = load_tokenizer(str(policy))
    prompts = load_prompts("builtin:instructions")[: batches * batch_size]
    ids = tokenize_prompts(prompts, tokenizer, 256)
    return [ids[i : i + batch_size] for i in range(0, len(ids), batch_size)]


def venv(root: Path, name: str) -> Path:
    """The peer's virtual environment (created and installed once; torch pinned to the CPU wheel)."""
    path = root / f"venv-{name}"
    python = path / "bin" / "python"
    stamp = path / ".installed"
    want = " ".join(VENVS[name])
    if stamp.exists() and stamp.read_text() == want:
        return python
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    constraint = path / "constraints.txt"
    constraint.write_text("torch==2.13.0\n")
    pip = [str(python), "-m", "pip", "install", "--quiet", "-c", str(constraint)]
    print(f"installing {name} into {path} ...", file=sys.stderr)
    subprocess.run(pip + ["torch==2.13.0"], check=True)
    subprocess.run(pip + VENVS[name], check=True)
    stamp.write_text(want)
    return python


def run(python: Path, script: str, job: dict, out: Path) -> dict:
    job_file = out.with_suffix(".job.json")
    job_file.write_text(json.dumps(job))
    env = {**os.environ, "PYTHONPATH": str(HERE / "peers"), "OMP_NUM_THREADS": str(job["threads"]),
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "CI": "1"}
    subprocess.run([str(python), str(HERE / "peers" / script), str(job_file), str(out)], env=env, check=True)
    return json.loads(out.read_text())


def ours_label(peer: str) -> str:
    """tether's run against ``peer``: same value model kind and LoRA rank."""
    p = PEERS[peer]
    return f"tether-{p['value_model']}" + (f"-lora{p['lora_r']}" if p["lora_r"] else "")


def timed(result: dict) -> list[float]:
    return result["seconds"][1:] or result["seconds"]  # the first iteration warms up


def mean(xs):
    return sum(xs) / len(xs) if xs else float("nan")


def report_timings(results: dict, peers: list[str], args) -> dict:
    """Print the table of the timed runs, the tether/TRL ratios and tether's overhead ratio."""
    from tether.tracking.metrics import hardware_description

    print(f"\nSame work: SmolLM2-135M, batch 16 x <= 48 tokens, 4 PPO epochs x 4 minibatches, {args.reward} reward, "
          f"{args.threads} threads; {args.iterations} timed iterations x {args.rounds} round(s)\nCPU: {hardware_description('cpu')}\n")
    print(f"{'run':<34} {'s / iteration':>13} {'gen. tokens/s':>13} {'peak RSS GiB':>12}")
    summary = {}
    for label, runs in results.items():
        secs = [s for r in runs for s in timed(r)]
        toks = [t for r in runs for t in (r["tokens"][1:] or r["tokens"])]
        rss = max(r["peak_rss_mib"] for r in runs) / 1024
        tps = sum(toks) / sum(secs) if toks else float("nan")
        summary[label] = {"seconds": mean(secs), "tokens_per_s": tps, "rss_gib": rss}
        print(f"{runs[0]['peer']:<34} {mean(secs):>13.1f} {tps:>13.1f} {rss:>12.2f}")
    print()
    for name in peers:
        ours, theirs = summary[ours_label(name)], summary[name]
        print(f"tether / {name}: iteration time {ours['seconds'] / theirs['seconds']:.2f}x, "
              f"peak memory {ours['rss_gib'] / theirs['rss_gib']:.2f}x")
    for label, runs in results.items():
        if "unavoidable" in runs[-1]:
            parts = runs[-1]["unavoidable"]
            floor = sum(parts.values())
            print(f"\n{label}: overhead ratio {mean(timed(runs[-1])) / floor:.2f} "
                  f"(iteration {mean(timed(runs[-1])):.1f} s / unavoidable work {floor:.1f} s)")
            for part, seconds in parts.items():
                print(f"    {part:<40} {seconds:6.1f} s")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations per run (plus one warm-up)")
    parser.add_argument("--rounds", type=int, default=1, help="alternations of all runs")
    parser.add_argument("--peers", default=",".join(PEERS), help=f"comma-separated, of {', '.join(PEERS)}")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reward", choices=("rule", "model"), default="model",
                        help="rule: the seed program's 1 - len(r)/200 (no reward model); model: a reward model's score")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16-mixed"), default="auto",
                        help="tether's precision (TRL always runs in float32)")
    parser.add_argument("--budget-minutes", type=float, default=0.0,
                        help="also run each peer for this long and compare the reward reached")
    parser.add_argument("--budget-only", action="store_true", help="skip the timed runs (with --budget-minutes)")
    args = parser.parse_args()
    peers = [p for p in args.peers.split(",") if p]
    root = bench_dir()
    policy, reward = prepare_models(root)
    base = {"policy": str(policy), "reward_model": str(reward), "batch_size": 16, "mini_batch_size": 4,
            "ppo_epochs": 4, "learning_rate": 1e-5, "max_new_tokens": 48, "seed": 0, "threads": args.threads,
            "budget_seconds": 0, "reward": args.reward, "precision": args.precision}
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        parser.error(f"--peers: unknown {unknown}; choose from {sorted(PEERS)}")
    pythons = {name: venv(root, PEERS[name]["venv"]) for name in peers}
    prompts = prepare_prompts(policy, 12, 16)
    out = root / "results"
    out.mkdir(exist_ok=True)
    results: dict[str, list[dict]] = {}

    def go(label, python, script, **extra):
        job = {**base, "prompts": prompts, "iterations": args.iterations + 1, "overhead": False, **extra}
        res = run(python, script, job, out / f"{label}-{len(results.get(label, []))}.json")
        results.setdefault(label, []).append(res)

    for _ in range(0 if args.budget_only else args.rounds):
        for name in peers:
            peer = PEERS[name]
            same = dict(value_model=peer["value_model"], lora_r=peer["lora_r"])
            go(ours_label(name), Path(sys.executable), "tether_worker.py", overhead=True, **same)
            go(name, pythons[name], peer["script"], **same)

    summary = report_timings(results, peers, args) if results else {}

    if args.budget_minutes:
        budget = {"iterations": 10_000, "budget_seconds": args.budget_minutes * 60}
        print(f"\nReward reached in {args.budget_minutes:g} minutes (mean of the last 3 iterations):")
        for name in peers:
            peer = PEERS[name]
            job = {**base, "prompts": prompts, "overhead": False, **budget,
                   "value_model": peer["value_model"], "lora_r": peer["lora_r"]}
            ours = run(Path(sys.executable), "tether_worker.py", job, out / f"budget-t-{name}.json")
            theirs = run(pythons[name], peer["script"], job, out / f"budget-{name}.json")
            for res in (ours, theirs):
                print(f"    {res['peer']:<26} {len(res['seconds']):>3} iterations, reward {mean(res['rewards'][-3:]):.3f} "
                      f"(first {res['rewards'][0]:.3f})")
    (out / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
