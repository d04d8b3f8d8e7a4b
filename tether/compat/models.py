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
        # TRL's causal wrapper has no is_encoder_decoder attribute (TRL code tests it with hasattr)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "is_encoder_decoder":  # TRL: only the seq2seq wrapper has it
                raise
            return getattr(super().__getattr__("pretrained_model"), name)

    @property
    def current_device(self) -> torch.device:
        """The device of the wrapped model's weights (TRL: where to put inputs and rewards)."""
        return next(self.pretrained_model.parameters()).device

    @classmethod
    def around(cls, pretrained_model: nn.Module, v_head: nn.Module):
        """A frozen wrapper of ``pretrained_model`` with a frozen copy of ``v_head`` (TRL's reference
        model: a copy of the policy's wrapper); no random initialisation runs."""
        wrapper = cls.__new__(cls)
        PreTrainedModelWrapper.__init__(wrapper, pretrained_model)
        wrapper.v_head = copy.deepcopy(v_head).requires_grad_(False)
        return wrapper.eval()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """Load (or wrap) a model. ``pretrained_model_name_or_path``: a Hub id, a local directory or
        a transformers model object. ``peft_config=``: wrap it in fresh peft adapters (the reference
        is then the same weights with adapters disabled). Value-head options: ``summary_dropout_prob``,
        ``v_head_initializer_range``, ``v_head_init_strategy``. A directory saved by this class also
        restores its value head. Other keyword arguments go to transformers' ``from_pretrained``."""
        head_kwargs = {k: kwargs.pop(k) for k in V_HEAD_ARGS if k in kwargs}
        peft_config = kwargs.pop("peft_config", None)
        reward_adapter = kwargs.pop("reward_adapter", None)
        reward_adapter_name = kwargs.pop("reward_adapter_name", "reward_adapter")
        kwargs.pop("is_trainable", None)
        if reward_adapter is not None and not isinstance(reward_adapter, (str, Path)):
            raise ValueError("reward_adapter: give the directory (or Hub id) of a reward-model LoRA adapter")
        if isinstance(pretrained_model_name_or_path, str):
            from ..models.loading import from_pretrained_safely

            kwargs = translate_loading_kwargs(kwargs, cls.__name__)
            model = from_pretrained_safely(cls.transformers_parent_class, pretrained_model_name_or_path,
                                           *model_args, **kwargs)
        elif isinstance(pretrained_model_name_or_path, nn.Module):
            model = pretrained_model_name_or_path
        else:
            raise TypeError("from_pretrained: give a model id, a directory or a transformers model, got "
                            f"{type(pretrained_model_name_or_path).__name__}")
        if peft_config is not None:
            from peft import get_peft_model

            from ..models.loading import quiet_peft_deprecation

            with quiet_peft_deprecation():
                model = get_peft_model(model, peft_config)
        wrapper = cls(model, **head_kwargs)
        if isinstance(pretrained_model_name_or_path, str):
            wrapper._load_v_head(pretrained_model_name_or_path)
        if reward_adapter is not None:
            if not wrapper.is_peft_model:
                raise ValueError("reward_adapter can only be used with a peft model (pass peft_config= or a PeftModel)")
            wrapper.score = load_reward_adapter(model, str(reward_adapter), reward_adapter_name)
            wrapper.rm_adapter_name = reward_adapter_name
        return wrapper

    supports_rm_adapter = property(lambda self: "score" in self._modules)
    policy_adapter_name = "default"

    def compute_reward_score(self, input_ids, attention_mask=None, **kwargs) -> torch.Tensor:
        """Scores ``[B, L, num_labels]`` of the reward adapter (loaded with ``reward_adapter=``) on the
        shared base model, at every position (read the last real token's). The policy's adapter is
        active again afterwards; no gradient is recorded."""
        if not self.supports_rm_adapter:
            raise ValueError("This model does not support reward modeling adapter: load it with "
                             "from_pretrained(..., peft_config=..., reward_adapter=DIR)")
        model = self.pretrained_model
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        was_training = model.training
        model.set_adapter(self.rm_adapter_name)
        model.eval()  # dropout off: a reward is a deterministic function of the text
        try:
            with torch.no_grad():
                out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                            return_dict=True, **kwargs)
                return self.score(out.hidden_states[-1].to(self.score.weight.dtype))
        finally:
            model.train(was_training)
            model.set_adapter(self.policy_adapter_name)
            for name, p in model.named_parameters():  # set_adapter flips requires_grad: restore the policy's
                p.requires_grad_(name in trainable)

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


