"""Mutation audit of the PPO path: plant realistic one-line bugs, one at a time, in a scratch copy of
the tree and run the narrowest tests that should catch each; print the ones that survive.

    .venv/bin/python benchmarks/mutation.py              # every mutant (~10 min on 2 cores)
    .venv/bin/python benchmarks/mutation.py gae_no_gamma clip_upper_only   # some, by name
    .venv/bin/python benchmarks/mutation.py --list

A mutant is (name, file, the exact text it replaces, the replacement, the tests to run). A mutant
whose text is no longer in the file is reported as stale (the code moved: update the list). The
scratch copy is imported instead of the installed package (its directory comes first on sys.path),
checked by the harness before the first mutant. Mutants that change nothing observable are listed in
EQUIVALENT with the reason, and not run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALGO = ["tests/algo"]
TRAIN = ["tests/train/test_invariants.py", "tests/train/test_loss_terms.py", "tests/train/test_algorithms.py",
         "tests/train/test_mutation_guards.py"]

# (name, file, old, new, tests)
MUTANTS = [
    ("gae_no_gamma", "tether/algo/advantages.py", "delta = rewards[:, t] + gamma * next_value - values[:, t]",
     "delta = rewards[:, t] + next_value - values[:, t]", ALGO),
    ("gae_no_lambda", "tether/algo/advantages.py", "advantage = delta + gamma * lam * next_advantage",
     "advantage = delta + gamma * next_advantage", ALGO),
    ("gae_returns_without_values", "tether/algo/advantages.py", "returns = torch.where(mask, advantages + values, zeros)",
     "returns = torch.where(mask, advantages, zeros)", ALGO),
    ("gae_holes_not_skipped", "tether/algo/advantages.py",
     "next_value = torch.where(valid, values[:, t], next_value)", "next_value = values[:, t]", ALGO),
    ("score_on_first_token", "tether/algo/advantages.py", "rewards[rows, last] += scores.to(rewards.dtype)",
     "rewards[rows, 0] += scores.to(rewards.dtype)", ALGO),
    ("kl_penalty_sign", "tether/algo/advantages.py", "rewards = torch.where(mask, -kl_coef * kl, torch.zeros_like(kl))",
     "rewards = torch.where(mask, kl_coef * kl, torch.zeros_like(kl))", ALGO),
    ("reinforce_no_gamma", "tether/algo/advantages.py", "running = rewards[:, t] + gamma * running",
     "running = rewards[:, t] + running", ALGO),
    ("rloo_baseline_includes_self", "tether/algo/advantages.py",
     "baseline = (g.sum(dim=1, keepdim=True) - g) / (group_size - 1)", "baseline = g.mean(dim=1, keepdim=True)", ALGO),
    ("grpo_no_std", "tether/algo/advantages.py", "centred = centred / (std + eps)", "centred = centred", ALGO),
    ("clip_upper_only", "tether/algo/losses.py",
     "clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)",
     "clipped = -advantages * torch.clamp(ratio, max=1.0 + cliprange)", ALGO),
    ("clip_lower_only", "tether/algo/losses.py",
     "clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)",
     "clipped = -advantages * torch.clamp(ratio, min=1.0 - cliprange)", ALGO),
    ("policy_loss_min", "tether/algo/losses.py", "per_token = torch.maximum(unclipped, clipped)\n    if dual_clip",
     "per_token = torch.minimum(unclipped, clipped)\n    if dual_clip", ALGO),
    ("value_loss_min", "tether/algo/losses.py", "per_token = torch.maximum(unclipped, clipped)\n        clipped_flags",
     "per_token = torch.minimum(unclipped, clipped)\n        clipped_flags", ALGO),
    ("value_clip_around_returns", "tether/algo/losses.py",
     "v_clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)",
     "v_clipped = returns + torch.clamp(values - returns, -cliprange_value, cliprange_value)", ALGO),
    ("k3_sign", "tether/algo/kl.py", "return torch.expm1(log_ratio) - log_ratio",
     "return torch.expm1(log_ratio) + log_ratio", ALGO),
    ("adaptive_kl_sign", "tether/algo/kl.py", "self.value *= 1.0 + error * n_steps / self.horizon",
     "self.value *= 1.0 - error * n_steps / self.horizon", ALGO),
    ("whiten_biased_var", "tether/algo/stats.py", "    var = masked_var(values, mask, all_reduce=all_reduce)\n    out =",
     "    var = masked_var(values, mask, unbiased=False, all_reduce=all_reduce)\n    out =", ALGO),
    ("whiten_keeps_mean", "tether/algo/stats.py", "    if not shift_mean:\n        out = out + mean",
     "    out = out + mean", ALGO),
    ("kl_controller_fed_negative_kl", "tether/train/ppo.py", 'self.kl_ctl.update(stats["objective/kl"],',
     'self.kl_ctl.update(-stats["objective/kl"],', TRAIN),
    ("no_minibatch_shuffle", "tether/train/ppo.py",
     "order = torch.randperm(batch, generator=self.shuffle_generator).to(experience.input_ids.device)",
     "order = torch.arange(batch, device=experience.input_ids.device)", TRAIN),
    ("no_gradient_clipping", "tether/train/ppo.py",
     'max_norm = self.config.max_grad_norm if self.config.max_grad_norm is not None else float("inf")',
     'max_norm = float("inf")', TRAIN),
    ("clip_policy_grads_only", "tether/train/ppo.py",
     "params = [p for group in self.optimizer.param_groups for p in group[\"params\"] if p.grad is not None]",
     "params = [p for p in self.policy.parameters() if p.grad is not None]", TRAIN),
    ("no_vf_coef", "tether/train/ppo.py", "loss = loss + cfg.vf_coef * vf_loss", "loss = loss + vf_loss", TRAIN),
    ("local_token_count", "tether/train/ppo.py", "num_tokens = self.dist.sum(local_tokens).item()",
     "num_tokens = local_tokens.item()", ["tests/distributed/test_data_parallel.py"]),
    ("token_count_per_micro_batch", "tether/train/ppo.py",
     "self._micro_batch_backward(mb, num_tokens, num_seqs, sums)",
     "self._micro_batch_backward(mb, mb.response_mask.sum().item(), num_seqs, sums)", TRAIN),
    ("no_zero_grad", "tether/train/ppo.py", "            for minibatch in order.split(cfg.backward_batch_size):\n"
     "                self.optimizer.zero_grad(set_to_none=True)\n",
     "            for minibatch in order.split(cfg.backward_batch_size):\n", TRAIN),
    ("reference_is_policy", "tether/train/ppo.py", "ref_out = response_forward(ref, ids, attn, t, temperature)",
     "ref_out = response_forward(self.policy, ids, attn, t, temperature)", TRAIN),
    ("ppo_advantages_not_whitened", "tether/train/estimators.py", "            if config.whiten_advantages:\n"
     "                advantages = whiten(", "            if False:\n                advantages = whiten(", TRAIN),
    ("rloo_kl_sign", "tether/train/estimators.py", "shaped = scores - kl_coef * masked_sum(kl, mask, dim=1)",
     "shaped = scores + kl_coef * masked_sum(kl, mask, dim=1)", TRAIN),
    ("grpo_kl_not_in_loss", "tether/train/estimators.py", 'return config.algorithm == "grpo"', "return False", TRAIN),
    ("no_position_ids", "tether/models/forward.py",
     "out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,",
     "out = model(input_ids=input_ids, attention_mask=attention_mask,", ["tests/models/test_forward.py"]),
    ("no_temperature_in_scoring", "tether/models/forward.py", "scaled = logits[start : start + rows].float() / temperature",
     "scaled = logits[start : start + rows].float()", ["tests/models/test_forward.py", *TRAIN]),
    ("logits_off_by_one", "tether/models/forward.py",
     'kwargs["logits_to_keep"] = torch.arange(length - response_len - 1, length - 1, device=input_ids.device)',
     'kwargs["logits_to_keep"] = torch.arange(length - response_len, length, device=input_ids.device)',
     ["tests/models/test_forward.py"]),
    ("mask_not_cut_after_eos", "tether/rollout/engine.py", "mask = (stops_before == 0) & valid", "mask = valid",
     ["tests/rollout/test_truncate.py", "tests/rollout/test_hf_engine.py"]),
    ("hf_engine_ignores_stops", "tether/rollout/hf.py",
     "ids, mask, ended = truncate_after_stop(response, params.eos_token_ids, params.pad_token_id)",
     "ids, mask, ended = truncate_after_stop(response, [], params.pad_token_id)", ["tests/rollout/test_hf_engine.py"]),
    ("encoder_decoder_no_start_token", "tether/models/forward.py",
     "decoder_ids = torch.cat([start, response[:, :-1]], dim=1)", "decoder_ids = response",
     ["tests/compat/test_trl_round_two.py"]),
]

# mutants that cannot change anything observable, with why (not run)
EQUIVALENT = {
    "k3 clamp bounds ±20 → ±30": "log ρ beyond ±20 never occurs in float32 logprob differences of sampled tokens "
                                "that both models can produce; the clamp only keeps exp() finite",
}


def scratch_copy(dest: Path) -> None:
    for part in ("tether", "tests", "pyproject.toml", "configs", "examples", "docs", "benchmarks", "scripts"):
        src = ROOT / part
        if src.is_dir():
            shutil.copytree(src, dest / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif src.exists():
            shutil.copy2(src, dest / part)


def run_tests(tree: Path, tests: list[str], timeout: int) -> tuple[bool, str]:
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "no:warnings", *tests]
    try:
        out = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, "timeout (counted as caught)"
    last = (out.stdout.strip().splitlines() or [""])[-1]
    return out.returncode == 0, last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="mutants to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per mutant's tests")
    args = parser.parse_args()
    if args.list:
        for name, file, *_ in MUTANTS:
            print(f"{name:32s} {file}")
        for what, why in EQUIVALENT.items():
            print(f"(equivalent) {what}: {why}")
        return
    chosen = [m for m in MUTANTS if not args.names or m[0] in args.names]
    survivors, stale = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp)
        scratch_copy(tree)
        check = subprocess.run([sys.executable, "-c", "import tether; print(tether.__file__)"], cwd=tree,
                               env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True)
        if not check.stdout.strip().startswith(str(tree)):
            raise SystemExit(f"the scratch copy is not the tether that gets imported: {check.stdout or check.stderr}")
        for name, file, old, new, tests in chosen:
            path = tree / file
            original = path.read_text()
            if original.count(old) != 1:
                stale.append(name)
                print(f"{name:32s} STALE (its text is not in {file} exactly once)")
                continue
            path.write_text(original.replace(old, new))
            start = time.perf_counter()
            try:
                passed, last = run_tests(tree, tests, args.timeout)
            finally:
                path.write_text(original)
            verdict = "SURVIVED" if passed else "caught"
            print(f"{name:32s} {verdict:9s} {time.perf_counter() - start:5.0f} s  {last}", flush=True)
            if passed:
                survivors.append(name)
    print(f"\n{len(chosen) - len(survivors) - len(stale)} of {len(chosen)} caught; survived: {survivors or 'none'}"
          + (f"; stale: {stale}" if stale else ""))
    if survivors or stale:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
