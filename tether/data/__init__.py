"""Prompt datasets and tokenization."""

from .prompts import DataError, left_pad, load_prompts, render_prompt, right_pad, tokenize_prompts

__all__ = ["DataError", "left_pad", "load_prompts", "render_prompt", "right_pad", "tokenize_prompts"]
