"""Model loading, critics/value heads, and the shared scoring forward."""

from .critic import ValueHead, ValueModel, is_peft, unwrap_peft
from .forward import ResponseOutput, critic_values, position_ids_from_mask, response_forward
from .loading import LoraSettings, apply_lora, load_causal_lm, load_sequence_classifier, load_tokenizer

__all__ = ["LoraSettings", "ResponseOutput", "ValueHead", "ValueModel", "apply_lora", "critic_values",
           "is_peft", "load_causal_lm", "load_sequence_classifier", "load_tokenizer",
           "position_ids_from_mask", "response_forward", "unwrap_peft"]
