"""Best-of-n sampling (TRL 0.11's ``trl.extras.BestOfNSampler``): draw ``sample_size`` completions
per query, score the decoded texts, keep the ``n_candidates`` best.

It samples with the model's own ``generate`` (its checkpoint's generation settings, ``generation_config``
and the keyword arguments given), as TRL did: an evaluation tool, not part of PPO. The texts given to
``queries_to_scores`` are the decoded sequences, query included, as in TRL.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch


class BestOfNSampler:
    """``BestOfNSampler(model, tokenizer, queries_to_scores, length_sampler, sample_size=4, seed=None,
    n_candidates=1, generation_config=None)``.

    model: a value-head wrapper or any model with ``generate``; queries_to_scores: ``texts -> scores``
    (one number per text); length_sampler: ``() -> max_new_tokens`` (e.g. ``LengthSampler(4, 16)``),
    drawn once per query; seed: seeds Python, numpy and torch (``set_seed``) once, here."""

    def __init__(self, model, tokenizer, queries_to_scores: Callable[[list[str]], Sequence[float]],
                 length_sampler: Callable[[], int], sample_size: int = 4, seed: int | None = None,
                 n_candidates: int = 1, generation_config=None):
        from ..compat.core import set_seed

        if not hasattr(tokenizer, "batch_decode"):
            raise ValueError(f"tokenizer must be a transformers tokenizer, got {type(tokenizer).__name__}")
        if not callable(getattr(model, "generate", None)):
            raise ValueError(f"model must have generate(), got {type(model).__name__}")
        if not 1 <= n_candidates <= sample_size:
            raise ValueError(f"n_candidates ({n_candidates}) must be between 1 and sample_size ({sample_size})")
        if seed is not None:
            set_seed(seed)
        self.model, self.tokenizer = model, tokenizer
        self.queries_to_scores, self.length_sampler = queries_to_scores, length_sampler
        self.sample_size, self.n_candidates, self.gen_config = sample_size, n_candidates, generation_config

    def generate(self, tokenized_query: Any, skip_special_tokens: bool = True, device=None,
                 **generation_kwargs) -> list[list[str]]:
        """The ``n_candidates`` best texts per query, best first: ``[[text, ...], ...]``, one list per
        query. ``tokenized_query``: one query (1-D tensor or list of ids) or a batch (list of tensors
        or of id lists)."""
        result = []
        for query in _as_rows(tokenized_query):
            batch = query.reshape(1, -1).repeat(self.sample_size, 1)
            if device is not None:
                batch = batch.to(device)
            output = self.model.generate(batch, attention_mask=torch.ones_like(batch),
                                         max_new_tokens=self.length_sampler(),
                                         generation_config=self.gen_config, **generation_kwargs)
            texts = self.tokenizer.batch_decode(output, skip_special_tokens=skip_special_tokens)
            scores = torch.as_tensor([float(s) for s in self.queries_to_scores(texts)])
            if scores.numel() != len(texts):
                raise ValueError(f"queries_to_scores returned {scores.numel()} scores for {len(texts)} texts")
            result.append([texts[i] for i in scores.topk(self.n_candidates).indices.tolist()])
        return result


def _as_rows(tokenized_query) -> list[torch.Tensor]:
    """One query or a batch of them as a list of 1-D id tensors."""
    if isinstance(tokenized_query, torch.Tensor):
        if tokenized_query.dim() == 1:
            return [tokenized_query]
        if tokenized_query.dim() == 2:
            return list(tokenized_query)
        raise ValueError(f"BestOfNSampler.generate: a query tensor must be 1-D, got shape {tuple(tokenized_query.shape)}")
    if isinstance(tokenized_query, (list, tuple)) and tokenized_query:
        if isinstance(tokenized_query[0], int):
            return [torch.tensor(tokenized_query)]
        return [t if isinstance(t, torch.Tensor) else torch.tensor(t) for t in tokenized_query]
    raise ValueError("BestOfNSampler.generate: give token ids (a tensor, a list of ids, or a list of either)")
