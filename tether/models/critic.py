"""Value models: a separate critic network, or a value head on the policy's own hidden states."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import nn

VALUE_HEAD_FILE = "value_head.safetensors"


def unwrap_peft(model):
    """The underlying transformers model of a peft ``PeftModel`` (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") and hasattr(model, "peft_config") else model


def is_peft(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")


def hidden_size_of(config) -> int:
    for name in ("hidden_size", "n_embd", "d_model", "dim"):
        if getattr(config, name, None):
            return int(getattr(config, name))
    raise ValueError(f"cannot find the hidden size in model config {type(config).__name__}")


class ValueHead(nn.Module):
    """Linear map from a hidden state ``[..., H]`` to a scalar value ``[...]`` (float32)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.summary = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.summary.weight)
        nn.init.zeros_(self.summary.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.summary(hidden.to(self.summary.weight.dtype)).squeeze(-1).float()


class ValueModel(nn.Module):
    """A critic: a transformer backbone (no LM head) and a ``ValueHead``.

    ``forward(input_ids, attention_mask, position_ids) -> values [B, L]``, one value per position,
    read from the backbone's last hidden state. It never shares weights with the policy.
    """

    def __init__(self, backbone: nn.Module, head: ValueHead):
        super().__init__()
        self.backbone = backbone
        self.head = head

    @classmethod
    def from_causal_lm(cls, model) -> ValueModel:
        """A critic initialised from a (possibly peft-wrapped) causal LM's transformer weights."""
        # a peft copy still holds LoRA layers: fold them in (fresh adapters are a no-op)
        base = copy.deepcopy(model).merge_and_unload() if is_peft(model) else copy.deepcopy(model)
        backbone = base.base_model if hasattr(base, "base_model") else base
        for p in backbone.parameters():
            p.requires_grad_(True)
        return cls(backbone, ValueHead(hidden_size_of(base.config)))

    @classmethod
    def from_reward_model(cls, reward_model, shift: float = 0.0, scale: float = 1.0) -> ValueModel:
        """A critic initialised from a sequence-classification reward model (backbone + score head).

        The TL;DR recipe [H24] initialises the critic this way. The reward model must share the
        policy's tokenizer: values are read per policy token. ``shift``/``scale``: the reward model's
        stored normalisation ``score = (logit − shift) / scale`` [Z19], folded into the head so the
        critic starts on the scale of the scores it learns to predict.
        """
        if not scale > 0:
            raise ValueError(f"reward normalisation scale must be > 0, got {scale}")
        rm = copy.deepcopy(reward_model)
        backbone = rm.base_model
        head = ValueHead(hidden_size_of(rm.config))
        score = getattr(rm, "score", None)
        if isinstance(score, nn.Linear) and score.out_features == 1:
            head.summary.weight.data.copy_(score.weight.data.float() / scale)
            bias = score.bias.data.float() if score.bias is not None else torch.zeros(1)
            head.summary.bias.data.copy_((bias - shift) / scale)
        else:
            raise ValueError(
                f"critic_init='reward_model' needs a decoder reward model with a linear 'score' head; "
                f"{type(reward_model).__name__} has none"
            )
        for p in backbone.parameters():
            p.requires_grad_(True)
        return cls(backbone, head)

    def forward(self, input_ids, attention_mask, position_ids) -> torch.Tensor:
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
        return self.head(out.last_hidden_state)

    def save_pretrained(self, directory: str | Path, state_dict: dict | None = None) -> None:
        """Save the backbone in HF format and the head as safetensors next to it. ``state_dict``: this
        module's full weights (``backbone.*``, ``head.*``) when they are not its own tensors (gathered
        from shards)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        if state_dict is None:
            self.backbone.save_pretrained(directory)
            head = self.head.state_dict()
        else:
            backbone = {k[len("backbone."):]: v for k, v in state_dict.items() if k.startswith("backbone.")}
            self.backbone.save_pretrained(directory, state_dict=backbone)
            head = {k[len("head."):]: v for k, v in state_dict.items() if k.startswith("head.")}
            from .weights import strip_fsdp_class_names

            strip_fsdp_class_names(directory)
        save_file({k: v.contiguous() for k, v in head.items()}, directory / VALUE_HEAD_FILE)
        (directory / "tether_value_model.json").write_text(json.dumps({"kind": "ValueModel"}))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> ValueModel:
        """Load a critic written by ``save_pretrained`` (safetensors only)."""
        from safetensors.torch import load_file
        from transformers import AutoModel

        from .loading import from_pretrained_safely

        directory = Path(directory)
        backbone = from_pretrained_safely(AutoModel, str(directory))
        head = ValueHead(hidden_size_of(backbone.config))
        head.load_state_dict(load_file(directory / VALUE_HEAD_FILE))
        return cls(backbone, head)
