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

# float32 logits of one chunk (16 MiB): rows per chunk = CHUNK_ELEMENTS // V, at least 1. Two such buffers
# are alive at a time; small, equal-sized chunks are reused by the allocator from one chunk (and one
# minibatch) to the next instead of leaving holes of every size in the heap
CHUNK_ELEMENTS = 1 << 22


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
    """``[n, V]`` float32, a new tensor the caller owns: the head's logits (computed in ``h``'s dtype) upcast,
    then ÷ temperature (in place: no second ``[n, V]`` buffer)."""
    z = F.linear(h, weight, bias).float()
    return z.div_(temperature) if temperature != 1.0 else z


# vocabulary rows of the weight gradient computed per matmul in a low-precision backward
WEIGHT_GRAD_ROWS = 4096


def _accumulate_weight_grad(grad_w: torch.Tensor, dlogits: torch.Tensor, hidden: torch.Tensor) -> None:
    """``grad_w [V, H]`` (float32) += ``dlogits [n, V]ᵀ @ hidden [n, H]``, in place.

    In float32 that is one ``addmm_``. In bf16/fp16 the product is made ``WEIGHT_GRAD_ROWS`` vocabulary rows
    at a time and added to the float32 buffer: adding a whole ``[V, H]`` bf16 product would first allocate it
    and then a float32 copy of it (54 + 108 MB for SmolLM2 at every backward pass) — the same sums, without
    two weight-sized temporaries."""
    if dlogits.dtype == torch.float32:
        grad_w.addmm_(dlogits.t(), hidden)
        return
    for start in range(0, grad_w.shape[0], WEIGHT_GRAD_ROWS):
        stop = min(start + WEIGHT_GRAD_ROWS, grad_w.shape[0])
        grad_w[start:stop] += dlogits[:, start:stop].t() @ hidden


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
            for start in range(0, h.shape[0], rows):  # two [rows, V] float32 buffers at a time: z and p
                stop = min(start + rows, h.shape[0])
                z = _scaled_logits(h[start:stop], w, b, temperature)
                top = z.amax(dim=-1, keepdim=True)
                p = torch.sub(z, top).exp_()  # softmax(z) · Σ, shifted by the row maximum
                total = p.sum(dim=-1, keepdim=True)
                part_lse = (top + total.log()).squeeze(-1)
                p.div_(total)
                lse[start:stop] = part_lse
                entropy[start:stop] = part_lse - torch.linalg.vecdot(p, z)  # H = lse − Σ p z
                logprobs[start:stop] = z.gather(-1, targets[start:stop, None]).squeeze(-1) - part_lse
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
                # ∂/∂z = g (onehot − p) − g_H p (log p + H) = p · c + g · onehot, c = −g − g_H (log p + H);
                # c is built in place on log p and dz in place on p: two [rows, V] buffers, as in forward
                if grad_entropy is not None:
                    c = z.add_(entropy[start:stop, None]).mul_(grad_entropy[start:stop, None])
                    if grad_logprobs is not None:
                        c.add_(grad_logprobs[start:stop, None])
                    dz = p.mul_(c.neg_())
                elif grad_logprobs is not None:
                    dz = p.mul_(grad_logprobs[start:stop, None].neg())
                else:
                    dz = p.zero_()
                if grad_logprobs is not None:
                    dz.scatter_add_(-1, targets[start:stop, None], grad_logprobs[start:stop, None])
                del z, p
                if temperature != 1.0:
                    dz.div_(temperature)
                dlogits = dz.to(h.dtype)
                del dz
                if want_h:
                    grad_h[start:stop] = (dlogits @ w).to(hidden_dtype)
                if want_w:  # accumulated in float32 across chunks
                    _accumulate_weight_grad(grad_w, dlogits, hc)
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
    if getattr(getattr(model, "module", model), "_tether_unfusable_head", False):
        return None
    get = getattr(_base_model(model), "get_output_embeddings", None)
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


def _base_model(model):
    """The model under a DDP (``.module``) and/or peft wrapper."""
    inner = getattr(model, "module", model)
    if hasattr(inner, "peft_config") and hasattr(inner, "get_base_model"):
        inner = inner.get_base_model()
    return inner


def _tied_embedding(model) -> nn.Embedding | None:
    """The trained input embedding of ``model`` (also inside DDP or peft) when it is the LM head's weight too."""
    inner = _base_model(model)
    get_in, get_out = getattr(inner, "get_input_embeddings", None), getattr(inner, "get_output_embeddings", None)
    embedding = get_in() if callable(get_in) else None
    head = get_out() if callable(get_out) else None
    if not isinstance(embedding, nn.Embedding) or head is None or getattr(head, "weight", None) is not embedding.weight:
        return None
    return embedding if embedding.weight.requires_grad else None


