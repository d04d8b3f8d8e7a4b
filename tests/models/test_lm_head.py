"""The fused LM head → log-prob function against the plain computation (full logits, log_softmax), and its
memory: the largest tensor it makes grows with its chunk, not with tokens × vocabulary.

Tolerances: float32 with chunked rows differs from one full matmul only in summation order (~1e-6
relative on these sizes); bf16 autocast rounds the head's matmul inputs the same way in both paths, so
log-probs agree to float32 noise of bf16-valued logits; the weight gradient is summed over chunks in float32
by the fused path and in one bf16 matmul by the plain one (bf16 output: 2^-8 relative), hence 2e-2 there."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from tether.models.lm_head import fused_logprobs


def plain(hidden, weight, bias, targets, temperature):
    logits = F.linear(hidden, weight, bias).float() / temperature
    logp_all = torch.log_softmax(logits, -1)
    logprobs = logp_all.gather(-1, targets[..., None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logprobs, entropy


def inputs(n=37, hidden=16, vocab=101, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, hidden, generator=g, requires_grad=True)
    w = (torch.randn(vocab, hidden, generator=g) * 0.5).requires_grad_()
    b = (torch.randn(vocab, generator=g) * 0.1).requires_grad_() if bias else None
    y = torch.randint(0, vocab, (n,), generator=g)
    return h, w, b, y


def grads(fn, h, w, b, y, temperature, coef=(1.0, 0.3)):
    for t in (h, w, b):
        if t is not None:
            t.grad = None
    logprobs, entropy = fn(h, w, b, y, temperature)
    g = torch.Generator().manual_seed(1)
    a, c = torch.randn(logprobs.shape, generator=g), torch.randn(entropy.shape, generator=g)
    (coef[0] * (a * logprobs).sum() + coef[1] * (c * entropy).sum()).backward()
    return logprobs.detach(), entropy.detach(), [t.grad.clone() for t in (h, w, b) if t is not None]


@pytest.mark.parametrize("chunk", [101, 5 * 101, 1 << 24])  # one row per chunk, a ragged last chunk, one chunk
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_fused_matches_full_logits_in_value_and_gradient(chunk, temperature):
    h, w, b, y = inputs()
    ref = grads(plain, h, w, b, y, temperature)
    got = grads(lambda *a: fused_logprobs(*a, chunk_elements=chunk), h, w, b, y, temperature)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], ref[1], rtol=1e-5, atol=1e-5)
    for mine, theirs in zip(got[2], ref[2]):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)


def test_hand_computed_two_token_vocabulary():
    """h = [1], W = [[0], [ln 3]]: logits (0, ln 3) → p = (1/4, 3/4); log p(1) = ln(3/4), entropy
    = −(¼ ln ¼ + ¾ ln ¾); d log p(1) / d logit = onehot − p = (−¼, ¼), so dW = (−¼, ¼)ᵀ·h."""
    import math

    h = torch.tensor([[1.0]], requires_grad=True)
    w = torch.tensor([[0.0], [math.log(3)]], requires_grad=True)
    logprobs, entropy = fused_logprobs(h, w, None, torch.tensor([1]))
    assert logprobs.item() == pytest.approx(math.log(0.75), abs=1e-6)
    assert entropy.item() == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), abs=1e-6)
    logprobs.sum().backward()
    torch.testing.assert_close(w.grad, torch.tensor([[-0.25], [0.25]]))
    torch.testing.assert_close(h.grad, torch.tensor([[0.25 * math.log(3)]]))


def test_only_the_logprob_gradient_when_entropy_is_not_used():
    h, w, b, y = inputs(bias=False)
    ref = grads(plain, h, w, None, y, 1.0, coef=(1.0, 0.0))
    got = grads(fused_logprobs, h, w, None, y, 1.0, coef=(1.0, 0.0))
    for mine, theirs in zip(got[2], ref[2]):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)


def test_bf16_autocast_matches_the_plain_path_under_autocast():
    h, w, b, y = inputs(n=24, hidden=32, vocab=203, bias=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = grads(plain, h, w, None, y, 1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = grads(lambda *a: fused_logprobs(*a, chunk_elements=203 * 7), h, w, None, y, 1.0)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=1e-5)  # same bf16 logits, float32 after
    torch.testing.assert_close(got[1], ref[1], rtol=1e-5, atol=1e-5)
    assert got[2][0].dtype == h.dtype and got[2][1].dtype == w.dtype  # float32 master gets a float32 grad
    for mine, theirs in zip(got[2], ref[2]):
        torch.testing.assert_close(mine, theirs, rtol=2e-2, atol=2e-3)


class LargestTensor(TorchDispatchMode):
    """Records the element count of the largest tensor any operator returns (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("tokens", [64, 256])
def test_the_largest_tensor_grows_with_the_chunk_not_with_tokens_times_vocabulary(tokens):
    """A 128k vocabulary: the plain path makes [tokens, V] tensors; the fused one, at most
    [rows per chunk, V] and the [V, H] weight gradient — whatever the number of tokens."""
    vocab, hidden, chunk = 128_000, 8, 128_000 * 16
    h, w, _, y = inputs(n=tokens, hidden=hidden, vocab=vocab, bias=False)
    with LargestTensor() as fused_mode:
        grads(lambda *a: fused_logprobs(*a, chunk_elements=chunk), h, w, None, y, 1.0)
    with LargestTensor() as plain_mode:
        grads(plain, h, w, None, y, 1.0)
    assert plain_mode.largest >= tokens * vocab
    assert fused_mode.largest <= max(chunk, vocab * hidden)


# ---- whole models: response_forward with the fused head against full logits ----

def _model_grads(model, fused, ids, attn, T, temperature=0.8):
    from tether.models.forward import response_forward

    model.zero_grad(set_to_none=True)
    out = response_forward(model, ids, attn, T, temperature, with_entropy=True, fused=fused)
    (out.logprobs.sum() + 0.1 * out.entropy.sum()).backward()
    named = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.logprobs.detach(), out.entropy.detach(), named


def _batch(vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (3, 11), generator=g)
    attn = torch.ones_like(ids)
    attn[0, :2] = 0  # a left-padded prompt
    attn[2, -3:] = 0  # a short response
    return ids, attn


def _tiny(kind, tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel, GraniteConfig, GraniteForCausalLM

    from tests.tiny import tiny_llama

    torch.manual_seed(0)
    if kind == "llama":
        return tiny_llama(tokenizer)
    if kind == "llama-tied":
        return tiny_llama(tokenizer, tie_word_embeddings=True)
    if kind == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4,
                                          n_positions=64)).eval()
    if kind == "granite":  # its forward divides the head's output by logits_scaling
        return GraniteForCausalLM(GraniteConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                                logits_scaling=4.0)).eval()
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["llama", "llama-tied", "gpt2", "granite"])
def test_a_model_gives_the_same_logprobs_entropies_and_gradients_fused(kind):
    from tests.tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    model = _tiny(kind, tokenizer).float()
    ids, attn = _batch(len(tokenizer))
    plain_out = _model_grads(model, False, ids, attn, 5)
    fused_out = _model_grads(model, True, ids, attn, 5)
    torch.testing.assert_close(fused_out[0], plain_out[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused_out[1], plain_out[1], rtol=1e-5, atol=1e-5)
    assert fused_out[2].keys() == plain_out[2].keys() and plain_out[2]
    for name in plain_out[2]:
        torch.testing.assert_close(fused_out[2][name], plain_out[2][name], rtol=1e-4, atol=1e-6, msg=name)
    # granite rescales the head's output inside its forward: detected, and full logits from then on
    assert getattr(model, "_tether_unfusable_head", False) == (kind == "granite")


def test_the_head_really_skips_full_logits_in_a_model(monkeypatch):
    """Two rows of logits per chunk: no tensor in forward or backward as large as B x T x V (15 x 4096;
    the largest parameter, the 4096 x 8 embedding, is half that)."""
    import tether.models.lm_head as lm_head
    from tests.tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    vocab, T = 4096, 5
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1)).eval()
    ids, attn = _batch(len(tokenizer))
    monkeypatch.setattr(lm_head, "CHUNK_ELEMENTS", 2 * vocab)
    with LargestTensor() as mode:
        _model_grads(model, True, ids, attn, T)
    assert mode.largest < ids.shape[0] * T * vocab
    with LargestTensor() as mode:
        _model_grads(model, False, ids, attn, T)
    assert mode.largest >= ids.shape[0] * T * vocab  # the check can fail: full logits are that large


