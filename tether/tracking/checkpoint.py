"""Atomic checkpoint directories, finding the latest, keeping the last K."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable


def write_atomically(target: str | Path, write: Callable[[Path], None]) -> Path:
    """Run ``write(tmp_dir)`` then rename ``tmp_dir`` to ``target``.

    The temporary directory lives next to ``target`` (same filesystem, so the rename is atomic); a
    crash inside ``write`` leaves ``target`` untouched (an existing one is replaced only after the
    new one is complete).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        write(tmp)
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True))


CHECKPOINT_PATTERN = re.compile(r"step-(\d+)")


def checkpoint_name(iteration: int) -> str:
    return f"step-{iteration:06d}"


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Complete checkpoints ``step-NNNNNN`` under ``directory``, oldest first. Temporary directories
    of interrupted writes (``.step-….tmp-…``) never match."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir()
             if p.is_dir() and (m := CHECKPOINT_PATTERN.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory: str | Path) -> Path | None:
    found = list_checkpoints(directory)
    return found[-1] if found else None


def prune_checkpoints(directory: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints (``keep <= 0`` keeps all); returns the deleted."""
    found = list_checkpoints(directory)
    doomed = found[:-keep] if keep > 0 else []
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed
