"""offload_reference: the frozen reference's weights live in a file between uses — the same training, no
reference bytes in the process during the update, any direct call still works, refused where it cannot work."""

import copy
import gc

import pytest
import torch

from tether import PPOConfig, PPOTrainer
from tether.config import ConfigError
from tether.models.offload import ParkedWeights

PROMPTS = ["hello there", "abc", "what is up", "zz top"]
RESPONSES = ["a b c", "yes", "no no no", "zz"]
SCORES = [1.0, -0.5, 0.25, 0.75]


def trained(model, tokenizer, offload: bool, tmp_path, monkeypatch, seen=None):
    monkeypatch.setenv("TETHER_OFFLOAD_DIR", str(tmp_path))
    config = PPOConfig(batch_size=4, mini_batch_size=2, ppo_epochs=2, max_new_tokens=4, learning_rate=1e-2,
                       kl_coef=0.5, seed=0, offload_reference=offload)
    trainer = PPOTrainer(config, copy.deepcopy(model), tokenizer)
    stats = []
    for _ in range(2):
        stats.append(trainer.step(PROMPTS, RESPONSES, SCORES))
        if seen is not None:  # what the reference holds while the policy is between updates
            seen.append(sum(p.numel() for p in trainer.ref_model.parameters()))
    return trainer, stats


def test_the_same_training_with_the_reference_parked_between_uses(model, tokenizer, tmp_path, monkeypatch):
    plain, plain_stats = trained(model, tokenizer, False, tmp_path, monkeypatch)
    seen = []
    parked, parked_stats = trained(model, tokenizer, True, tmp_path, monkeypatch, seen)
    assert seen == [0, 0]  # no reference weights in memory after the experience phase
    assert parked.ppo.parked_reference.path.exists()
    for a, b in zip(plain_stats, parked_stats):
        assert b["objective/kl"] == a["objective/kl"] and b["loss/total"] == a["loss/total"]
    assert abs(plain_stats[1]["objective/kl"]) > 0  # the reference really took part
    for (name, a), b in zip(plain.model.named_parameters(), parked.model.parameters()):
        assert torch.equal(a, b), name


def test_a_parked_model_answers_direct_calls_and_cleans_up(model, tmp_path):
    reference = copy.deepcopy(model).requires_grad_(False).eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    expected = reference(input_ids=ids).logits
    tied_before = reference.get_output_embeddings().weight is reference.get_input_embeddings().weight
    parked = ParkedWeights(reference, tmp_path)
    parked.park()
    assert all(p.numel() == 0 for p in reference.parameters())
    torch.testing.assert_close(reference(input_ids=ids).logits, expected, rtol=0, atol=0)  # the hook mapped them in
    assert not parked.parked
    assert (reference.get_output_embeddings().weight is reference.get_input_embeddings().weight) == tied_before
    directory = parked.path.parent
    parked.close()
    assert not directory.exists()
    torch.testing.assert_close(reference(input_ids=ids).logits, expected, rtol=0, atol=0)  # owns its weights again
    another = ParkedWeights(reference, tmp_path)
    directory = another.path.parent
    another.close()
    del another
    gc.collect()
    assert not directory.exists()


def test_only_a_frozen_model_can_be_parked(model, tmp_path):
    with pytest.raises(ValueError, match="frozen"):
        ParkedWeights(model, tmp_path)


def test_offload_reference_is_refused_under_fsdp2():
    with pytest.raises(ConfigError, match="offload_reference"):
        PPOConfig(offload_reference=True, sharding="fsdp2").validate()