def test_lora_policy_and_its_adapters_off_reference_fuse():
    from tests.tiny import tiny_tokenizer
    from tether import LoraSettings
    from tether.models import apply_lora

    tokenizer = tiny_tokenizer()
    model = apply_lora(_tiny("llama", tokenizer), LoraSettings(r=4, alpha=8, dropout=0.0))
    ids, attn = _batch(len(tokenizer))
    for p in (p for n, p in model.named_parameters() if "lora_B" in n):
        torch.nn.init.normal_(p, std=0.1)  # adapters that change the outputs
    plain_out, fused_out = _model_grads(model, False, ids, attn, 5), _model_grads(model, True, ids, attn, 5)
    torch.testing.assert_close(fused_out[0], plain_out[0], rtol=1e-5, atol=1e-5)
    assert plain_out[2] and all("lora" in n for n in plain_out[2])
    for name in plain_out[2]:
        torch.testing.assert_close(fused_out[2][name], plain_out[2][name], rtol=1e-4, atol=1e-6, msg=name)
    with model.disable_adapter(), torch.no_grad():
        from tether.models.forward import response_forward

        off = [response_forward(model, ids, attn, 5, 1.0, fused=f).logprobs for f in (False, True)]
    torch.testing.assert_close(off[1], off[0], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(off[0], plain_out[0], atol=1e-3)  # the adapters were really off


@pytest.mark.parametrize("fused", [False, True])
def test_a_tied_embedding_gets_one_gradient_buffer_and_the_same_gradient(fused):
    """Rows added in place: one [V, H] gradient buffer per backward (the head's). A dense lookup gradient adds
    its own zero-filled buffer, a sparse one an out-of-place sum. The summed gradient is the same in all three."""
    from tests.tiny import tiny_llama, tiny_tokenizer
    from tether.models.lm_head import sparse_tied_embedding_gradient, tied_embedding_gradient_in_place

    tokenizer = tiny_tokenizer()
    ids, attn = _batch(len(tokenizer))
    attn[0, :2] = 0  # padding rows and a padding id: F.embedding gives the padding row no gradient
    made, grads = {}, {}
    for way in ("dense", "sparse", "in place"):
        model = tiny_llama(tokenizer, tie_word_embeddings=True)
        if way == "sparse":
            assert sparse_tied_embedding_gradient(model)
        elif way == "in place":
            assert tied_embedding_gradient_in_place(model)
        weight = model.get_input_embeddings().weight
        shape = tuple(weight.shape)

        class CountWeightSized(TorchDispatchMode):  # new float32 [V, H] tensors (not in-place results or views)
            made = 0

            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                given = {a.untyped_storage().data_ptr() for a in torch.utils._pytree.tree_leaves((args, kwargs))
                         if isinstance(a, torch.Tensor) and not a.is_sparse}
                for t in out if isinstance(out, (tuple, list)) else [out]:
                    if isinstance(t, torch.Tensor) and tuple(t.shape) == shape and t.dtype == torch.float32 \
                            and not t.is_sparse and t.untyped_storage().data_ptr() not in given:
                        type(self).made += 1
                return out

        with CountWeightSized():
            grads[way] = _model_grads(model, fused, ids, attn, 5)[2]
        assert not weight.grad.is_sparse  # dense for the optimiser
        made[way] = CountWeightSized.made
    # in place: the gradient itself and the clone _model_grads returns; the others add the lookup's dense
    # gradient and/or an out-of-place sum (how many of those autograd makes depends on the head's path)
    print(made)
    assert made["in place"] == 2 and made["sparse"] > 2 and made["dense"] > 2
    for way in ("sparse", "in place"):
        for name in grads["dense"]:
            torch.testing.assert_close(grads[way][name], grads["dense"][name], rtol=1e-5, atol=1e-7, msg=f"{way} {name}")


def test_the_in_place_tied_lookup_adds_into_an_existing_gradient_and_without_the_head():
    """Gradient accumulation (a gradient already there) and a loss that does not use the head (no gradient yet)."""
    from tether.models.lm_head import tied_embedding_gradient_in_place

    torch.manual_seed(0)
    embedding = nn.Embedding(11, 4, padding_idx=0)
    reference = nn.Embedding(11, 4, padding_idx=0)
    reference.weight.data.copy_(embedding.weight.data)

    class Tied(nn.Module):
        def __init__(self, emb):
            super().__init__()
            self.emb, self.head = emb, nn.Linear(4, 11, bias=False)
            self.head.weight = emb.weight

        def get_input_embeddings(self):
            return self.emb

        def get_output_embeddings(self):
            return self.head

    ours, plain = Tied(embedding), Tied(reference)
    assert tied_embedding_gradient_in_place(ours)
    ids = torch.tensor([[0, 3, 3, 7], [5, 0, 2, 3]])
    for model in (ours, plain):
        (model.emb(ids) ** 2).sum().backward()  # only the lookup: the weight has no gradient yet
        (model.head(model.emb(ids)) - 1).pow(2).mean().backward()  # both, added to the gradient there
    torch.testing.assert_close(ours.emb.weight.grad, plain.emb.weight.grad, rtol=1e-6, atol=1e-7)
    assert ours.emb.weight.grad[0].abs().sum() > 0  # the head's part reaches the padding row; the lookup's does not
    with torch.no_grad():
        torch.testing.assert_close(ours.emb(ids), plain.emb(ids))  # a plain lookup outside training


def test_only_tied_trained_embeddings_are_made_sparse():
    from tests.tiny import tiny_llama, tiny_tokenizer
    from tether.models.lm_head import sparse_tied_embedding_gradient

    tokenizer = tiny_tokenizer()
    assert not sparse_tied_embedding_gradient(tiny_llama(tokenizer))  # untied: its gradient must stay dense
    frozen = tiny_llama(tokenizer, tie_word_embeddings=True).requires_grad_(False)
    assert not sparse_tied_embedding_gradient(frozen)


def test_a_second_trainer_on_the_same_model_switches_the_tied_lookup():
    """A model reused by a trainer with gradient release must lose the in-place lookup (its rows would land
    after the weight's step) and get it back for a trainer without release; a user's own sparse flag stays."""
    from tests.tiny import tiny_llama, tiny_tokenizer
    from tether.models.lm_head import (TiedEmbedding, plain_tied_lookup, sparse_tied_embedding_gradient,
                                       tied_embedding_gradient_in_place)

    model = tiny_llama(tiny_tokenizer(), tie_word_embeddings=True)
    embedding = model.get_input_embeddings()
    assert tied_embedding_gradient_in_place(model) and type(embedding) is TiedEmbedding
    assert sparse_tied_embedding_gradient(model) and type(embedding) is nn.Embedding and embedding.sparse
    assert tied_embedding_gradient_in_place(model) and type(embedding) is TiedEmbedding and not embedding.sparse
    plain_tied_lookup(model)
    assert type(embedding) is nn.Embedding and not embedding.sparse
    embedding.sparse = True  # the user's choice: left alone
    plain_tied_lookup(model)
    assert embedding.sparse and not tied_embedding_gradient_in_place(model)
