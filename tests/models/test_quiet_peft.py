"""Wrapping a model in LoRA adapters shows no FutureWarning the user cannot act on (peft reads a property
transformers deprecated); other warnings still pass."""

import warnings

from tether.models.loading import LoraSettings, apply_lora, quiet_peft_deprecation
from tiny import tiny_llama, tiny_tokenizer


def test_apply_lora_raises_no_future_warning():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        apply_lora(tiny_llama(tiny_tokenizer()), LoraSettings(r=4, alpha=8, target_modules=["q_proj"]))
    assert not [w for w in caught if issubclass(w.category, FutureWarning)], [str(w.message) for w in caught]


def test_only_that_warning_is_silenced():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_peft_deprecation():
            warnings.warn("something else is deprecated", FutureWarning)
    assert [str(w.message) for w in caught] == ["something else is deprecated"]
