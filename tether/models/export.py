"""Merge trained LoRA adapters into their base: a plain transformers model anyone can load."""

from __future__ import annotations

import json
from pathlib import Path

from ..tracking.checkpoint import write_atomically
from ..tracking.model_card import write_model_card
from .loading import BASE_FILE, load_policy, load_tokenizer


def merge_adapters(checkpoint: str | Path, out: str | Path, base: str | None = None, dtype: str = "float32") -> Path:
    """Load ``checkpoint`` (peft adapters saved by tether or peft), fold the adapters into the base
    weights (``merge_and_unload``) and save model, tokenizer and a model card to ``out`` atomically."""
    checkpoint = Path(checkpoint)
    if not (checkpoint / "adapter_config.json").exists():
        raise FileNotFoundError(f"{checkpoint}: no adapter_config.json; --merge needs LoRA adapters "
                                "(a full checkpoint already loads with from_pretrained)")
    model = load_policy(str(checkpoint), dtype=dtype, base=base)
    merged = model.merge_and_unload()
    tokenizer = load_tokenizer(str(checkpoint))
    base_name = (json.loads((checkpoint / BASE_FILE).read_text())["name_or_path"]
                 if (checkpoint / BASE_FILE).exists() else base)

    def write(tmp: Path) -> None:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_model_card(tmp, "policy", base_model=base_name, config={"merged_from": str(checkpoint)}, final_path=out)

    return write_atomically(out, write)


__all__ = ["merge_adapters"]
