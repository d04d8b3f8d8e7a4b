"""LoRA checkpoints: peft adapters + the base they came from; `tether export --merge` gives a plain
model with the same logits as the adapter model; model cards carry the training config."""

import torch

from tether import LoraSettings, PPOConfig, PPOTrainer
from tether.cli import main
from tether.models.loading import load_causal_lm, load_policy


def test_export_merge_matches_the_adapter_model(tmp_path, model, tokenizer, capsys):
    from transformers import AutoModelForCausalLM

    model.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    policy = load_causal_lm(str(tmp_path / "base"), lora=LoraSettings(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    trainer = PPOTrainer(PPOConfig(batch_size=4, mini_batch_size=4, ppo_epochs=2, learning_rate=5e-2,
                                   max_new_tokens=4), policy, tokenizer, reward_fn=lambda p, c: [float(len(x)) for x in c])
    trainer.train(["hello there", "abc", "what is up", "zz top"] * 2, output_dir=tmp_path / "run", progress=False)
    final = tmp_path / "run" / "final"
    assert (final / "adapter_config.json").exists() and (final / "tether_base.json").exists()
    card = (final / "README.md").read_text()
    assert "library_name: peft" in card and "learning_rate: 0.05" in card and "objective/kl" in card

    assert main(["export", str(final), "--merge", "--out", str(tmp_path / "merged")]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    adapters = load_policy(str(final))
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        expected = adapters(input_ids=ids).logits
        torch.testing.assert_close(merged(input_ids=ids).logits, expected, rtol=1e-5, atol=1e-5)
        base = load_causal_lm(str(tmp_path / "base"))(input_ids=ids).logits
    assert not torch.allclose(base, expected, atol=1e-4)  # the adapters did change the model
    assert "base_model:" in (tmp_path / "merged" / "README.md").read_text()
    capsys.readouterr()
    assert main(["export", str(tmp_path / "merged"), "--merge", "--out", str(tmp_path / "again")]) == 2
    assert "no adapter_config.json" in capsys.readouterr().err
