"""LM head → per-token log-prob (and entropy) without the ``[B, T, V]`` logits.

A language model's last matmul turns ``N`` hidden states ``[N, H]`` into ``[N, V]`` logits; for PPO only
one number per token is needed (the log-prob of the sampled token, and its entropy for logging or a
bonus). The unfused path holds the whole logits tensor, its float32 copy and the log-softmax saved for
backward: ``N · V · 10`` bytes or more (8k tokens × 128k vocabulary: 10 GiB). ``FusedLogprobs``
computes the head a chunk of rows at a time in forward, keeps only ``O(N)`` numbers, and recomputes the
chunk's logits in backward (one extra LM-head matmul: a few per cent of a training step's FLOPs), so the
peak grows with the chunk, not with tokens × vocabulary. Numerics are the unfused path's: the matmul in
the autocast dtype (or the weight's), then float32, division by the temperature, log-softmax.

``fused_head(model)`` is how a full model uses it without bypassing its wrappers (DDP, FSDP2, peft):
for the duration of one call the LM head module itself returns ``[B, T, 2]`` = (log-prob, entropy) of
given targets instead of logits, so hooks, sharding and autocast around the model are untouched.
Models whose forward alters the head's output (logit scaling, soft-capping) are detected on their first
call (the output is not the head's own tensor) and keep the unfused path.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

# float32 logits of one chunk (64 MiB): rows per chunk = CHUNK_ELEMENTS // V, at least 1
CHUNK_ELEMENTS = 1 << 24


def _compute_dtype(weight: torch.Tensor) -> torch.dtype:
    """The dtype ``F.linear`` would compute in here: the autocast dtype when autocast is on for the
    weight's device (and the weight is a float type it casts), else the weight's own dtype."""
    device = weight.device.type
    if torch.is_autocast_enabled(device) and weight.dtype in (torch.float32, torch.float16, torch.bfloat16):
        return torch.get_autocast_dtype(device)
    return weight.dtype


def _chunk_rows(vocab: int, chunk_elements: int) -> int:
    return max(1, chunk_elements // max(1, vocab))


def _scaled_logits(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, temperature: float) -> torch.Tensor:
    """``[n, V]`` float32: the head's logits (computed in ``h``'s dtype) upcast, then ÷ temperature."""
    return F.linear(h, weight, bias).float() / temperature


class FusedLogprobs(torch.autograd.Function):
    """``(logprobs [N], entropy [N])`` float32 of ``targets [N]`` under ``softmax((h Wᵀ + b) / τ)``.

    forward(hidden ``[N, H]``, weight ``[V, H]``, bias ``[V]`` or None, targets ``[N]`` long, temperature,
    chunk_elements) — entropy in nats, both differentiable with respect to hidden, weight and bias:
    with ``z = logits / τ``, ``p = softmax(z)``, ``lse = logsumexp(z)``, ``H = lse − Σ p z``:
    ``∂logp/∂z = onehot(y) − p`` and ``∂H/∂z = −p (z − lse + H)``; ``∂/∂logits = ∂/∂z ÷ τ``.
    Saved for backward: hidden and weight (in the compute dtype: the same cast autocast keeps), targets,
    lse and H — ``O(N)`` beyond the inputs."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, chunk_elements):
        dtype = _compute_dtype(weight)
        with torch.autocast(weight.device.type, enabled=False):
            h, w = hidden.to(dtype), weight.to(dtype)
            b = bias.to(dtype) if bias is not None else None
            rows = _chunk_rows(w.shape[0], chunk_elements)
            logprobs = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
            entropy = torch.empty_like(logprobs)
            lse = torch.empty_like(logprobs)
            for start in range(0, h.shape[0], rows):
                z = _scaled_logits(h[start:start + rows], w, b, temperature)
                part_lse = torch.logsumexp(z, dim=-1)
                p = torch.exp(z - part_lse[:, None])
                lse[start:start + rows] = part_lse
                entropy[start:start + rows] = part_lse - (p * z).sum(-1)
                logprobs[start:start + rows] = z.gather(-1, targets[start:start + rows, None]).squeeze(-1) - part_lse
                del z, p
        ctx.set_materialize_grads(False)  # an unused output (entropy) gets None: no work for it in backward
        ctx.save_for_backward(h, w, b, targets, lse, entropy)
        ctx.meta = (temperature, rows, hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)
        return logprobs, entropy

    @staticmethod
    def backward(ctx, grad_logprobs, grad_entropy):
        h, w, b, targets, lse, entropy = ctx.saved_tensors
        temperature, rows, hidden_dtype, weight_dtype, bias_dtype = ctx.meta
        want_h, want_w, want_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        grad_h = torch.empty(h.shape, dtype=hidden_dtype, device=h.device) if want_h else None
        grad_w = torch.zeros(w.shape, dtype=torch.float32, device=w.device) if want_w else None
        grad_b = torch.zeros(w.shape[0], dtype=torch.float32, device=w.device) if want_b else None
        with torch.autocast(w.device.type, enabled=False):
            for start in range(0, h.shape[0], rows):
                stop = min(start + rows, h.shape[0])
                hc = h[start:stop]
                z = _scaled_logits(hc, w, b, temperature)
                z -= lse[start:stop, None]  # z is log p from here on
                p = torch.exp(z)
                if grad_logprobs is not None:  # g (onehot − p)
                    g = grad_logprobs[start:stop, None]
                    dz = p * -g
                    dz.scatter_add_(-1, targets[start:stop, None], g)
                else:
                    dz = torch.zeros_like(z)
                if grad_entropy is not None:  # − g_H p (log p + H), in place on log p
                    dz -= z.add_(entropy[start:stop, None]).mul_(p).mul_(grad_entropy[start:stop, None])
                del z, p
                dlogits = (dz / temperature).to(h.dtype)
                del dz
                if want_h:
                    grad_h[start:stop] = (dlogits @ w).to(hidden_dtype)
                if want_w:  # accumulated in float32 across chunks
                    if dlogits.dtype == torch.float32:
                        grad_w.addmm_(dlogits.t(), hc)
                    else:
                        grad_w += dlogits.t() @ hc
                if want_b:
                    grad_b += dlogits.float().sum(0)
        grad_w = grad_w.to(weight_dtype) if grad_w is not None else None
        grad_b = grad_b.to(bias_dtype) if grad_b is not None else None
        return grad_h, grad_w, grad_b, None, None, None


