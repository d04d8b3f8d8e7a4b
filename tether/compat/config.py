"""TRL 0.11's ``PPOConfig`` fields on tether's ``PPOConfig``.

``PPOConfig(**kwargs)`` accepts every field of TRL 0.11's ``PPOConfig``. Each is either

* **mapped** onto tether's option of the same meaning (``init_kl_coef`` → ``kl_coef``,
  ``adap_kl_ctrl`` → ``adaptive_kl``, ``target``/``horizon`` → ``kl_target``/``kl_horizon``,
  ``kl_penalty`` → ``kl_estimator``, ``forward_batch_size`` → ``mini_batch_size``, ...),
* **kept** for programs that read it back (``config.query_dataset``, ``config.log_with``,
  ``config.total_ppo_epochs``, ...; the trainer honours ``log_with``, ``project_kwargs`` and
  ``gradient_checkpointing``), or
* **not honoured**, with one warning that names what tether does instead.

A program that trains a TRL value-head model (``AutoModelForCausalLMWithValueHead``) gets TRL
0.11's defaults for every option it did not set (``TRL_DEFAULTS``, applied by ``PPOTrainer``); every
other program gets tether's defaults. The two differ where tether's are better for RLHF on small
models (docs/coming-from-trl.md lists both).
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any

logger = logging.getLogger(__name__)

# TRL 0.11 name -> tether field (same meaning, value converted by _convert)
RENAMED = {
    "init_kl_coef": "kl_coef",
    "adap_kl_ctrl": "adaptive_kl",
    "target": "kl_target",
    "horizon": "kl_horizon",
    "kl_penalty": "kl_estimator",
    "forward_batch_size": "mini_batch_size",
}
KL_PENALTIES = {"kl": "k1", "mse": "k2", "abs": "abs", "full": "k1"}

# TRL 0.11 fields tether keeps as they were given (read back by programs), with TRL's defaults
KEPT = {
    "exp_name": "ppo", "log_with": None, "task_name": None, "query_dataset": "stanfordnlp/imdb",
    "reward_model": "sentiment-analysis:lvwerra/distilbert-imdb", "remove_unused_columns": True,
    "tracker_kwargs": {}, "accelerator_kwargs": {}, "project_kwargs": {}, "tracker_project_name": "trl",
    "push_to_hub_if_best_kwargs": {}, "steps": 20000, "world_size": None, "optimize_cuda_cache": None,
    "optimize_device_cache": False, "early_stopping": False, "target_kl": 1.0, "compare_steps": 1,
    "ratio_threshold": 10.0, "use_score_scaling": False, "use_score_norm": False,
    "is_encoder_decoder": None, "is_peft_model": None,
    "global_backward_batch_size": None, "global_batch_size": None, "dataset_num_proc": None,
}

# TRL fields whose behaviour tether does not reproduce: warned about once, when set to a non-default value
NOT_HONOURED = {
    "early_stopping": "early stopping on policy KL is not implemented; all ppo_epochs run",
    "ratio_threshold": "minibatches with large ratios are not skipped (the clipped loss bounds them)",
    "push_to_hub_if_best_kwargs": "nothing is pushed to the Hub; save_pretrained() writes the checkpoint",
    "accelerator_kwargs": "no Accelerate: torchrun and environment variables configure processes",
}

# TRL 0.11's defaults for the options where tether's own differ; applied to a value-head program's
# config for every option it did not set (sampling: transformers' generate default, temperature 1)
TRL_DEFAULTS = {
    "batch_size": 128,
    "mini_batch_size": 128,
    "gradient_accumulation_steps": 1,
    "learning_rate": 1.41e-5,
    "kl_coef": 0.2,
    "adaptive_kl": True,
    "kl_target": 6.0,
    "kl_horizon": 10000,
    "max_grad_norm": None,
    "temperature": 1.0,
    "adam_eps": 1e-8,
    "value_model": "head",
    "use_chat_template": False,
}


# TRL 0.11 fields by type, for HfArgumentParser (``python ppo.py --log_with wandb --init_kl_coef 0.1``)
ARGUMENT_TYPES = {
    "exp_name": str, "log_with": "str | None", "task_name": "str | None", "query_dataset": str, "reward_model": str,
    "remove_unused_columns": bool, "tracker_kwargs": dict, "accelerator_kwargs": dict, "project_kwargs": dict,
    "tracker_project_name": str, "push_to_hub_if_best_kwargs": dict, "steps": int, "world_size": "int | None",
    "optimize_cuda_cache": "bool | None", "optimize_device_cache": bool, "early_stopping": bool, "target_kl": float,
    "compare_steps": int, "ratio_threshold": float, "use_score_scaling": bool, "use_score_norm": bool,
    "is_encoder_decoder": "bool | None", "is_peft_model": "bool | None", "global_backward_batch_size": "int | None",
    "global_batch_size": "int | None", "dataset_num_proc": "int | None", "backward_batch_size": "int | None",
    # renamed: None = not given (the tether option's value stands)
    "init_kl_coef": "float | None", "adap_kl_ctrl": "bool | None", "target": "float | None",
    "horizon": "float | None", "kl_penalty": "str | None", "forward_batch_size": "int | None",
}


HELP = "TRL 0.11 PPOConfig field (docs/coming-from-trl.md)"


def argument_fields() -> list[tuple]:
    """``(name, type, dataclasses.field)`` of every TRL 0.11 ``PPOConfig`` field tether's dataclass
    lacks, marked ``metadata={"trl": True}``: listed among ``PPOConfig``'s fields so that
    ``HfArgumentParser((ScriptArguments, PPOConfig))`` offers TRL's command-line options."""
    import dataclasses

    out = []
    for name, kind in ARGUMENT_TYPES.items():
        default = None if name in RENAMED or name == "backward_batch_size" else KEPT.get(name)
        if name == "exp_name":
            default = "ppo"
        if isinstance(default, dict):
            spec = dataclasses.field(default_factory=dict, metadata={"help": HELP})
        else:
            spec = dataclasses.field(default=default, metadata={"help": HELP})
        out.append((name, kind, spec))
    return out


