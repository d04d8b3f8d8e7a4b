"""Score completions with a sequence-classification reward model that has its own tokenizer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch

from .base import Prompt

NORMALIZATION_FILE = "tether_reward_normalization.json"


def prompt_text(prompt: Prompt) -> str:
    """Plain text of a prompt: the string itself, or the chat messages' contents joined by lines."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(str(m.get("content", "")) for m in prompt)


def encode_pairs(tokenizer, prompts: Sequence[Prompt], completions: Sequence[str], max_length: int):
    """Tokenise (prompt text, completion) as a text pair, right-padded, for a sequence classifier.

    Training and scoring both go through here, so a reward model sees the same inputs in both.
    Over ``max_length`` the longer of the two is trimmed first (in practice the prompt), so the
    completion — what the reward judges — is kept whole whenever it fits.
    """
    tokenizer.padding_side = "right"
    return tokenizer([prompt_text(p) for p in prompts], list(completions), truncation="longest_first",
                     max_length=max_length, padding=True, return_tensors="pt")


def save_normalization(directory: str | Path, shift: float, scale: float, **info) -> None:
    """Store ``score = (logit − shift) / scale`` next to a reward model (read by ``from_pretrained``)."""
    if not scale > 0:
        raise ValueError(f"normalisation scale must be > 0, got {scale}")
    (Path(directory) / NORMALIZATION_FILE).write_text(
        json.dumps({"shift": float(shift), "scale": float(scale), **info}, indent=2))


class RewardModelScorer:
    """``RewardFn`` backed by an ``AutoModelForSequenceClassification`` with ``num_labels = 1``.

    The reward model may use a different tokenizer from the policy (e.g. a BERT encoder under a
    Llama policy): it receives *text* and re-tokenises prompt and completion as a pair
    (``encode_pairs``). Its score is the model's single logit (HF reads it at the last real token of
    decoder models, at [CLS] for encoders), then ``(logit − shift) / scale`` when a normalisation
    is stored with the model [Z19].
    """

    def __init__(self, model, tokenizer, max_length: int = 512, batch_size: int = 16,
                 shift: float = 0.0, scale: float = 1.0):
        if model.config.num_labels != 1:
            raise ValueError(f"reward model has num_labels={model.config.num_labels}; expected 1")
        if tokenizer.pad_token_id is None:
            raise ValueError("reward model tokenizer has no pad token; set tokenizer.pad_token first")
        model.config.pad_token_id = tokenizer.pad_token_id
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_length, self.batch_size = max_length, batch_size
        self.shift, self.scale = shift, scale

    @classmethod
    def from_pretrained(cls, path: str, dtype: str = "float32", trust_remote_code: bool = False, **kwargs):
        """Load model, tokenizer and any stored normalisation from ``path``."""
        from transformers import AutoTokenizer

        from ..models.loading import load_sequence_classifier

        model = load_sequence_classifier(path, dtype=dtype, trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        norm = Path(path) / NORMALIZATION_FILE
        if norm.exists():
            stored = json.loads(norm.read_text())
            kwargs.setdefault("shift", float(stored["shift"]))
            kwargs.setdefault("scale", float(stored["scale"]))
        return cls(model, tokenizer, **kwargs)

    @torch.no_grad()
    def __call__(self, prompts: Sequence[Prompt], completions: Sequence[str]) -> list[float]:
        device = next(self.model.parameters()).device
        scores: list[float] = []
        for start in range(0, len(completions), self.batch_size):
            enc = encode_pairs(self.tokenizer, prompts[start : start + self.batch_size],
                               completions[start : start + self.batch_size], self.max_length).to(device)
            logits = self.model(**enc).logits[:, 0].float()
            scores.extend(((logits - self.shift) / self.scale).tolist())
        return scores