def sparse_tied_embedding_gradient(model) -> bool:
    """For a model whose input embedding is tied to its LM head (one trained ``[V, H]`` weight), make the
    embedding lookup's gradient sparse (its rows only) instead of a zero-filled ``[V, H]`` buffer; autograd
    sums it with the head's dense gradient before the weight's gradient is final (one ``[V, H]`` sum per
    backward pass), so a hook on the finished gradient (gradient release) sees the whole of it. The summed
    gradient is the same and stays dense. Single-process training only (DDP treats a sparse embedding's
    gradient as sparse). Returns whether it was applied."""
    embedding = _tied_embedding(model)
    if embedding is None:
        return False
    plain_tied_lookup(model)  # undo the in-place lookup an earlier trainer may have set on this model
    if type(embedding) is not nn.Embedding or embedding.sparse:
        return False
    embedding.sparse, embedding._tether_tied_lookup = True, "sparse"
    return True


class _LookupAddingRows(torch.autograd.Function):
    """``embedding(ids)`` whose backward adds the rows of its gradient into ``embedding.weight.grad`` in place.

    forward(anchor, ids ``[...]`` long, embedding) → ``[..., H]``. The weight is deliberately not an input of
    this node: its gradient from the LM head is then final (and moved into ``.grad`` without a copy) as soon
    as the head's backward ran, and this node adds its ``N`` rows into that buffer at the end of backward.
    ``anchor`` is an empty tensor that requires grad, so the output is part of the graph."""

    @staticmethod
    def forward(ctx, anchor, ids, embedding):
        ctx.save_for_backward(ids)
        ctx.embedding = embedding
        return F.embedding(ids, embedding.weight, embedding.padding_idx)

    @staticmethod
    def backward(ctx, grad_output):
        (ids,) = ctx.saved_tensors
        embedding = ctx.embedding
        weight = embedding.weight
        rows, flat = grad_output.reshape(-1, grad_output.shape[-1]), ids.reshape(-1)
        if embedding.padding_idx is not None:  # as F.embedding: the padding row gets no gradient
            keep = flat != embedding.padding_idx
            rows, flat = rows[keep], flat[keep]
        with torch.no_grad():
            if weight.grad is None:  # the head was not part of this loss
                weight.grad = torch.zeros_like(weight)
            weight.grad.index_add_(0, flat, rows.to(weight.grad.dtype))
        return None, None, None


class TiedEmbedding(nn.Embedding):
    """An ``nn.Embedding`` tied to the LM head whose lookup gradient is added in place into the weight's
    gradient (``_LookupAddingRows``) while gradients are recorded; otherwise a plain lookup."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - nn.Embedding's signature
        if not (torch.is_grad_enabled() and self.weight.requires_grad):
            return super().forward(input)
        anchor = torch.empty(0, device=self.weight.device, requires_grad=True)
        return _LookupAddingRows.apply(anchor, input, self)


def tied_embedding_gradient_in_place(model) -> bool:
    """For a model whose input embedding is tied to its LM head (one trained ``[V, H]`` weight), add the
    lookup's gradient rows into the head's gradient buffer in place: backward then makes one ``[V, H]``
    gradient tensor instead of two (sparse lookup gradient: the head's plus their out-of-place sum, 2 × 113
    MB for SmolLM2 in float32) or three (dense: plus a zero-filled lookup gradient). The same gradient.

    Single-process training without gradient release only: DDP and FSDP2 reduce gradients through autograd
    hooks, and a hook on the finished gradient would fire before the lookup's rows are added (use
    ``sparse_tied_embedding_gradient`` there). Not for lookups with ``max_norm`` or ``scale_grad_by_freq``.
    Returns whether it was applied."""
    embedding = _tied_embedding(model)
    if embedding is None:
        return False
    plain_tied_lookup(model)  # undo the sparse lookup an earlier trainer may have set on this model
    if type(embedding) is not nn.Embedding or embedding.sparse or embedding.max_norm is not None \
            or embedding.scale_grad_by_freq:
        return False
    embedding.__class__, embedding._tether_tied_lookup = TiedEmbedding, "in place"
    return True


def plain_tied_lookup(model) -> None:
    """Undo ``sparse_tied_embedding_gradient`` / ``tied_embedding_gradient_in_place`` on ``model`` (what tether
    set, nothing else): for a model a later trainer uses differently, e.g. under DDP or with gradient release."""
    get_in = getattr(_base_model(model), "get_input_embeddings", None)
    embedding = get_in() if callable(get_in) else None
    way = getattr(embedding, "_tether_tied_lookup", None)
    if way == "sparse":
        embedding.sparse = False
    elif way == "in place":
        embedding.__class__ = nn.Embedding
    if way is not None:
        del embedding._tether_tied_lookup
