"""TRL 0.11's value-head model classes and ``create_reference_model``, on plain transformers/peft.

``AutoModelForCausalLMWithValueHead.from_pretrained(id_or_path_or_model, peft_config=...)`` wraps a
causal LM (``.pretrained_model``) and adds ``.v_head``, a linear value head on the last hidden state
(TRL's ``ValueHead``: ``summary`` Linear, optional dropout, random or ``normal`` init). ``forward``
returns TRL's tuple ``(lm_logits, loss, value)``. ``PPOTrainer`` recognises these wrappers: it trains
``pretrained_model`` as the policy and ``v_head`` as the value head, and applies TRL 0.11's defaults
to the options a program did not set (see ``tether.compat.config``).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch
from torch import nn

from ..models.critic import ValueHead as _TetherValueHead
from ..models.critic import hidden_size_of

logger = logging.getLogger(__name__)

V_HEAD_ARGS = ("summary_dropout_prob", "v_head_initializer_range", "v_head_init_strategy")
LAYER_PATTERNS = ("transformer.h.{layer}", "model.decoder.layers.{layer}", "gpt_neox.layers.{layer}",
                  "model.layers.{layer}")
V_HEAD_FILE = "v_head.safetensors"


class ValueHead(_TetherValueHead):
    """TRL's value head: dropout, then ``summary`` (Linear hidden → 1); ``forward`` gives ``[..]``
    float32 values. PPOTrainer keeps it in eval mode (dropout off in every forward [H24])."""

    def __init__(self, config, summary_dropout_prob: float | None = None, v_head_initializer_range: float = 0.2,
                 v_head_init_strategy: str | None = None):
        super().__init__(hidden_size_of(config))
        nn.init.kaiming_uniform_(self.summary.weight, a=5 ** 0.5)  # TRL: nn.Linear's own random init
        bound = 1 / hidden_size_of(config) ** 0.5
        nn.init.uniform_(self.summary.bias, -bound, bound)
        if v_head_init_strategy == "normal":
            self.summary.weight.data.normal_(mean=0.0, std=v_head_initializer_range)
            self.summary.bias.data.zero_()
        elif v_head_init_strategy is not None:
            raise ValueError(f"v_head_init_strategy: {v_head_init_strategy!r} is not one of [None, 'normal']")
        p = 0.1 if summary_dropout_prob is None else summary_dropout_prob
        self.dropout = nn.Dropout(p) if p else nn.Identity()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return super().forward(self.dropout(hidden))


class PreTrainedModelWrapper(nn.Module):
    """A transformers model (``pretrained_model``) with extra heads; attribute lookups that the
    wrapper does not answer go to the wrapped model (``config``, ``device``, ...)."""

    transformers_parent_class = None

    def __init__(self, pretrained_model, **kwargs):
        super().__init__()
        self.pretrained_model = pretrained_model
        self.is_peft_model = hasattr(pretrained_model, "peft_config") and hasattr(pretrained_model, "disable_adapter")
        self.is_encoder_decoder = False

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("pretrained_model"), name)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """Load (or wrap) a model. ``pretrained_model_name_or_path``: a Hub id, a local directory or
        a transformers model object. ``peft_config=``: wrap it in fresh peft adapters (the reference
        is then the same weights with adapters disabled). Value-head options: ``summary_dropout_prob``,
        ``v_head_initializer_range``, ``v_head_init_strategy``. A directory saved by this class also
        restores its value head. Other keyword arguments go to transformers' ``from_pretrained``."""
        head_kwargs = {k: kwargs.pop(k) for k in V_HEAD_ARGS if k in kwargs}
        peft_config = kwargs.pop("peft_config", None)
        for unsupported in ("reward_adapter", "reward_adapter_name"):
            if kwargs.pop(unsupported, None) is not None:
                raise NotImplementedError(f"{unsupported}: reward adapters inside the policy are not supported; "
                                          "score with a separate reward model (RewardModelScorer) instead")
        if isinstance(pretrained_model_name_or_path, str):
            from ..models.loading import from_pretrained_safely

            model = from_pretrained_safely(cls.transformers_parent_class, pretrained_model_name_or_path,
                                           *model_args, **kwargs)
        elif isinstance(pretrained_model_name_or_path, nn.Module):
            model = pretrained_model_name_or_path
        else:
            raise TypeError("from_pretrained: give a model id, a directory or a transformers model, got "
                            f"{type(pretrained_model_name_or_path).__name__}")
        if peft_config is not None:
            from peft import get_peft_model

            model = get_peft_model(model, peft_config)
        wrapper = cls(model, **head_kwargs)
        if isinstance(pretrained_model_name_or_path, str):
            wrapper._load_v_head(pretrained_model_name_or_path)
        return wrapper

    def _load_v_head(self, directory: str) -> None:
        """The value head saved beside the model: by this class, or by ``PPOTrainer.save_pretrained``."""
        from safetensors.torch import load_file

        from ..models.critic import VALUE_HEAD_FILE

        for name in (V_HEAD_FILE, VALUE_HEAD_FILE):
            if (Path(directory) / name).exists():
                self.v_head.load_state_dict(load_file(Path(directory) / name))
                return

    def save_pretrained(self, save_directory, *args, **kwargs):
        """The wrapped model (or its adapters) as transformers saves it, plus ``v_head.safetensors``."""
        from safetensors.torch import save_file

        self.pretrained_model.save_pretrained(save_directory, *args, **kwargs)
        save_file({k: v.contiguous() for k, v in self.v_head.state_dict().items()},
                  str(Path(save_directory) / V_HEAD_FILE))

    def push_to_hub(self, *args, **kwargs):
        raise NotImplementedError("push_to_hub: save_pretrained(dir) and upload the directory with huggingface_hub")


