"""Options that cannot work with sharded weights are refused with a message naming them (checked in one
process, with the seam told it is sharded)."""

import pytest
import torch

from tether import PPOConfig, PPOTrainer
from tether.config import ConfigError
from tether.train import trainer as trainer_module
from tether.train.distributed import Distributed
from tether.train.sharding import decoder_layers


@pytest.fixture
def pretend_sharded(monkeypatch):
    def sharded(cls, sharding="ddp"):
        d = Distributed(sharding)
        d.sharded = sharding == "fsdp2"
        return d

    monkeypatch.setattr(trainer_module.Distributed, "from_environment", classmethod(sharded))
    monkeypatch.setattr(Distributed, "shard_models", lambda self, *modules, mixed_precision=False: modules)


def test_an_optimizer_built_before_sharding_is_refused(model, tokenizer, pretend_sharded):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    with pytest.raises(ValueError, match="optimizer built before PPOTrainer holds the old ones"):
        PPOTrainer(PPOConfig(sharding="fsdp2", batch_size=2), model, tokenizer, optimizer=optimizer)


def test_the_hf_engine_in_any_form_is_accepted_under_sharding(model, tokenizer, pretend_sharded):
    """What the CLI passes (a RolloutConfig with engine 'hf') must not be mistaken for vLLM."""
    from tether.config import RolloutConfig
    from tether.rollout.hf import HFEngine

    for engine in (None, "hf", RolloutConfig(engine="hf")):
        trainer = PPOTrainer(PPOConfig(sharding="fsdp2", batch_size=2), model, tokenizer, engine=engine)
        assert isinstance(trainer.engine, HFEngine)


def test_sharding_options_are_checked():
    with pytest.raises(ConfigError, match="sharding: 'zero3' is not one of"):
        PPOConfig(sharding="zero3")
    with pytest.raises(ConfigError, match="sharded_rollout"):
        PPOConfig(sharded_rollout="all")


def test_the_units_are_the_decoder_layers_of_every_model_inside(model):
    from tether.models.critic import ValueModel

    assert [type(m).__name__ for m in decoder_layers(model)] == ["LlamaDecoderLayer"] * 2
    assert len(decoder_layers(ValueModel.from_causal_lm(model))) == 2  # a critic's backbone
