"""Throughput of 1 process vs N data-parallel processes (torchrun, gloo on CPU) on the same work.

    .venv/bin/python benchmarks/data_parallel.py                 # SmolLM2-135M + LoRA, 2 processes
    .venv/bin/python benchmarks/data_parallel.py --processes 2 --iterations 3 --batch 8

Both runs do the same global work per iteration (``--batch`` responses of up to ``--max-new-tokens``
tokens, PPO with a value head and LoRA, one optimiser step per PPO epoch) on the same CPU cores:
one process with all ``--threads`` threads, or N processes with ``threads / N`` each. The first
iteration of each run is a warm-up and is not timed. Prints seconds per iteration, generated
tokens per second and the ratio N-process / 1-process, from one run with the two alternating.

On a 2-core machine expect little gain: the point is that the same code runs in both ways and the
number is measured, not assumed. On a multi-GPU node the same command with ``--processes 8`` uses
NCCL and one GPU per process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path


def worker(args) -> None:
    import torch

    from tether import PPOConfig, PPOTrainer
    from tether.assets import resolve_model
    from tether.models.loading import LoraSettings, load_causal_lm, load_tokenizer
    from tether.rewards import make_rule
    from tether.train.distributed import Distributed

    dist = Distributed.from_environment()
    torch.set_num_threads(max(1, args.threads // dist.world_size))
    path = resolve_model(args.model)
    tokenizer = load_tokenizer(path)
    model = load_causal_lm(path, lora=LoraSettings(r=16, alpha=32)).to(dist.device())
    config = PPOConfig(batch_size=args.batch // dist.world_size, mini_batch_size=4, ppo_epochs=2,
                       learning_rate=3e-4, max_new_tokens=args.max_new_tokens, value_model="head", seed=0)
    trainer = PPOTrainer(config, model, tokenizer, reward_fn=make_rule("sentiment", {}))
    history = trainer.train("builtin:instructions", max_iterations=args.iterations + 1, progress=False)
    # wall time of an iteration = generation + reward + PPO step (collectives included)
    times = [s["time/generate"] + s["time/reward"] + s["time/step"] for s in history]
    tokens = [s["tokens/response_len_mean"] * args.batch for s in history]  # global mean x global batch
    if dist.is_main:
        Path(args.result).write_text(json.dumps({"seconds": times[1:], "tokens": tokens[1:],
                                                 "processes": dist.world_size}))


def launch(args, processes: int, result: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, args.threads // processes))}
    own = [str(Path(__file__).resolve()), "--worker", "--result", str(result), "--model", args.model,
           "--batch", str(args.batch), "--max-new-tokens", str(args.max_new_tokens),
           "--iterations", str(args.iterations), "--threads", str(args.threads)]
    if processes == 1:
        cmd = [sys.executable, *own]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes), *own]
    subprocess.run(cmd, env=env, check=True)
    return json.loads(result.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="CPU threads shared by the processes")
    parser.add_argument("--batch", type=int, default=8, help="global responses per iteration")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations (after one warm-up)")
    parser.add_argument("--rounds", type=int, default=1, help="alternations of the two runs")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.batch % args.processes:
        parser.error("--batch must be divisible by --processes")
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"tether-dp-{os.getpid()}"
    out.mkdir(parents=True, exist_ok=True)
    runs = {1: [], args.processes: []}
    for r in range(args.rounds):
        for n in (1, args.processes):
            runs[n].append(launch(args, n, out / f"{n}-{r}.json"))
    print(f"\nSame global work: {args.batch} responses x <= {args.max_new_tokens} tokens, PPO (LoRA r16 + value "
          f"head, 2 epochs), {args.threads} CPU threads, {args.iterations} timed iterations per run\n")
    print(f"{'processes':>9} | {'s / iteration':>13} | {'gen. tokens / s':>15}")
    summary = {}
    for n, results in runs.items():
        seconds = [s for res in results for s in res["seconds"]]
        tokens = [t for res in results for t in res["tokens"]]
        per_it = sum(seconds) / len(seconds)
        summary[n] = (per_it, sum(tokens) / sum(seconds))
        print(f"{n:>9} | {per_it:>13.1f} | {summary[n][1]:>15.1f}")
    ratio = summary[1][0] / summary[args.processes][0]
    print(f"\nspeed-up of {args.processes} processes over 1: {ratio:.2f}x (iteration time 1-process / "
          f"{args.processes}-process)")


if __name__ == "__main__":
    main()
