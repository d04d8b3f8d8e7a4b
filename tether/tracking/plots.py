"""PNG plots of training curves (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


def plot_curves(path: str | Path, panels: dict[str, dict[str, Sequence[float]]], xlabel: str = "PPO iteration",
                title: str | None = None) -> Path:
    """One panel per entry of ``panels`` (``{panel title: {line label: y values}}``), side by side;
    x is 1..len(y). ``None`` values are skipped. Writes a PNG at ``path`` and returns it."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (name, lines) in zip(axes[0], panels.items()):
        for label, ys in lines.items():
            points = [(i + 1, y) for i, y in enumerate(ys) if y is not None]
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
