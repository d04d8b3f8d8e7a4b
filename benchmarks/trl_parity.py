"""tether vs trl==0.11.4 on the same TRL step-API program, case by case: same stats keys, the same
update, the same response lengths.

    .venv/bin/python benchmarks/trl_parity.py

Each side runs ``benchmarks/peers/trl_parity_worker.py`` in its own environment (TRL in the venv of
``benchmarks/vs_trl.py``) on tiny local GPT-2 / T5 checkpoints built here (dropout 0: TRL trained in
train mode, tether never uses dropout). Printed per case: TRL stats keys tether lacks, the relative
difference of the two parameter updates ‖Δθ_tether − Δθ_trl‖ / ‖Δθ_trl‖, the largest relative
difference among the scalar stats both report, and response lengths.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from trl_tests import build_models  # noqa: E402
from vs_trl import bench_dir, venv  # noqa: E402

COMPARED = ("objective/kl", "ppo/mean_scores", "ppo/std_scores", "ppo/loss/policy", "ppo/loss/value",
            "ppo/returns/mean", "ppo/returns/var", "ppo/val/mean", "ppo/policy/advantages_mean",
            "ppo/mean_non_score_reward", "tokens/responses_len_mean", "ppo/val/vpred", "ppo/val/error")


def rel(a: float, b: float) -> float:
    """Relative difference; absolute for values near 0 (whitened means)."""
    return abs(a - b) / max(abs(b), 1e-2)


def main() -> None:
    sides = {"tether": sys.executable, "trl": str(venv(bench_dir(), "trl0114"))}
    with tempfile.TemporaryDirectory() as tmp:
        models = build_models(Path(tmp) / "models", dropout=0.0)
        out = {}
        for side, python in sides.items():
            path = Path(tmp) / f"{side}.json"
            subprocess.run([python, str(HERE / "peers" / "trl_parity_worker.py"), side, str(Path(models["gpt2"]).parent),
                            str(path)], check=True, capture_output=True)
            out[side] = json.loads(path.read_text())
    for case in out["trl"]:
        ours, theirs = out["tether"][case], out["trl"][case]
        print(f"\n== {case}")
        if "error" in theirs or "error" in ours:
            print(f"   trl:    {theirs.get('error', 'ran')}\n   tether: {ours.get('error', 'ran')}")
            if "error" in theirs:
                continue
        if "lengths" in theirs:
            print(f"   query lengths {theirs['query_lengths'][:2]}; response lengths trl {theirs['lengths']} "
                  f"tether {ours.get('lengths')}")
            continue
        if "error" in ours:
            continue
        missing = sorted(set(theirs["keys"]) - set(ours["keys"]))
        a, b = torch.tensor(ours["update"]), torch.tensor(theirs["update"])
        worst = max(((rel(ours["stats"][k], theirs["stats"][k]), k) for k in COMPARED
                     if k in ours["stats"] and k in theirs["stats"]), default=(0.0, "-"))
        print(f"   TRL keys missing in tether: {missing or 'none'}")
        print(f"   update: ‖Δθ‖ trl {b.norm():.3e}, relative difference {(a - b).norm() / b.norm().clamp(min=1e-12):.2e}")
        print(f"   largest relative stat difference: {worst[0]:.2e} ({worst[1]})")


if __name__ == "__main__":
    main()
