"""Load policies, tokenizers and reward models by Hugging Face id, local directory or GGUF file."""

from __future__ import annotations

import contextlib
import os
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str) -> torch.dtype:
    """Map a config dtype string to a torch dtype, with a clear error for anything else."""
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"model.dtype: unknown dtype {name!r}; expected one of {sorted(DTYPES)}") from None


@dataclass
class LoraSettings:
    """LoRA adapters trained instead of the full policy (peft). ``r = 0`` turns LoRA off."""

    r: int = 0
    """Rank of the adapters; 0 trains the full model."""
    alpha: int = 16
    """LoRA scaling numerator (scale = alpha / r)."""
    dropout: float = 0.0
    """Dropout inside the adapters. Keep 0 for PPO: old and new logprobs must be deterministic."""
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    """Module names to wrap (peft ``target_modules``)."""


def from_pretrained_safely(auto_class, name_or_path: str, **kwargs):
    """``auto_class.from_pretrained`` restricted to safetensors weights (GGUF files aside).

    Pickle-based checkpoints (``pytorch_model.bin``) can run code when unpickled; tether refuses them
    with an error that says how to convert them once, in an environment the user trusts."""
    check_model_source(name_or_path, kwargs.get("gguf_file"))
    if not kwargs.get("gguf_file"):
        kwargs["use_safetensors"] = True
    try:
        return auto_class.from_pretrained(name_or_path, **kwargs)
    except OSError as err:
        if kwargs.get("use_safetensors") and "safetensors" in str(err):
            raise FileNotFoundError(
                f"{name_or_path}: no safetensors weights. tether does not load pickle-based checkpoints "
                "(pytorch_model.bin can run code when loaded); if you trust the file, convert it once: "
                f"{auto_class.__name__}.from_pretrained(path).save_pretrained(path)") from None
        raise


MODEL_MARKERS = ("config.json", "adapter_config.json", "tokenizer_config.json", "tokenizer.json")


def _local_name(name_or_path: str | os.PathLike) -> str:
    """A ``Path`` is always a local path: spell a relative one ``./x`` so it is never taken for a Hub id."""
    if not isinstance(name_or_path, os.PathLike):
        return name_or_path
    name = os.fspath(name_or_path)
    return name if name.startswith((".", "~", "/")) else "./" + name


def check_model_source(name_or_path: str | os.PathLike, gguf_file: str | None = None) -> None:
    """Fail early, naming the path, when a local model path does not exist or holds no model.

    A name that looks like a Hub id (``org/name``) and is not a local path is left to transformers.
    ``Path`` objects (relative or absolute) are local paths."""
    name_or_path = _local_name(name_or_path)
    path = Path(name_or_path).expanduser()
    local = path.is_absolute() or name_or_path.startswith((".", "~")) or path.exists() or name_or_path.count("/") > 1
    if not local:
        return
    if not path.exists():
        raise FileNotFoundError(f"{name_or_path}: no such file or directory (expected a model directory, "
                                "a .gguf file or a Hugging Face model id)")
    if path.is_file():
        if path.suffix != ".gguf":
            raise FileNotFoundError(f"{name_or_path}: a file, but not a .gguf model; give the model's directory")
        return
    if gguf_file is not None:
        if not (path / gguf_file).is_file():
            raise FileNotFoundError(f"{path / gguf_file}: no such GGUF file")
        return
    if not any((path / marker).exists() for marker in MODEL_MARKERS) and not any(path.glob("*.gguf")):
        raise FileNotFoundError(f"{name_or_path}: no model in this directory (expected {MODEL_MARKERS[0]}, "
                                f"{MODEL_MARKERS[1]} or a .gguf file)")


def _split_gguf(name_or_path: str | os.PathLike, gguf_file: str | None) -> tuple[str, str | None]:
    """Accept ``dir`` + ``gguf_file``, or a direct path to a ``.gguf`` file (``str`` or ``Path``)."""
    name_or_path = _local_name(name_or_path)
    if gguf_file is None and name_or_path.endswith(".gguf"):
        path = Path(name_or_path)
        return str(path.parent), path.name
    return name_or_path, gguf_file


def load_tokenizer(name_or_path: str, gguf_file: str | None = None, trust_remote_code: bool = False):
    """Load a tokenizer; give it a pad token (its EOS) when it has none.

    Padding side is left for generation; tether builds its own padded tensors, so the side only
    matters for user code that calls the tokenizer directly.
    """
    from transformers import AutoTokenizer

    name_or_path, gguf_file = _split_gguf(name_or_path, gguf_file)
    check_model_source(name_or_path, gguf_file)
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, **kwargs)
    prepare_tokenizer(tokenizer)
    return tokenizer


