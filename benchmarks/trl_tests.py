"""Run TRL 0.11.4's own ``tests/test_ppo_trainer.py`` against tether, and (``--peer``) against
``trl==0.11.4`` itself, with only the imports and the Hub models swapped.

    .venv/bin/python benchmarks/trl_tests.py --trl-file PATH/TO/trl/tests/test_ppo_trainer.py [--peer]

TRL's file is not part of tether (get it from TRL's v0.11.4 tag). The Hub models it loads are
replaced by tiny random local ones of the same architectures (GPT-2, Bloom, T5; a byte-level BPE
tokenizer built here, on which the file's query encodes to the same 7 tokens as GPT-2's), so
``test_loss_trainer``, which compares against numbers of the Hub checkpoint's weights, fails on both
sides; the harness prints each side's pass/fail/skip per test so the two can be compared line by line. ``--peer``
runs the same rewritten file in the trl==0.11.4 venv of ``benchmarks/vs_trl.py``.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORPUS = ["This morning I went to the park.", "this is a test", "this is another, longer test",
          "The movie was great and I loved it.", "I went to the store this morning."] * 20


def build_models(root: Path, dropout: float | None = None) -> dict[str, str]:
    """Tiny GPT-2, Bloom and T5 checkpoints with one shared byte-level BPE tokenizer; their paths by
    name. ``dropout``: every dropout probability of the three configs (None: their defaults)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (BloomConfig, BloomForCausalLM, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast,
                              T5Config, T5ForConditionalGeneration)

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "</s>", "<unk>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    torch.manual_seed(0)
    vocab = bpe.get_vocab_size()
    paths = {}
    for name, config, cls, pad_side in (
        ("gpt2", GPT2Config(vocab_size=vocab, n_embd=32, n_layer=5, n_head=4, n_positions=1024, bos_token_id=1,
                            eos_token_id=1, pad_token_id=1, tie_word_embeddings=False), GPT2LMHeadModel, "right"),
        ("bloom", BloomConfig(vocab_size=vocab, hidden_size=32, n_layer=2, n_head=4, bos_token_id=1, eos_token_id=1,
                              pad_token_id=0), BloomForCausalLM, "left"),
        ("t5", T5Config(vocab_size=vocab, d_model=32, d_ff=64, d_kv=8, num_layers=2, num_heads=4, pad_token_id=0,
                        eos_token_id=1, decoder_start_token_id=0), T5ForConditionalGeneration, "right"),
    ):
        if dropout is not None:
            for key in ("resid_pdrop", "embd_pdrop", "attn_pdrop", "summary_first_dropout", "hidden_dropout",
                        "attention_dropout", "dropout_rate"):
                if hasattr(config, key):
                    setattr(config, key, dropout)
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="</s>", unk_token="<unk>",
                                            pad_token=None if name == "gpt2" else "<pad>", padding_side=pad_side)
        if name == "gpt2":
            tokenizer.bos_token = "</s>"
        path = root / name
        cls(config).save_pretrained(path)
        tokenizer.save_pretrained(path)
        config_file = path / "tokenizer_config.json"  # readable by transformers 4.46 (the peer's) too
        config_file.write_text(re.sub(r'"tokenizer_class": "\w+"', '"tokenizer_class": "PreTrainedTokenizerFast"',
                                      config_file.read_text()))
        paths[name] = str(path)
    return paths


def rewrite(source: str, paths: dict[str, str], library: str) -> str:
    """TRL's test file with ``library``'s imports and local models; the Hub-only constants inlined."""
    source = source.replace("from trl import", f"from {library} import").replace("from trl.core", f"from {library}.core")
    source = source.replace("from .testing_constants import CI_HUB_ENDPOINT, CI_HUB_USER",
                            'CI_HUB_ENDPOINT, CI_HUB_USER = "https://hub-ci.huggingface.co", "__DUMMY__"')
    source = source.replace('"trl-internal-testing/dummy-GPT2-correct-vocab"', repr(paths["gpt2"]))
    source = source.replace('"trl-internal-testing/tiny-BloomForCausalLM-correct-vocab"', repr(paths["bloom"]))
    source = source.replace('"trl-internal-testing/tiny-T5ForConditionalGeneration-correct-vocab"', repr(paths["t5"]))
    source = source.replace("except HTTPError:", "except Exception:")  # no Hub here: the repo clean-up cannot run
    source = re.sub(r'from_pretrained\("gpt2"', f"from_pretrained({paths['gpt2']!r}", source)
    return source


def run(python: str, test_file: Path) -> dict[str, str]:
    out = subprocess.run([python, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "-p", "no:warnings",
                          str(test_file)], capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1",
                                                                                "PATH": "/usr/bin:/bin"})
    results = {}
    for line in out.stdout.splitlines():
        m = re.match(r"(PASSED|FAILED|SKIPPED|ERROR) \S*?::(?:\w+::)?(\w+)", line)
        if m:
            results[m.group(2)] = m.group(1)
        m = re.match(r"SKIPPED \[(\d+)\] (\S+:\d+): ", line)  # -rA names skipped tests by file:line only
        if m:
            results[f"(skipped at {m.group(2).rsplit('/', 1)[-1]})"] = "SKIPPED"
    if not results:
        print(out.stdout[-4000:], out.stderr[-4000:], file=sys.stderr)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trl-file", required=True, type=Path, help="TRL v0.11.4's tests/test_ppo_trainer.py")
    parser.add_argument("--peer", action="store_true", help="also run it on trl==0.11.4 (its own venv)")
    args = parser.parse_args()
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "parameterized"], check=True)
    sides = {"tether": (sys.executable, "tether")}
    if args.peer:
        sys.path.insert(0, str(HERE))
        from vs_trl import bench_dir, venv

        python = venv(bench_dir(), "trl0114")
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "parameterized", "pytest"], check=True)
        sides["trl==0.11.4"] = (str(python), "trl")
    source = args.trl_file.read_text()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = build_models(root / "models")
        table = {}
        for side, (python, library) in sides.items():
            test_file = root / f"side_{library}" / "test_ppo_trainer.py"  # not named like the package
            test_file.parent.mkdir()
            test_file.write_text(rewrite(source, paths, library))
            table[side] = run(python, test_file)
    names = sorted(set().union(*table.values()))
    print(f"{'test':55s} " + " ".join(f"{s:>13s}" for s in table))
    for name in names:
        print(f"{name:55s} " + " ".join(f"{table[s].get(name, '-'):>13s}" for s in table))
    for side, results in table.items():
        counts = {k: sum(v == k for v in results.values()) for k in ("PASSED", "FAILED", "ERROR", "SKIPPED")}
        print(f"{side}: " + ", ".join(f"{v} {k.lower()}" for k, v in counts.items()))


if __name__ == "__main__":
    main()