def fused_logprobs(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
                   temperature: float = 1.0,
                   chunk_elements: int = CHUNK_ELEMENTS) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logprobs, entropy)`` of ``targets`` ``[...]`` under the head ``weight [V, H]`` (+ ``bias``) applied to
    ``hidden [..., H]``, both float32 ``[...]``; see ``FusedLogprobs``."""
    shape = targets.shape
    logprobs, entropy = FusedLogprobs.apply(hidden.reshape(-1, hidden.shape[-1]), weight, bias,
                                            targets.reshape(-1), temperature, chunk_elements)
    return logprobs.view(shape), entropy.view(shape)


def fusable_head(model) -> nn.Linear | None:
    """The plain ``nn.Linear`` LM head of a causal LM (also inside DDP, FSDP2 or peft), or None where the
    head is something else (a LoRA-wrapped head, a custom module) or the model was found to alter it."""
    inner = getattr(model, "module", model)
    if getattr(inner, "_tether_unfusable_head", False):
        return None
    if hasattr(inner, "peft_config") and hasattr(inner, "get_base_model"):
        inner = inner.get_base_model()
    get = getattr(inner, "get_output_embeddings", None)
    head = get() if callable(get) else None
    return head if type(head) is nn.Linear else None


def mark_unfusable(model, reason: str) -> None:
    """Remember that ``model``'s forward changes what its head returns: later calls take the unfused path."""
    inner = getattr(model, "module", model)
    inner._tether_unfusable_head = True
    logger.info("%s: %s; its log-probs are computed from full logits", type(inner).__name__, reason)


@contextlib.contextmanager
def head_returns_logprobs(head: nn.Linear, targets: torch.Tensor, temperature: float, with_entropy: bool = True,
                          chunk_elements: int | None = None) -> Iterator[list[torch.Tensor]]:
    """Within the block ``head(hidden [B, T, H])`` returns ``[B, T, 2]`` float32 = (log-prob of ``targets``
    ``[B, T]``, entropy) instead of logits — ``[B, T, 1]`` (log-prob only, no entropy gradient) without
    ``with_entropy``. Yields a list that receives the returned tensor, so the caller can check the model
    passed it through unchanged."""
    produced: list[torch.Tensor] = []

    def forward(hidden: torch.Tensor) -> torch.Tensor:
        if hidden.shape[:-1] != targets.shape:
            raise RuntimeError(f"fused LM head: hidden states {tuple(hidden.shape)} do not match targets "
                               f"{tuple(targets.shape)}")
        logprobs, entropy = fused_logprobs(hidden, head.weight, head.bias, targets, temperature,
                                           chunk_elements or CHUNK_ELEMENTS)
        out = torch.stack([logprobs, entropy], dim=-1) if with_entropy else logprobs[..., None]
        produced.append(out)
        return out

    head.forward = forward  # an instance attribute: nn.Module.__call__ (and every hook around it) is unchanged
    try:
        yield produced
    finally:
        del head.forward


def sparse_tied_embedding_gradient(model) -> bool:
    """For a model whose input embedding is tied to its LM head (one trained ``[V, H]`` weight), make the
    embedding lookup's gradient sparse (its rows only): autograd then adds it in place into the head's dense
    gradient instead of zero-filling a second ``[V, H]`` buffer every backward pass (113 MB in float32 for
    SmolLM2). The summed gradient is the same and stays dense, so optimisers are unaffected. Single-process
    training only (DDP treats a sparse embedding's gradient as sparse). Returns whether it was applied."""
    inner = getattr(model, "module", model)
    if hasattr(inner, "peft_config") and hasattr(inner, "get_base_model"):
        inner = inner.get_base_model()
    get_in, get_out = getattr(inner, "get_input_embeddings", None), getattr(inner, "get_output_embeddings", None)
    embedding = get_in() if callable(get_in) else None
    head = get_out() if callable(get_out) else None
    if type(embedding) is not nn.Embedding or head is None or getattr(head, "weight", None) is not embedding.weight:
        return False
    if not embedding.weight.requires_grad or embedding.sparse:
        return False
    embedding.sparse = True
    return True
