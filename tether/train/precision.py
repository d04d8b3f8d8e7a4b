"""Numeric precision: the one component that knows the hardware.

``Precision.resolve(setting, device)`` turns ``config.precision`` (``auto | fp32 | bf16-mixed``) into
a mode and the reason for it. Under ``bf16-mixed`` the forwards and backwards of scoring and training
run under ``torch.autocast(bfloat16)``, the trainable parameters (and so their gradients and AdamW
state) stay float32 — "master weights": an update of lr·g/√v smaller than bf16's resolution at a
weight (≈ 0.4 % of it) would otherwise be lost — and frozen weights are stored in bf16. Logits are
upcast to float32 before the temperature and the log-softmax (``models/forward.py``).

``$TETHER_PRECISION`` (fp32 | bf16-mixed) overrides ``auto`` (the test suite pins fp32 with it, so its
float tolerances hold on every CPU).
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass

import torch
from torch import nn

logger = logging.getLogger(__name__)

MODES = ("fp32", "bf16-mixed")
MATH_ATTENTION_BYTES = 256 << 20  # the most memory sdpa's math kernel may hold for backward in a training forward


def cpu_supports_bf16() -> bool:
    """True on CPUs with native bf16 matrix instructions (AVX512-BF16 or AMX); False on AVX2-only
    CPUs, where bf16 autocast runs in emulation (measured 25× slower than fp32)."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


@dataclass(frozen=True)
class Precision:
    mode: str  # "fp32" | "bf16-mixed"
    device_type: str  # "cpu" | "cuda" | ...
    reason: str

    @classmethod
    def resolve(cls, setting: str, device: torch.device) -> Precision:
        """The mode for ``setting`` on ``device``, with why."""
        device_type = torch.device(device).type
        if setting == "auto" and os.environ.get("TETHER_PRECISION") in MODES:
            return cls(os.environ["TETHER_PRECISION"], device_type, "$TETHER_PRECISION")
        if setting in MODES:
            return cls(setting, device_type, "set in the config")
        if setting != "auto":
            raise ValueError(f"precision: {setting!r} is not one of ['auto', 'fp32', 'bf16-mixed']")
        if device_type == "cuda":
            if torch.cuda.is_bf16_supported():
                return cls("bf16-mixed", device_type, "CUDA GPU with bf16")
            return cls("fp32", device_type, "CUDA GPU without bf16")
        if device_type == "cpu" and cpu_supports_bf16():
            return cls("bf16-mixed", device_type, "CPU with AVX512-BF16/AMX")
        return cls("fp32", device_type, f"{device_type.upper()} without native bf16 "
                   f"(capability {torch.backends.cpu.get_cpu_capability()})")

    @property
    def mixed(self) -> bool:
        return self.mode == "bf16-mixed"

    @property
    def width_multiple(self) -> int:
        """``pad_to_multiple_of``'s default: 32 for bf16 on a CPU, where torch runs matmuls through oneDNN, which
        keeps a primitive (~0.5 MiB of memory, ~3 ms to make) per new shape — rounded widths are faster there
        despite the padding (``benchmarks/shape_cache.py``); 1 elsewhere (float32 CPU matmuls keep nothing
        per shape, and padding is extra work)."""
        return 32 if self.mixed and self.device_type == "cpu" else 1

    @property
    def frozen_dtype(self) -> torch.dtype | None:
        """The dtype frozen weights are stored in: bf16 under bf16-mixed; None (as loaded) under fp32."""
        return torch.bfloat16 if self.mixed else None

    def autocast(self):
        """The context every scoring and training forward (and generation) runs in."""
        if not self.mixed:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=torch.bfloat16)

    def prepare(self, module: nn.Module | None) -> nn.Module | None:
        """Under bf16-mixed: trainable floating-point parameters to float32 (master weights), frozen
        ones to bf16. Under fp32 the module is left as it is, with a warning when trainable weights
        are in 16 bits (updates below their resolution are lost). Returns ``module``."""
        if module is None:
            return None
        low = [n for n, p in module.named_parameters() if p.requires_grad and p.dtype in (torch.bfloat16, torch.float16)]
        if not self.mixed:
            if low:
                logger.warning("precision fp32 with trainable weights in %s (%s, ...): updates smaller than their "
                               "resolution are lost; use precision=bf16-mixed or load the model in float32",
                               module.get_parameter(low[0]).dtype, low[0])
            return module
        for p in module.parameters():
            if p.is_floating_point():
                want = torch.float32 if p.requires_grad else torch.bfloat16
                if p.dtype != want:
                    p.data = p.data.to(want)
        return module

    def training_attention(self, model: nn.Module | None, batch: int, length: int):
        """The context of a training forward's attention. On a CPU under bf16-mixed: sdpa's math kernel
        when every layer's attention probabilities together stay within ``MATH_ATTENTION_BYTES``
        (the flash kernel's bf16 backward is slow on CPU: the whole micro-batch step 0.81 s instead of
        0.95 s for SmolLM2 at 4 × 110 tokens on AVX512-BF16); longer sequences keep flash, which holds
        no ``[L, L]`` tensors. Elsewhere (fp32, CUDA) sdpa chooses as it does."""
        config = getattr(getattr(model, "module", model), "config", None)
        if not self.mixed or self.device_type != "cpu" or config is None:
            return contextlib.nullcontext()
        heads = getattr(config, "num_attention_heads", None)
        layers = getattr(config, "num_hidden_layers", None)
        if not heads or not layers:
            return contextlib.nullcontext()
        saved = batch * heads * length * length * layers * 6  # bf16 scores + float32 probabilities, per layer
        if saved > MATH_ATTENTION_BYTES:
            return contextlib.nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel(SDPBackend.MATH)

    def describe(self) -> str:
        return f"precision {self.mode} ({self.reason})"


def enable_checkpointing(*modules: nn.Module | None) -> None:
    """Turn on transformers' activation checkpointing (non-reentrant) in each model that has it; the
    learner activates it for the training forwards only (``checkpointing_active``)."""
    for module in modules:
        target = getattr(module, "backbone", module)  # a ValueModel's transformer
        if target is not None and (hasattr(target, "gradient_checkpointing_enable")
                                   or hasattr(target, "activation_checkpointing_enable")):
            if hasattr(target, "activation_checkpointing_enable"):  # transformers >= 5.x's name
                target.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                target.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


@contextlib.contextmanager
def checkpointing_active(*modules: nn.Module | None):
    """transformers checkpoints only modules in training mode, but tether keeps models in eval mode
    (dropout off). Inside this context the modules that checkpoint (and only they, not their
    dropout layers) count as training."""
    flagged = [m for module in modules if module is not None for m in module.modules()
               if getattr(m, "gradient_checkpointing", False) is True and not m.training]
    for m in flagged:
        m.training = True
    try:
        yield
    finally:
        for m in flagged:
            m.training = False


__all__ = ["Precision", "checkpointing_active", "cpu_supports_bf16", "enable_checkpointing"]
