"""Where metrics go: ``metrics.jsonl`` always; TensorBoard, Weights & Biases and MLflow on request.

``report_to`` names the extra sinks. Each is imported only when asked for (``pip install
'tether-rlhf[tensorboard]'``, ``[wandb]``, ``[mlflow]``); none needs the network unless you point
it at a server (W&B follows ``WANDB_MODE``; MLflow writes to ``RUN_DIR/mlruns`` unless
``MLFLOW_TRACKING_URI`` is set).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable

from .metrics import JSONLSink

REPORT_TO = ("tensorboard", "wandb", "mlflow")


def _numbers(stats: dict) -> dict[str, float]:
    return {k: float(v) for k, v in stats.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def _missing(package: str, extra: str) -> ImportError:
    return ImportError(f"report_to: {extra} needs the '{package}' package: pip install 'tether-rlhf[{extra}]'")


class TensorBoardSink:
    """Scalars into TensorBoard event files under ``run_dir/tensorboard``."""

    def __init__(self, run_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise _missing("tensorboard", "tensorboard") from None
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def log(self, step: int, stats: dict) -> None:
        for key, value in _numbers(stats).items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """A Weights & Biases run (project ``$WANDB_PROJECT`` or ``tether``) named after the run directory."""

    def __init__(self, run_dir: Path, config: dict | None):
        try:
            import wandb
        except ImportError:
            raise _missing("wandb", "wandb") from None
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "tether"), name=run_dir.name,
                              dir=str(run_dir), config=config or {})

    def log(self, step: int, stats: dict) -> None:
        self.run.log(_numbers(stats), step=step)

    def close(self) -> None:
        self.run.finish()


class MLflowSink:
    """An MLflow run; the flattened config as parameters, the metrics per step."""

    def __init__(self, run_dir: Path, config: dict | None):
        try:
            import mlflow
        except ImportError:
            raise _missing("mlflow", "mlflow") from None
        self.mlflow = mlflow
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            mlflow.set_tracking_uri((run_dir / "mlruns").resolve().as_uri())
        self.run = mlflow.start_run(run_name=run_dir.name)
        params = dict(_flatten(config or {}))
        if params:
            mlflow.log_params({k: str(v)[:500] for k, v in params.items()})

    def log(self, step: int, stats: dict) -> None:
        self.mlflow.log_metrics(_numbers(stats), step=step)

    def close(self) -> None:
        self.mlflow.end_run()


def _flatten(config: dict, prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key, value in config.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


class Sinks:
    """Fan one ``log(step, stats)`` out to every sink."""

    def __init__(self, sinks: list):
        self.sinks = sinks

    @property
    def path(self) -> Path:
        """The JSONL file (the first sink)."""
        return self.sinks[0].path

    def log(self, step: int, stats: dict) -> None:
        for sink in self.sinks:
            sink.log(step, stats)

    def close(self) -> None:
        for sink in self.sinks[1:]:
            sink.close()


def check_report_to(report_to: Iterable[str]) -> list[str]:
    names = list(report_to)
    unknown = [n for n in names if n not in REPORT_TO]
    if unknown:
        raise ValueError(f"report_to: unknown sink(s) {unknown}; choose from {list(REPORT_TO)}")
    return names


def make_sinks(run_dir: str | Path, report_to: Iterable[str] = (), config: dict | None = None) -> Sinks:
    """``metrics.jsonl`` under ``run_dir`` plus the ``report_to`` sinks (``config`` is recorded
    by W&B and MLflow)."""
    run_dir = Path(run_dir)
    sinks: list = [JSONLSink(run_dir / "metrics.jsonl")]
    for name in check_report_to(report_to):
        if name == "tensorboard":
            sinks.append(TensorBoardSink(run_dir))
        elif name == "wandb":
            sinks.append(WandbSink(run_dir, config))
        else:
            sinks.append(MLflowSink(run_dir, config))
    return Sinks(sinks)


__all__ = ["REPORT_TO", "Sinks", "check_report_to", "make_sinks"]
