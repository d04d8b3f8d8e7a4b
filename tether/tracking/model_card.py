"""Model cards (README.md with Hugging Face front matter) for what tether saves."""

from __future__ import annotations

import math
from pathlib import Path

import yaml

USAGE = {
    "policy": "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
              "model = AutoModelForCausalLM.from_pretrained(PATH)\ntokenizer = AutoTokenizer.from_pretrained(PATH)",
    "adapter": "from peft import AutoPeftModelForCausalLM\nmodel = AutoPeftModelForCausalLM.from_pretrained(PATH)\n"
               "# or merge into a plain transformers model: tether export PATH --merge --out MERGED",
    "reward_model": "from tether import RewardModelScorer\nscore = RewardModelScorer.from_pretrained(PATH)\n"
                    "score(['prompt'], ['completion'])  # normalised scalar rewards",
}
TITLES = {"policy": "policy trained with RLHF (PPO)", "adapter": "LoRA adapters trained with RLHF (PPO)",
          "reward_model": "reward model trained on preference pairs (Bradley–Terry)"}


def write_model_card(directory: str | Path, kind: str, base_model: str | None = None, config: dict | None = None,
                     metrics: dict | None = None, final_path: str | Path | None = None) -> Path:
    """Write ``directory/README.md``. kind: policy | adapter | reward_model; ``config``: the training
    options (shown as YAML); ``metrics``: the last logged values (floats); ``final_path``: where the
    model will live (when ``directory`` is a temporary directory about to be renamed)."""
    shown = Path(final_path) if final_path is not None else Path(directory)
    front = {"library_name": "peft" if kind == "adapter" else "transformers",
             "tags": ["tether", "rlhf", "ppo" if kind != "reward_model" else "reward-model"]}
    if base_model:
        front["base_model"] = str(base_model)
    lines = ["---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", "",
             f"# {shown.name}: {TITLES[kind]}", "",
             f"Trained with [tether](https://github.com/tether-rlhf/tether){f' from `{base_model}`' if base_model else ''}.",
             "", "## Use", "", "```python", USAGE[kind].replace("PATH", repr(str(shown))), "```"]
    numbers = {k: v for k, v in (metrics or {}).items()
               if isinstance(v, (int, float)) and math.isfinite(v) and not k.startswith("time/")}
    if numbers:
        lines += ["", "## Last logged metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4g} |" for k, v in sorted(numbers.items())]
    if config:
        lines += ["", "## Training config", "", "```yaml", yaml.safe_dump(config, sort_keys=False).rstrip(), "```"]
    path = Path(directory) / "README.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


__all__ = ["write_model_card"]
