"""Tiny random models and a byte-level tokenizer built in-process: no downloads, fast on CPU."""

from __future__ import annotations

import torch

CHAT_TEMPLATE = (
    "{% for m in messages %}<|bos|>{{ m['role'] }}: {{ m['content'] }}<|eos|>{% endfor %}"
    "{% if add_generation_prompt %}<|bos|>assistant: {% endif %}"
)


def tiny_tokenizer(chat_template: bool = True):
    """A byte-level BPE tokenizer with no merges: 256 byte tokens + pad/bos/eos (ids 256..258)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    for special in ("<|pad|>", "<|bos|>", "<|eos|>"):
        vocab[special] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|pad|>", bos_token="<|bos|>",
                                   eos_token="<|eos|>")
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_llama(tokenizer, seed: int = 0, layers: int = 2, hidden: int = 32, **overrides):
    """A randomly initialised LlamaForCausalLM sized for unit tests (~40k parameters)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         **{"tie_word_embeddings": False, **overrides})
    return LlamaForCausalLM(config).eval()


def tiny_reward_model(tokenizer, seed: int = 1, hidden: int = 32):
    """A random LlamaForSequenceClassification (num_labels=1) on the same tokenizer."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id, num_labels=1)
    return LlamaForSequenceClassification(config).eval()


def tiny_run_config(directory, prompts: int, epochs: int, train: str):
    """A `tether ppo` YAML config in ``directory``: a saved tiny Llama, ``prompts`` JSONL prompts read
    ``epochs`` times, the length rule as reward, ``train`` (a YAML mapping body) as the train section,
    a checkpoint every iteration, the last two kept. Returns the config's path."""
    import json
    from pathlib import Path

    directory = Path(directory)
    tokenizer = tiny_tokenizer()
    tiny_llama(tokenizer).save_pretrained(directory / "tiny")
    tokenizer.save_pretrained(directory / "tiny")
    path = directory / "prompts.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": f"question {i}"}) for i in range(prompts)))
    config = directory / "run.yaml"
    config.write_text(f"model: {{name_or_path: {directory / 'tiny'}}}\n"
                      f"data: {{path: {path}, epochs: {epochs}}}\n"
                      "reward: {rule: length, rule_args: {target_words: 2}}\n"
                      f"train: {{{train}}}\nsave_every: 1\nkeep_checkpoints: 2\n")
    return config


def run_metrics(run):
    """The rows of ``run/metrics.jsonl`` without timings and memory (measurements, not results)."""
    import json

    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "memory/"))} for r in rows]


def save_tiny_models(directory, model, tokenizer):
    """The tiny policy and a tiny reward model saved as HF directories: ``(policy_dir, reward_model_dir)``."""
    policy, rm = directory / "policy", directory / "rm"
    model.save_pretrained(policy)
    tokenizer.save_pretrained(policy)
    tiny_reward_model(tokenizer).save_pretrained(rm)
    tokenizer.save_pretrained(rm)
    return policy, rm
