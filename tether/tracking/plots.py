"""PNG plots of training curves (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


def plot_curves(path: str | Path, panels: dict[str, dict[str, Sequence[float]]], xlabel: str = "PPO iteration",
                title: str | None = None, x: Sequence[float] | None = None, columns: int | None = None) -> Path:
    """One panel per entry of ``panels`` (``{panel title: {line label: y values}}``), in a grid of
    ``columns`` (default: one row); x is ``x`` or 1..len(y). ``None`` values are skipped. Writes a
    PNG at ``path`` and returns it."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    cols = columns or len(panels)
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (name, lines) in zip(axes.flat, panels.items()):
        for label, ys in lines.items():
            xs = x if x is not None else range(1, len(ys) + 1)
            points = [(i, y) for i, y in zip(xs, ys) if y is not None]
            if points:
                ax.plot(*zip(*points), marker="o", markersize=3, label=label)
        ax.set_title(name)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        if len(lines) > 1:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = ["plot_curves"]