def prepare_tokenizer(tokenizer) -> None:
    """Ensure a pad token (reusing EOS) and left padding; raise if neither pad nor EOS exist."""
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ValueError(
                f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has neither a pad token nor an EOS "
                "token; set tokenizer.pad_token before passing it to tether"
            )
        tokenizer.pad_token = tokenizer.eos_token
        logger.info("tokenizer has no pad token; using its EOS token %r for padding", tokenizer.eos_token)
    tokenizer.padding_side = "left"


def load_causal_lm(
    name_or_path: str,
    gguf_file: str | None = None,
    dtype: str = "float32",
    trust_remote_code: bool = False,
    lora: LoraSettings | None = None,
):
    """Load a causal LM from a Hub id, a local HF directory, or a GGUF file (dequantised).

    ``trust_remote_code`` stays off unless the caller turns it on. With ``lora.r > 0`` the model is
    wrapped in a peft ``PeftModel`` with fresh adapters; only they are trained, and the reference
    policy is the same weights with adapters disabled.
    """
    from transformers import AutoModelForCausalLM

    name_or_path, gguf_file = _split_gguf(name_or_path, gguf_file)
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    model = from_pretrained_safely(AutoModelForCausalLM, name_or_path, dtype=resolve_dtype(dtype),
                                   trust_remote_code=trust_remote_code, **kwargs)
    if gguf_file:
        forget_gguf_quantizer(model)
    # where the base weights came from: written next to saved LoRA adapters, so that `tether export`
    # and `tether eval` can rebuild the base (a GGUF file is not a directory peft can reload)
    model._tether_source = {"name_or_path": name_or_path, "gguf_file": gguf_file, "dtype": dtype}
    if lora is not None and lora.r > 0:
        model = apply_lora(model, lora)
    return model


BASE_FILE = "tether_base.json"


def load_policy(path: str, dtype: str = "float32", trust_remote_code: bool = False, base: str | None = None):
    """A trained policy: a full model directory, or a directory of peft LoRA adapters whose base is
    rebuilt from ``tether_base.json`` (written by tether), ``base`` or the adapter config."""
    import json

    adapter_config = Path(path) / "adapter_config.json"
    if not adapter_config.exists():
        return load_causal_lm(path, dtype=dtype, trust_remote_code=trust_remote_code)
    from peft import PeftModel

    spec = {"name_or_path": base} if base else None
    if spec is None and (Path(path) / BASE_FILE).exists():
        spec = json.loads((Path(path) / BASE_FILE).read_text())
    if spec is None:
        spec = {"name_or_path": json.loads(adapter_config.read_text()).get("base_model_name_or_path")}
    if not spec.get("name_or_path"):
        raise FileNotFoundError(f"{path}: LoRA adapters without a known base model; pass the base explicitly")
    model = load_causal_lm(spec["name_or_path"], spec.get("gguf_file"), dtype, trust_remote_code)
    with quiet_peft_deprecation():
        return PeftModel.from_pretrained(model, path)


@contextlib.contextmanager
def quiet_peft_deprecation():
    """peft reads ``model.is_gradient_checkpointing`` while wrapping a model, a property transformers
    deprecated (a FutureWarning the user cannot act on); only that warning is silenced, only here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def forget_gguf_quantizer(model) -> None:
    """GGUF weights are dequantised to ``dtype`` on load, but transformers still marks the model as
    "quantized" and then refuses ``save_pretrained``. The weights are plain tensors: drop the mark."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for attr in ("is_quantized", "quantization_method"):
        if attr in model.__dict__:
            del model.__dict__[attr]


def apply_lora(model, lora: LoraSettings):
    """Wrap ``model`` in fresh peft LoRA adapters (causal-LM task)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type="CAUSAL_LM",
    )
    with quiet_peft_deprecation():
        return get_peft_model(model, config)


def load_sequence_classifier(name_or_path: str, dtype: str = "float32", trust_remote_code: bool = False):
    """Load a reward model (``AutoModelForSequenceClassification``) and check it has one label."""
    from transformers import AutoModelForSequenceClassification

    model = from_pretrained_safely(AutoModelForSequenceClassification, name_or_path, dtype=resolve_dtype(dtype),
                                   trust_remote_code=trust_remote_code)
    if model.config.num_labels != 1:
        raise ValueError(
            f"reward model {name_or_path!r} has num_labels={model.config.num_labels}; a reward model "
            "must output one scalar (num_labels=1)"
        )
    return model


def load_reward_backbone(name_or_path: str, dtype: str = "float32", trust_remote_code: bool = False):
    """A model to *train* as a reward model: any ``AutoModelForSequenceClassification``-compatible
    checkpoint (an encoder such as MiniLM, a decoder LM, or an existing reward model), given a
    fresh one-label head when it has none or one of another size."""
    from transformers import AutoModelForSequenceClassification

    return from_pretrained_safely(AutoModelForSequenceClassification, name_or_path, num_labels=1,
                                  ignore_mismatched_sizes=True, dtype=resolve_dtype(dtype),
                                  trust_remote_code=trust_remote_code)
