"""Read weights written by ``save_pretrained`` back into live modules (safetensors only).

Used to resume training: the trainer is rebuilt from its config, then the checkpoint's weights
are loaded into the same modules, so the optimizer keeps pointing at the right parameters.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .critic import VALUE_HEAD_FILE, is_peft

ADAPTER_FILE = "adapter_model.safetensors"


def read_safetensors_dir(directory: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of the ``*.safetensors`` files at the top of ``directory`` (sharded or not),
    except the value head's and peft adapters'."""
    from safetensors.torch import load_file

    directory = Path(directory)
    files = sorted(p for p in directory.glob("*.safetensors") if p.name not in (VALUE_HEAD_FILE, ADAPTER_FILE))
    if not files:
        raise FileNotFoundError(f"{directory}: no .safetensors weights (tether reads safetensors only)")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(f))
    return state


def load_state_into(module: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """``module.load_state_dict(state)``, allowing only the keys ``save_pretrained`` leaves out
    because they are tied to a saved tensor (e.g. ``lm_head.weight`` = the embeddings)."""
    result = module.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"{where}: weights {result.unexpected_keys[:3]} do not belong to {type(module).__name__}")
    own = module.state_dict(keep_vars=True)
    loaded_ptrs = {own[k].data_ptr() for k in state if k in own}
    untied = [k for k in result.missing_keys if own[k].data_ptr() not in loaded_ptrs]
    if untied:
        raise ValueError(f"{where}: checkpoint lacks weights {untied[:3]} of {type(module).__name__}")


def load_policy_weights(policy: nn.Module, directory: str | Path) -> None:
    """Load a policy (or its peft adapters) saved with ``save_pretrained`` into ``policy``."""
    from safetensors.torch import load_file

    directory = Path(directory)
    if is_peft(policy):
        from peft import set_peft_model_state_dict

        path = directory / ADAPTER_FILE
        if not path.exists():
            raise FileNotFoundError(f"{path}: the policy is a LoRA model but the checkpoint has no adapters")
        result = set_peft_model_state_dict(policy, load_file(path))
        if result.unexpected_keys:
            raise ValueError(f"{path}: adapter weights {result.unexpected_keys[:3]} do not match the policy")
        return
    load_state_into(policy, read_safetensors_dir(directory), str(directory))


def load_head(head: nn.Module, path: str | Path) -> None:
    """Load a ``ValueHead`` saved as safetensors."""
    from safetensors.torch import load_file

    head.load_state_dict(load_file(Path(path)))


def strip_fsdp_class_names(directory: str | Path) -> None:
    """FSDP2 renames a sharded model's class (``FSDPLlamaForCausalLM``), and ``save_pretrained`` writes
    that name into ``config.json``'s ``architectures``: put the model's own name back, so that
    ``from_pretrained`` builds the right class."""
    import json

    config_file = Path(directory) / "config.json"
    if not config_file.exists():
        return
    config = json.loads(config_file.read_text())
    names = config.get("architectures") or []
    if any(n.startswith("FSDP") for n in names):
        config["architectures"] = [n[4:] if n.startswith("FSDP") else n for n in names]
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