def drop_unchanged_arguments(kwargs: dict[str, Any], fields) -> dict[str, Any]:
    """Every field passed at once (HfArgumentParser does): keep only the values that differ from
    their defaults, so a default is never mistaken for a choice (or a TRL name for a conflict)."""
    import dataclasses

    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory() for f in fields}
    if not set(defaults) <= set(kwargs):
        return kwargs
    if kwargs.get("exp_name") == "ppo":
        kwargs = {k: v for k, v in kwargs.items() if k != "exp_name"}
    return {k: v for k, v in kwargs.items() if k not in defaults or v != defaults[k]}


def split_trl_kwargs(kwargs: dict[str, Any], own_fields: set[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(tether kwargs, TRL-only kwargs)``: TRL names mapped onto tether's fields, TRL-only fields
    apart. Raises ``TypeError`` (with a close match) for a name neither knows."""
    own: dict[str, Any] = {}
    trl: dict[str, Any] = {}
    for name, value in sorted(kwargs.items(), key=lambda item: item[0] in RENAMED):  # TRL names last: they win
        if name in own_fields:
            own[name] = value
        elif name in RENAMED:
            target = RENAMED[name]
            trl[name] = value
            if value is None and name == "forward_batch_size":  # TRL: None = use mini_batch_size
                continue
            if target in kwargs and name != "forward_batch_size":  # TRL: forward_batch_size overrides
                raise TypeError(f"PPOConfig: give {name} (TRL) or {target}, not both")
            own[target] = _convert(name, value)
        elif name in KEPT or name in ("backward_batch_size", "total_ppo_epochs"):
            trl[name] = value
        else:
            import difflib

            close = difflib.get_close_matches(name, sorted(own_fields | set(KEPT) | set(RENAMED)), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TypeError(f"PPOConfig got an unexpected keyword argument {name!r}{hint}")
    if trl.get("optimize_cuda_cache") is not None:
        trl.setdefault("optimize_device_cache", trl["optimize_cuda_cache"])
    for name, why in NOT_HONOURED.items():
        if name in trl and trl[name] not in (KEPT[name], None):
            warnings.warn(f"PPOConfig({name}={trl[name]!r}): {why}.", stacklevel=4)
    if trl.get("kl_penalty") == "full":
        warnings.warn("PPOConfig(kl_penalty='full'): the full-distribution KL is not implemented; the sampled "
                      "estimate k1 (TRL's 'kl') is used.", stacklevel=4)
    return own, trl


def set_trl_field(config, name: str, value: Any) -> tuple[str, Any] | None:
    """``config.<TRL name> = value`` after construction: ``(tether field, converted value)`` for a
    renamed TRL option (``kl_penalty`` → ``kl_estimator``), or None after storing a TRL-only field.
    Any other name is an error, with a close match (a typo must not pass silently)."""
    if name in RENAMED:
        config.__dict__.setdefault("trl", {})[name] = value
        if value is None and name == "forward_batch_size":
            return None
        return RENAMED[name], _convert(name, value)
    if name in KEPT or name in ("backward_batch_size", "total_ppo_epochs"):
        config.__dict__.setdefault("trl", {})[name] = value
        if name in NOT_HONOURED and value not in (KEPT[name], None):
            warnings.warn(f"PPOConfig.{name} = {value!r}: {NOT_HONOURED[name]}.", stacklevel=3)
        return None
    import dataclasses
    import difflib

    known = {f.name for f in dataclasses.fields(config)} | set(KEPT) | set(RENAMED)
    close = difflib.get_close_matches(name, sorted(known), n=1)
    raise AttributeError(f"PPOConfig has no option {name!r}" + (f"; did you mean {close[0]!r}?" if close else ""))


def _convert(name: str, value: Any) -> Any:
    if name == "kl_penalty":
        if value not in KL_PENALTIES:
            raise ValueError(f"kl_penalty: {value!r} is not one of {list(KL_PENALTIES)}")
        return KL_PENALTIES[value]
    if name == "horizon":
        return int(value)
    return value


def trl_field(config, name: str) -> Any:
    """A TRL-only field of ``config`` as given, else TRL's default (``total_ppo_epochs`` derived)."""
    given = config.__dict__.get("trl", {})
    if name == "total_ppo_epochs":
        return int(math.ceil(trl_field(config, "steps") / config.batch_size))
    if name in given:
        return given[name]
    if name == "exp_name":  # TRL: the script's name
        import os
        import sys

        return os.path.splitext(os.path.basename(sys.argv[0]))[0] or "ppo"
    if name in RENAMED:
        value = getattr(config, RENAMED[name])
        return {"k1": "kl", "k2": "mse"}.get(value, value) if name == "kl_penalty" else value
    if name in KEPT:
        return KEPT[name]
    raise AttributeError(f"'PPOConfig' object has no attribute {name!r}")


def apply_trl_defaults(config) -> list[str]:
    """Give every option of ``TRL_DEFAULTS`` that the program did not set TRL 0.11's value; returns
    ``["name=value", ...]`` of what changed. Validates the result."""
    explicit = config.__dict__.get("_explicit", set())
    changed = []
    for name, value in TRL_DEFAULTS.items():
        if name not in explicit and getattr(config, name) != value:
            object.__setattr__(config, name, value)
            changed.append(f"{name}={value}")
    if "mini_batch_size" not in explicit and "batch_size" in explicit:
        object.__setattr__(config, "mini_batch_size", min(128, config.batch_size))  # TRL: 128, <= batch
    config.validate()
    return changed


__all__ = ["KEPT", "RENAMED", "TRL_DEFAULTS", "apply_trl_defaults", "argument_fields", "drop_unchanged_arguments", "set_trl_field", "split_trl_kwargs", "trl_field"]
