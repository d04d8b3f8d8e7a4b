"""The over-optimisation study's figures and ``report.md``: best-of-n and RL curves with 95 % prompt-bootstrap
bands, the fitted laws, and a plain verdict per proxy."""

from __future__ import annotations

from pathlib import Path

import torch

from .laws import law
from .rl_arm import rl_law_curve


def _axes(panels: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, panels, figsize=(4.5 * panels, 3.6), squeeze=False)
    return plt, fig, axes[0]


def _band(ax, d, entry, colour, label):
    low, high = zip(*entry["R_ci95"])
    ax.plot(d, entry["R"], "o-" if len(d) < 12 else "-", color=colour, ms=3, label=label)
    ax.fill_between(d, low, high, color=colour, alpha=0.2)


def _label(ax, title: str) -> None:
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_title(title)
    ax.set_xlabel("d = √KL (nats^½)")
    ax.set_ylabel("score − base")
    ax.legend(fontsize=7)


def _save(plt, fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_bon(path: Path, arms: dict) -> None:
    """Gold and proxy best-of-n curves against d, one panel per proxy, with 95 % bands and the fitted gold law."""
    plt, fig, axes = _axes(len(arms))
    for ax, (name, arm) in zip(axes, arms.items()):
        d = torch.tensor(arm["d"])
        for key, colour in (("proxy", "tab:blue"), ("gold", "tab:orange")):
            _band(ax, d, arm[key], colour, f"{key} (best-of-n)")
        fine = torch.linspace(0, float(d.max()), 100)
        ax.plot(fine, law(fine, arm["gold"]["alpha"], arm["gold"]["beta"], "bon"), "--", color="tab:orange",
                label="gold fit d(α − βd)")
        _label(ax, f"proxy '{name}' (accuracy {arm['proxy_accuracy']:.2f})")
    _save(plt, fig, path)


def plot_rl(path: Path, arms: dict) -> None:
    """Gold and proxy at each RL evaluation point against d (base policy at the origin), one panel per proxy."""
    plt, fig, axes = _axes(len(arms))
    for ax, (name, arm) in zip(axes, arms.items()):
        d = [0.0] + arm["d"]
        for key, colour in (("proxy", "tab:blue"), ("gold", "tab:orange")):
            entry = {"R": [0.0] + arm[key]["R"], "R_ci95": [[0.0, 0.0]] + arm[key]["R_ci95"]}
            _band(ax, d, entry, colour, f"{key} (PPO, no KL penalty)")
        curve = rl_law_curve(arm)
        if curve is not None:
            ax.plot(*curve, "--", color="tab:orange", label="gold fit d(α − β ln d)")
        _label(ax, f"PPO against proxy '{name}'")
    _save(plt, fig, path)


def _interval(pair) -> str:
    return "—" if pair is None else f"[{pair[0]:.3f}, {pair[1]:.3f}]"


def _bon_verdict(beta_ci95: list[float]) -> str:
    """One phrase for the gold curve's curvature from β's 95 % interval ``[low, high]``."""
    low, high = beta_ci95
    if low > 0:
        return "gold bends (β > 0)"
    if high < 0:
        return "no bend: β < 0 (gold still accelerating)"
    return "no curvature: β's interval includes 0"


def _bon_lines(summary: dict, config) -> list[str]:
    lines = ["## Best-of-n", "",
             f"{summary['heldout_prompts']} held-out prompts × {summary['pool_samples']} base samples (temperature "
             f"{config.temperature}, {config.max_new_tokens} tokens), gold = {config.gold}, every interval a 95 % "
             f"prompt bootstrap ({config.bootstrap_rounds} resamples). Gold and proxy are re-centred on the base "
             f"policy (n = 1); d = √(log n − (n−1)/n).", "",
             "| proxy | pairs | accuracy vs gold | gold α | gold β | gold d* | gold R² | proxy β | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, arm in summary["bon"].items():
        g, p = arm["gold"], arm["proxy"]
        d_star = "none (β ≤ 0)" if g["d_star"] is None else f"{g['d_star']:.2f} {_interval(g['d_star_ci95'])}"
        verdict = _bon_verdict(g["beta_ci95"])
        lines.append(f"| {name} | {arm['pairs']} | {arm['proxy_accuracy']:.3f} | {g['alpha']:.3f} "
                     f"{_interval(g['alpha_ci95'])} | {g['beta']:.3f} {_interval(g['beta_ci95'])} | {d_star} | "
                     f"{g['r_squared']:.2f} | {p['beta']:.3f} {_interval(p['beta_ci95'])} | {verdict} |")
    d_max = max(arm["d"][-1] for arm in summary["bon"].values())
    bending = [n for n, arm in summary["bon"].items() if arm["gold"]["bends"]]
    lines += ["", ("Best-of-n over-optimisation signal (gold's fitted β above 0) for: " + ", ".join(bending) + "."
                   if bending else f"No proxy bends gold within d ≤ {d_max:.2f} on this gold: make the proxy weaker "
                                   "(less data, label noise) before spending the RL budget."),
              "", "![best-of-n](bon.png)", ""]
    return lines


def _rl_lines(summary: dict, config) -> list[str]:
    lines = ["## RL (PPO, no KL penalty)", "",
             f"PPO against each proxy for {config.rl_iterations} iterations of {config.ppo.batch_size} prompts, "
             f"evaluated every {config.rl_eval_every} iterations on the same {summary['heldout_prompts']} held-out "
             f"prompts × {config.rl_eval_samples} samples; KL is the k1 estimate on the policy's own samples, d = "
             "√(mean KL); gold and proxy are re-centred on the base policy's mean of the same prompts. One PPO seed "
             "per arm. The fit R(d) = d(α − β ln d) has no intercept and is unreliable near d = 0 (Gao et al., fn 1).",
             "", "| proxy | d reached | gold best (iteration, d) | gold at the end | end − best, 95 % | gold β | "
             "gold d* | proxy at the end | verdict |", "|---|---|---|---|---|---|---|---|---|"]
    for name, arm in summary["rl"].items():
        g, p = arm["gold"], arm["proxy"]
        b = arm["iteration"].index(g["best_iteration"])
        beta = f"{g['beta']:.3f} {_interval(g['beta_ci95'])}" if "beta" in g else "—"
        d_star = "—" if g.get("d_star") is None else f"{g['d_star']:.2f}"
        verdict = ("gold falls after its peak" if g["falls"] else
                   "gold still at its best at the end" if g["best_iteration"] == arm["iteration"][-1] else
                   "no significant fall after the peak")
        lines.append(f"| {name} | {arm['d'][-1]:.2f} | {g['R'][b]:+.3f} ({g['best_iteration']}, {arm['d'][b]:.2f}) | "
                     f"{g['R'][-1]:+.3f} {_interval(g['R_ci95'][-1])} | {g['last_minus_best']:+.3f} "
                     f"{_interval(g['last_minus_best_ci95'])} | {beta} | {d_star} | {p['R'][-1]:+.3f} | {verdict} |")
    lines += ["", "The RL law fitted on the first two thirds of each run, against the last third (the interval is of "
                  "measured − predicted, fit and measurement resampled together):", "",
              "| proxy | fitted on iterations | α, β | iteration: measured vs predicted (95 % of the miss) | holds |",
              "|---|---|---|---|---|"]
    for name, arm in summary["rl"].items():
        x = arm["gold"].get("extrapolation")
        if x is None:
            lines.append(f"| {name} | — | too few points with d > 0 to fit | — | — |")
            continue
        later = "; ".join(f"{r['iteration']}: {r['measured']:+.3f} vs {r['predicted']:+.3f} {_interval(r['residual_ci95'])}"
                          for r in x["later"])
        lines.append(f"| {name} | {', '.join(map(str, x['fit_iterations']))} | {x['alpha']:.3f}, {x['beta']:.3f} | "
                     f"{later} | {'yes' if x['holds'] else 'no'} |")
    falling = [n for n, arm in summary["rl"].items() if arm["gold"]["falls"]]
    d_max = max(arm["d"][-1] for arm in summary["rl"].values())
    lines += ["", ("RL over-optimisation (the proxy keeps rising while gold falls from its peak) for: "
                   + ", ".join(falling) + "." if falling else
                   f"No over-optimisation within d ≤ {d_max:.2f} on this gold: gold did not fall significantly from "
                   "its best point in any RL arm."), "", "![RL](rl.png)", ""]
    return lines


def write_report(path: Path, summary: dict, config) -> None:
    """``report.md``: the best-of-n section and, when the RL arms ran, the RL section."""
    lines = ["# Reward-model over-optimisation (Gao, Schulman & Hilton 2022)", "",
             f"Gold = {config.gold}; proxies = {config.reward_backbone} reward models on gold-labelled pairs of base "
             f"samples; policy = {config.policy.name_or_path}. Machine: {summary.get('hardware', 'unknown')}; "
             f"wall time {summary['wall_seconds'] / 60:.1f} min"
             + (f" over {len(summary['calls_seconds'])} calls." if len(summary.get("calls_seconds", [])) > 1 else "."), ""]
    lines += _bon_lines(summary, config)
    if summary.get("rl"):
        lines += _rl_lines(summary, config)
    path.write_text("\n".join(lines), encoding="utf-8")
