"""Examples run in a shrunken form (a tiny model, one iteration) so they never rot."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_step_api_example_runs(tmp_path, model, tokenizer):
    model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "step_api.py"), "--model", str(tmp_path / "tiny"),
                             "--iterations", "1", "--batch-size", "4", "--max-new-tokens", "4"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "iteration 1: reward" in result.stdout