class AutoModelForCausalLMWithValueHead(PreTrainedModelWrapper):
    """A causal LM with a value head: TRL 0.11's ``AutoModelForCausalLMWithValueHead``."""

    from transformers import AutoModelForCausalLM as transformers_parent_class  # noqa: N813

    def __init__(self, pretrained_model, **kwargs):
        super().__init__(pretrained_model)
        unknown = set(kwargs) - set(V_HEAD_ARGS)
        if unknown:
            raise TypeError(f"AutoModelForCausalLMWithValueHead: unexpected arguments {sorted(unknown)}")
        config = self._base_config()
        self.v_head = ValueHead(config, **kwargs).to(next(pretrained_model.parameters()).device)

    def _base_config(self):
        model = self.pretrained_model
        return model.get_base_model().config if self.is_peft_model else model.config

    def forward(self, input_ids=None, past_key_values=None, attention_mask=None, return_past_key_values=False,
                **kwargs):
        """``(lm_logits, loss, value)``: logits upcast to float32, ``value`` ``[B, L]`` from the last hidden state."""
        kwargs["output_hidden_states"] = True
        if past_key_values is not None:
            kwargs["past_key_values"] = past_key_values
        out = self.pretrained_model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        value = self.v_head(out.hidden_states[-1])
        logits = out.logits.float()
        if return_past_key_values:
            return logits, out.loss, value, out.past_key_values
        return logits, out.loss, value

    def generate(self, *args, **kwargs):
        """The wrapped model's ``generate`` (its LM head fed contiguous rows: ``contiguous_head_inputs``)."""
        from ..rollout.hf import contiguous_head_inputs

        with contiguous_head_inputs(self.pretrained_model):
            return self.pretrained_model.generate(*args, **kwargs)

    def state_dict(self, *args, **kwargs):
        """The wrapped model's state dict (none for a peft model) plus ``v_head.*``."""
        state = {} if self.is_peft_model else self.pretrained_model.state_dict(*args, **kwargs)
        for key, value in self.v_head.state_dict().items():
            state[f"v_head.{key}"] = value
        return state


def create_reference_model(model, num_shared_layers: int | None = None, pattern: str | None = None):
    """A frozen copy of ``model`` for the KL reference, in eval mode.

    ``num_shared_layers = n``: the layers before layer ``n`` (and the embeddings before them) are not
    copied but shared with ``model`` and frozen in it too, so the two stay equal there and the copy
    costs only the remaining layers. ``pattern`` names layer ``n`` when the built-in patterns
    (``model.layers.{layer}``, ``transformer.h.{layer}``, ...) do not match."""
    names = [name for name, _ in model.named_parameters()]
    if num_shared_layers is None:
        ref = copy.deepcopy(model)
        for p in ref.parameters():
            p.requires_grad_(False)
        return ref.eval()
    candidates = [pattern] if pattern is not None else list(LAYER_PATTERNS)
    found = next((c.format(layer=num_shared_layers) for c in candidates
                  if any(c.format(layer=num_shared_layers) in n for n in names)), None)
    if found is None:
        raise ValueError(f"create_reference_model: no parameter matches layer {num_shared_layers} under the "
                         f"patterns {candidates}; pass pattern= (e.g. 'model.layers.{{layer}}')")
    first_unshared = next(i for i, n in enumerate(names) if found in n)
    shared = set(names[:first_unshared])
    ref = copy.deepcopy(model)
    for name in shared:  # the same Parameter object in both models, frozen
        param = model.get_parameter(name)
        param.requires_grad_(False)
        owner, _, leaf = name.rpartition(".")
        setattr(ref.get_submodule(owner) if owner else ref, leaf, param)
    for p in ref.parameters():
        p.requires_grad_(False)
    logger.info("reference model shares %d parameter tensors (before %s) with the policy", len(shared), found)
    return ref.eval()


__all__ = ["AutoModelForCausalLMWithValueHead", "PreTrainedModelWrapper", "ValueHead", "create_reference_model"]
