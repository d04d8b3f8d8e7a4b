"""The documentation site builds in strict mode: a broken link or anchor, a page missing from the nav, or an
API reference (``::: tether...``) that does not resolve fails the build, and so this test."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_site_builds_strictly(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # mkdocs-material's banner about MkDocs 2, not about us
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                            cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "site" / "api" / "index.html").exists()
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    from tether import PPOTrainer

    first_words = " ".join(PPOTrainer.step.__doc__.split()[:4])  # rendered from the docstrings, not written by hand
    assert "PPOTrainer" in api and first_words in api, first_words


def test_a_broken_link_fails_the_strict_build(tmp_path):
    """The guard itself: the same build over a copy of the docs with one dead link must fail."""
    import shutil

    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    (tmp_path / "docs" / "index.md").write_text((tmp_path / "docs" / "index.md").read_text()
                                                + "\n[gone](no-such-page.md)\n")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode != 0 and "no-such-page.md" in result.stderr
