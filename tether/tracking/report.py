"""`tether report RUN_DIR`: PNG plots of a run's metrics and a Markdown + HTML summary with samples."""

from __future__ import annotations

import html
import json
from pathlib import Path

from ..data.prompts import DataError
from .plots import plot_curves

# file stem -> (panel title, metric keys); a plot is drawn when any of its keys was logged
PPO_PLOTS = {
    "reward": ("reward", ["env/reward_mean", "objective/rlhf_reward"]),
    "kl": ("KL to the reference (nats / response)", ["objective/kl"]),
    "entropy": ("entropy (nats / token)", ["objective/entropy"]),
    "clipfrac": ("clip fraction", ["policy/clipfrac", "val/clipfrac"]),
    "value_error": ("value error", ["val/error"]),
    "response_length": ("response length (tokens)", ["tokens/response_len_mean"]),
}
HEADLINE = ["env/reward_mean", "objective/kl", "objective/entropy", "policy/clipfrac", "val/error",
            "tokens/response_len_mean", "train/loss", "train/accuracy", "eval/accuracy"]


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        raise DataError(f"{path}: not found; `tether report` needs a run directory written by tether "
                        "(tether ppo / rm / demo, or train(output_dir=...))")
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise DataError(f"{path}:{lineno}: invalid JSON") from None
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
    if not rows:
        raise DataError(f"{path}: no metric rows")
    return rows


def _series(rows: list[dict], key: str) -> list[float | None]:
    return [r.get(key) if isinstance(r.get(key), (int, float)) else None for r in rows]


def _panels(rows: list[dict]) -> dict[str, tuple[str, dict[str, list]]]:
    """Plot stem -> (title, {metric: values}): the PPO set, or every numeric metric of other runs."""
    keys = {k for r in rows for k in r}
    panels = {stem: (title, {k: _series(rows, k) for k in metrics if k in keys})
              for stem, (title, metrics) in PPO_PLOTS.items()}
    panels = {stem: p for stem, p in panels.items() if p[1]}
    if not panels:  # a reward-model run or another logger: one panel per numeric metric
        numeric = sorted(k for k in keys if k != "step" and not k.startswith("time/")
                         and any(isinstance(r.get(k), (int, float)) for r in rows))
        panels = {k.replace("/", "_"): (k, {k: _series(rows, k)}) for k in numeric}
    return panels


def write_report(run_dir: str | Path, out_dir: str | Path | None = None, samples: int = 6) -> dict[str, Path]:
    """Write ``plots/*.png``, ``curves.png``, ``report.md`` and ``report.html`` for ``run_dir``
    (into ``out_dir``, default the run directory). Returns the written paths by name."""
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir else run_dir
    rows = read_metrics(run_dir)
    steps = [r["step"] for r in rows]
    xlabel = "PPO iteration" if "objective/kl" in rows[0] else "step"
    written: dict[str, Path] = {}
    panels = _panels(rows)
    for stem, (title, lines) in panels.items():
        written[stem] = plot_curves(out / "plots" / f"{stem}.png", {title: lines}, xlabel=xlabel, x=steps)
    written["curves"] = plot_curves(out / "curves.png", {t: lines for t, lines in panels.values()}, xlabel=xlabel,
                                    x=steps, columns=min(3, len(panels)), title=run_dir.name)
    table = _summary_table(rows)
    sample_rows = _samples(run_dir / "samples.jsonl", samples)
    config = (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").exists() else None
    written["markdown"] = out / "report.md"
    written["markdown"].write_text(_markdown(run_dir, rows, table, sample_rows, config, panels), encoding="utf-8")
    written["html"] = out / "report.html"
    written["html"].write_text(_html(run_dir, rows, table, sample_rows, config, panels), encoding="utf-8")
    return written


def _summary_table(rows: list[dict]) -> list[tuple[str, float | None, float | None]]:
    """(metric, mean of the first 5 steps, mean of the last 5) for the headline metrics present."""
    def mean(part, key):
        values = [r[key] for r in part if isinstance(r.get(key), (int, float))]
        return sum(values) / len(values) if values else None
    first, last = rows[:5], rows[-5:]
    return [(k, mean(first, k), mean(last, k)) for k in HEADLINE if any(k in r for r in rows)]


def _samples(path: Path, n: int) -> list[dict]:
    """The first and the last iteration's logged samples (up to ``n`` in all)."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    if not rows:
        return []
    first_it, last_it = rows[0].get("iteration"), rows[-1].get("iteration")
    first = [r for r in rows if r.get("iteration") == first_it][: n // 2]
    last = [r for r in rows if r.get("iteration") == last_it][: n - len(first)]
    return first + (last if last_it != first_it else [])


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.4g}"


def _prompt_text(prompt) -> str:
    if isinstance(prompt, list):
        return " / ".join(str(m.get("content", "")) for m in prompt if isinstance(m, dict))
    return str(prompt)


def _markdown(run_dir, rows, table, samples, config, panels) -> str:
    lines = [f"# Run report: {run_dir.name}", "", f"{len(rows)} logged steps (step {rows[0]['step']} to "
             f"{rows[-1]['step']}).", "", "![curves](curves.png)", "", "| metric | first 5 steps | last 5 steps |",
             "|---|---|---|"]
    lines += [f"| {k} | {_fmt(a)} | {_fmt(b)} |" for k, a, b in table]
    lines += ["", "Plots: " + ", ".join(f"[{stem}](plots/{stem}.png)" for stem in panels)]
    if samples:
        lines += ["", "## Sample completions", "", "| iteration | prompt | completion | score |", "|---|---|---|---|"]
        for s in samples:
            cell = lambda t: str(t).replace("|", "\\|").replace("\n", " ")[:300]  # noqa: E731
            lines.append(f"| {s.get('iteration')} | {cell(_prompt_text(s.get('prompt')))} | "
                         f"{cell(s.get('completion', ''))} | {_fmt(s.get('score'))} |")
    if config:
        lines += ["", "## Config", "", "```yaml", config.rstrip(), "```"]
    return "\n".join(lines) + "\n"


def _html(run_dir, rows, table, samples, config, panels) -> str:
    e = html.escape
    parts = [f"<!doctype html><meta charset='utf-8'><title>{e(run_dir.name)}</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}td,th{border:1px solid #ccc;"
             "padding:4px;vertical-align:top}table{border-collapse:collapse}</style>",
             f"<h1>Run report: {e(run_dir.name)}</h1><p>{len(rows)} logged steps.</p>",
             "<img src='curves.png' style='max-width:100%'>",
             "<table><tr><th>metric</th><th>first 5 steps</th><th>last 5 steps</th></tr>"]
    parts += [f"<tr><td>{e(k)}</td><td>{_fmt(a)}</td><td>{_fmt(b)}</td></tr>" for k, a, b in table]
    parts.append("</table>")
    if samples:
        parts.append("<h2>Sample completions</h2><table><tr><th>iteration</th><th>prompt</th><th>completion</th>"
                     "<th>score</th></tr>")
        parts += [f"<tr><td>{s.get('iteration')}</td><td>{e(_prompt_text(s.get('prompt')))}</td>"
                  f"<td>{e(str(s.get('completion', '')))}</td><td>{_fmt(s.get('score'))}</td></tr>" for s in samples]
        parts.append("</table>")
    if config:
        parts.append(f"<h2>Config</h2><pre>{e(config)}</pre>")
    return "\n".join(parts) + "\n"


__all__ = ["read_metrics", "write_report"]
