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


# joins prompt and completion for tokenizers that have no pair template (GPT-2, Llama-3, SmolLM2 ...):
# without it the two texts would run into each other ("...capital?Paris")
PAIR_SEPARATOR = "\n"


def has_pair_template(tokenizer) -> bool:
    """True when the tokenizer marks the boundary of a text pair itself (BERT's ``[SEP]``, a BOS
    between the two, ...): encoding a pair adds more special tokens than encoding one text."""
    return tokenizer.num_special_tokens_to_add(pair=True) > tokenizer.num_special_tokens_to_add(pair=False)


def _last_tokens_of(texts: Sequence[str], tokenizer, keep: Sequence[int]) -> list[str]:
    """Each text cut to (about) its last ``keep[i]`` tokens, at a token boundary (character offsets
    of a fast tokenizer; decoded ids otherwise)."""
    try:
        enc = tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)
    except (NotImplementedError, ValueError):  # slow tokenizers have no offsets
        enc = None
    out = []
    for i, (text, k) in enumerate(zip(texts, keep)):
        ids = enc["input_ids"][i] if enc is not None else tokenizer(text, add_special_tokens=False)["input_ids"]
        if k >= len(ids):
            out.append(text)
        elif k <= 0:
            out.append("")
        elif enc is not None:
            out.append(text[enc["offset_mapping"][i][len(ids) - k][0]:])
        else:
            out.append(tokenizer.decode(ids[len(ids) - k:]))
    return out


def encode_pairs(tokenizer, prompts: Sequence[Prompt], completions: Sequence[str], max_length: int):
    """Tokenise (prompt text, completion) for a sequence classifier, right-padded, ``max_length`` at most.

    Training (``RewardTrainer``) and scoring (``RewardModelScorer``) both go through here, so a
    reward model sees the same inputs in both. The two texts are encoded as a pair when the
    tokenizer has a pair template (``[CLS] prompt [SEP] completion [SEP]``); otherwise they are
    joined with ``PAIR_SEPARATOR``. Over ``max_length``, what is dropped is the *start* of the
    prompt: the completion — what the reward judges — is kept whole, and the end of the prompt (the
    question itself, after any preamble) with it. A completion longer than three quarters of the
    window keeps its end, after the last quarter of the prompt. The tokenizer is not changed (it may
    be shared with the policy, which pads on the left).
    """
    prompts = [prompt_text(p) for p in prompts]
    completions = list(completions)
    paired = has_pair_template(tokenizer)
    separator_len = 0 if paired else len(tokenizer(PAIR_SEPARATOR, add_special_tokens=False)["input_ids"])
    budget = max_length - tokenizer.num_special_tokens_to_add(pair=paired) - separator_len
    if budget < 2:
        raise ValueError(f"max_length={max_length} leaves no room for a prompt and a completion")
    p_len = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    c_len = [len(ids) for ids in tokenizer(completions, add_special_tokens=False)["input_ids"]]
    keep_c = [min(c, budget - min(p, budget // 4)) for p, c in zip(p_len, c_len)]
    keep_p = [min(p, budget - c) for p, c in zip(p_len, keep_c)]
    if any(kp < p or kc < c for p, c, kp, kc in zip(p_len, c_len, keep_p, keep_c)):
        prompts = _last_tokens_of(prompts, tokenizer, keep_p)
        completions = _last_tokens_of(completions, tokenizer, keep_c)
    common = dict(truncation=True, max_length=max_length, padding=True, padding_side="right", return_tensors="pt")
    if paired:  # truncation only guards against a re-tokenised cut being a token longer
        return tokenizer(prompts, completions, **common)
    return tokenizer([p + PAIR_SEPARATOR + c for p, c in zip(prompts, completions)], **common)


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
