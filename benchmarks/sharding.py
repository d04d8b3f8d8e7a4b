"""DDP against FSDP2: per-process bytes of the training state, peak memory and time per iteration.

    .venv/bin/python benchmarks/sharding.py                      # the default: a ~0.36B Llama, separate critic
    .venv/bin/python benchmarks/sharding.py --layers 2 --hidden 256 --iterations 2   # a quick look

Runs full fine-tuning of a Llama-architecture policy built from a config (random weights: memory and
time do not depend on the values), with its separate critic and its frozen reference, under
``sharding: ddp`` with 1 and 2 processes and ``sharding: fsdp2`` with 2 processes (``torchrun``, gloo on
CPU). One process does not shard (``sharding: fsdp2`` in a single process is the single-process
program), so the 1-process row stands for both. For each run it prints:

* state bytes per process, exact, from the local sizes of the parameters, gradients and AdamW moments
  of policy and critic and of the reference's weights (under FSDP2 each process holds its shards);
* peak RSS: the largest resident memory of any one process, and of all of them together, sampled by
  this script every 0.2 s (a run whose processes together pass ``--memory-limit`` GiB is stopped and
  reported as out of memory, rather than left to the kernel's OOM killer);
* seconds per iteration (generation + update; the median after the first iteration).

On a 2-core CPU FSDP2 adds communication (gloo's reduce-scatter is an all-reduce) and gains nothing in
speed: the point is memory. Name the CPU when quoting the numbers (printed with them).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def state_bytes(trainer) -> dict[str, int]:
    """Bytes this process holds of trained weights, their gradients, AdamW's moments and the reference."""
    from torch.distributed.tensor import DTensor

    def local(t):
        t = t.to_local() if isinstance(t, DTensor) else t
        return t.numel() * t.element_size()

    trained = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    out = {"weights": sum(local(p) for p in trained),
           "gradients": sum(local(p) for p in trained),  # fp32, the size of the (sharded) weights
           "adam": sum(local(v) for s in trainer.optimizer.state.values() for v in s.values()
                       if hasattr(v, "numel") and v.dim() > 0),
           "reference": sum(local(p) for p in trainer.ppo.ref_model.parameters()) if trainer.ppo.ref_model else 0}
    out["total"] = sum(out.values())
    return out


def worker(args) -> None:
    import resource

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tether import PPOConfig, PPOTrainer
    from tether.assets import resolve_model
    from tether.models.loading import load_tokenizer
    from tether.train.distributed import Distributed

    dist = Distributed.from_environment(args.sharding)
    tokenizer = load_tokenizer(resolve_model("smollm2-135m-instruct"))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=args.hidden, intermediate_size=args.hidden * 11 // 4,
                         num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
                         num_key_value_heads=max(1, args.hidden // 256), tie_word_embeddings=False,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    model = LlamaForCausalLM(config).eval()
    params = sum(p.numel() for p in model.parameters())
    ppo = PPOConfig(sharding=args.sharding, value_model="separate", batch_size=2, mini_batch_size=1, ppo_epochs=1,
                    max_new_tokens=8, precision="fp32", reuse_freed_memory=False, use_chat_template=False, seed=0)
    trainer = PPOTrainer(ppo, model, tokenizer, reward_fn=lambda p, c: [float(len(x)) for x in c])
    del model
    prompts = [f"Write one sentence about the number {i}." for i in range(2 * dist.world_size * (args.iterations + 1))]
    history = trainer.train(prompts, max_iterations=args.iterations, progress=False)
    seconds = [h["time/generate"] + h["time/reward"] + h["time/step"] for h in history]
    local = state_bytes(trainer)
    result = {"state": dist.gather_objects(local), "peak_rss": dist.gather_objects(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024), "seconds": seconds, "params": params}
    if dist.is_main:
        Path(args.out).write_text(json.dumps(result))


def process_tree_rss(pid: int) -> list[int]:
    """Resident bytes of ``pid`` and each of its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    out.append(int(line.split()[1]) * 1024)
        except OSError:
            pass
        todo.extend(children.get(p, []))
    return out


def run(sharding: str, nproc: int, args, out: Path) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), __file__,
           "--worker", "--sharding", sharding, "--out", str(out), "--layers", str(args.layers),
           "--hidden", str(args.hidden), "--iterations", str(args.iterations)]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // nproc)), "CI": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    largest_total, killed = 0, False
    while proc.poll() is None:
        rss = process_tree_rss(proc.pid)
        largest_total = max(largest_total, sum(rss))
        if sum(rss) > args.memory_limit * 2**30:
            proc.kill()
            killed = True
            break
        time.sleep(0.2)
    stderr = proc.communicate()[1]
    if killed:
        return {"sharding": sharding, "nproc": nproc, "oom": True, "largest_total": largest_total}
    if proc.returncode != 0:
        sys.exit(f"{sharding} x{nproc} failed:\n{stderr[-3000:]}")
    result = json.loads(out.read_text())
    return {"sharding": sharding, "nproc": nproc, "oom": False, "largest_total": largest_total, **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--memory-limit", type=float, default=None,
                        help="GiB all processes together may use before a run counts as out of memory "
                             "(default: 90%% of this machine's memory)")
    parser.add_argument("--results", default="runs/sharding", help="directory for sharding.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--sharding", default="ddp", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.memory_limit is None:
        total = int(next(line for line in Path("/proc/meminfo").read_text().splitlines()
                         if line.startswith("MemTotal")).split()[1]) * 1024
        args.memory_limit = 0.9 * total / 2**30
    import torch

    print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} cores; memory limit "
          f"{args.memory_limit:.1f} GiB; Llama {args.layers} layers x {args.hidden}, separate critic, full fine-tuning")
    results_dir = Path(args.results)
    results_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for sharding, nproc in (("ddp", 1), ("ddp", 2), ("fsdp2", 2)):
        out = results_dir / f"{sharding}-x{nproc}.json"
        out.unlink(missing_ok=True)
        results.append(run(sharding, nproc, args, out))
        r = results[-1]
        if r["oom"]:
            print(f"{sharding:>6} x{nproc}: OUT OF MEMORY (the processes passed {args.memory_limit:.1f} GiB together)",
                  flush=True)
            continue
        gib = 2**30
        state = r["state"][0]
        label = "ddp = fsdp2 x1" if nproc == 1 else f"{sharding} x{nproc}"
        print(f"{label:>14}: {r['params'] / 1e9:.2f}B-parameter policy; state per process "
              f"{state['total'] / gib:.2f} GiB (weights {state['weights'] / gib:.2f}, gradients "
              f"{state['gradients'] / gib:.2f}, Adam {state['adam'] / gib:.2f}, reference {state['reference'] / gib:.2f}); "
              f"peak RSS per process {max(r['peak_rss']) / gib:.2f} GiB, all processes {r['largest_total'] / gib:.2f} GiB; "
              f"{statistics.median(r['seconds'][1:] or r['seconds']):.1f} s/iteration", flush=True)
    (results_dir / "sharding.json").write_text(json.dumps(results, indent=1))
    print(f"wrote {results_dir / 'sharding.json'}")


if __name__ == "__main__":
    main()