def load_reward_adapter(peft_model, adapter: str, name: str) -> nn.Linear:
    """Load a reward model's LoRA adapter (``task_type=SEQ_CLS``, saved with its ``score`` head)
    into ``peft_model`` beside the policy's adapter, frozen, and return its score head (frozen
    Linear hidden → num_labels) — one base model serves policy, reference and reward."""
    from safetensors.torch import load_file

    peft_model.load_adapter(adapter, name, is_trainable=False)
    weights = Path(adapter) / "adapter_model.safetensors"
    if not weights.exists():
        from huggingface_hub import hf_hub_download

        try:
            weights = Path(hf_hub_download(adapter, "adapter_model.safetensors"))
        except Exception as err:  # noqa: BLE001 - any Hub or path failure means the same to the user
            raise FileNotFoundError(f"reward_adapter {adapter!r}: no adapter_model.safetensors ({err})") from None
    state = load_file(str(weights))
    score = {k.rsplit(".", 1)[-1]: v for k, v in state.items() if ".score." in f".{k}" or k.startswith("score.")}
    if "weight" not in score:
        raise ValueError(f"reward_adapter {adapter!r}: no score head among its weights (a SEQ_CLS adapter saves "
                         "one as modules_to_save)")
    num_labels, hidden = score["weight"].shape
    dtype = next(peft_model.parameters()).dtype
    head = nn.Linear(hidden, num_labels, bias="bias" in score).to(device=score["weight"].device, dtype=dtype)
    head.load_state_dict({k: v.to(dtype) for k, v in score.items()})
    return head.to(next(peft_model.parameters()).device).requires_grad_(False)


class AutoModelForCausalLMWithValueHead(PreTrainedModelWrapper):
    """A causal LM with a value head: TRL 0.11's ``AutoModelForCausalLMWithValueHead``."""

    from transformers import AutoModelForCausalLM as transformers_parent_class  # noqa: N813

    def __init__(self, pretrained_model, **kwargs):
        super().__init__(pretrained_model)
        unknown = set(kwargs) - set(V_HEAD_ARGS)
        if unknown:
            raise TypeError(f"{type(self).__name__}: unexpected arguments {sorted(unknown)}")
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
        value = self.v_head(self._last_hidden_state(out))
        logits = out.logits.float()
        if return_past_key_values:
            return logits, out.loss, value, out.past_key_values
        return logits, out.loss, value

    @staticmethod
    def _last_hidden_state(out) -> torch.Tensor:
        """The hidden states the value head reads: ``[B, L, H]``."""
        return out.hidden_states[-1]

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


class AutoModelForSeq2SeqLMWithValueHead(AutoModelForCausalLMWithValueHead):
    """An encoder-decoder LM (T5, BART, ...) with a value head on the decoder's last hidden state:
    TRL 0.11's ``AutoModelForSeq2SeqLMWithValueHead``. ``PPOTrainer`` trains it as an
    encoder-decoder policy: the query is the encoder input, the response is the decoder sequence
    (its logprobs and values come from the decoder; the query is never part of the response)."""

    from transformers import AutoModelForSeq2SeqLM as transformers_parent_class  # noqa: N813

    def __init__(self, pretrained_model, **kwargs):
        super().__init__(pretrained_model, **kwargs)
        self.is_encoder_decoder = True

    @staticmethod
    def _last_hidden_state(out) -> torch.Tensor:
        """The decoder's last hidden states ``[B, L_dec, H]``: ``forward``'s ``value`` is per decoder position."""
        return out.decoder_hidden_states[-1]


def translate_loading_kwargs(kwargs: dict, caller: str = "from_pretrained") -> dict:
    """TRL-era ``from_pretrained`` arguments for the installed transformers (which rejects them):
    ``load_in_8bit`` / ``load_in_4bit=True`` → ``quantization_config=BitsAndBytesConfig(...)`` when
    bitsandbytes is installed (else an ImportError naming the option and what to install), ``False``
    dropped; ``use_auth_token`` → ``token``."""
    kwargs = dict(kwargs)
    if "use_auth_token" in kwargs:
        token = kwargs.pop("use_auth_token")
        if kwargs.get("token") is None and token is not None:
            kwargs["token"] = token
    bits = {name: bool(kwargs.pop(name)) for name in ("load_in_8bit", "load_in_4bit") if name in kwargs}
    wanted = [name for name, on in bits.items() if on]
    if len(wanted) > 1:
        raise ValueError(f"{caller}: load_in_8bit and load_in_4bit cannot both be True")
    if wanted:
        if kwargs.get("quantization_config") is not None:
            raise ValueError(f"{caller}: give {wanted[0]}=True or quantization_config, not both")
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is None:
            raise ImportError(f"{caller}({wanted[0]}=True) quantizes with bitsandbytes, which is not installed: "
                              "pip install bitsandbytes (it needs a CUDA GPU), or drop the option")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(**{wanted[0]: True})
    return kwargs


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


__all__ = ["AutoModelForCausalLMWithValueHead", "AutoModelForSeq2SeqLMWithValueHead", "PreTrainedModelWrapper", "ValueHead", "create_reference_model",
           "translate_loading_kwargs"]
