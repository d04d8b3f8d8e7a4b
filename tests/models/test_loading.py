import pytest
import torch

from tether import LoraSettings, PPOConfig, PPOTrainer, load_causal_lm, load_tokenizer


@pytest.fixture
def saved(tmp_path, model, tokenizer):
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    return tmp_path / "m"


def test_trust_remote_code_is_off_unless_asked(saved, monkeypatch):
    import transformers

    seen = {}
    real = transformers.AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    load_causal_lm(str(saved))
    assert seen["trust_remote_code"] is False
    load_causal_lm(str(saved), trust_remote_code=True)
    assert seen["trust_remote_code"] is True


def test_bfloat16_policy_trains(saved):
    model = load_causal_lm(str(saved), dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16
    tokenizer = load_tokenizer(str(saved))
    trainer = PPOTrainer(PPOConfig(batch_size=2, mini_batch_size=2, ppo_epochs=1, max_new_tokens=4,
                                   learning_rate=1e-2), model, tokenizer)
    prompts = ["a", "b"]
    stats = trainer.step(prompts, trainer.generate(prompts), [1.0, 0.0])
    assert stats["objective/entropy"] > 0 and torch.isfinite(torch.tensor(stats["loss/total"]))


def test_lora_settings_wrap_in_peft(saved):
    model = load_causal_lm(str(saved), lora=LoraSettings(r=2, target_modules=["q_proj"]))
    assert hasattr(model, "peft_config")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_unknown_dtype_is_named():
    with pytest.raises(ValueError, match="model.dtype: unknown dtype 'fp8'"):
        load_causal_lm("whatever", dtype="fp8")


def test_tokenizer_without_pad_gets_eos(tokenizer):
    from tether.models.loading import prepare_tokenizer

    tokenizer.pad_token = None
    prepare_tokenizer(tokenizer)
    assert tokenizer.pad_token == tokenizer.eos_token and tokenizer.padding_side == "left"


def test_pickle_checkpoints_are_refused_with_a_way_out(tmp_path, model, tokenizer):
    from tether.models.loading import load_sequence_classifier

    model.config.save_pretrained(tmp_path / "bin")
    torch.save(model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    for load in (load_causal_lm, load_sequence_classifier):
        with pytest.raises(FileNotFoundError, match="no safetensors weights.*pickle"):
            load(str(tmp_path / "bin"))


def test_no_pad_and_no_eos_is_a_clear_error():
    from tether.models.loading import prepare_tokenizer
    from tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    tok.pad_token, tok.eos_token = None, None
    with pytest.raises(ValueError, match="neither a pad token nor an EOS"):
        prepare_tokenizer(tok)


def test_relative_path_objects_load_and_missing_ones_are_named(saved, tmp_path, monkeypatch):
    from pathlib import Path

    monkeypatch.chdir(tmp_path)
    model = load_causal_lm(Path("m"))
    tokenizer = load_tokenizer(Path("m"))
    assert model.config.vocab_size >= len(tokenizer) - 8
    with pytest.raises(FileNotFoundError, match="missing/model: no such file or directory"):
        load_causal_lm(Path("missing/model"))
