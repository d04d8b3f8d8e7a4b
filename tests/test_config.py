from pathlib import Path

import pytest

from tether.config import ConfigError, PPOConfig, RunConfig, load_run_config, save_run_config

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


def test_seed_kwargs_work():
    config = PPOConfig(model_name="m", learning_rate=1e-5, batch_size=16, ppo_epochs=4)
    assert config.micro_batch_size == 4 and config.accumulation_steps == 4
    assert config.backward_batch_size == 16  # one optimiser step per PPO epoch by default


@pytest.mark.parametrize("kwargs, message", [
    (dict(batch_size=6), "batch_size \\(6\\) must be divisible"),
    (dict(kl_estimator="k9"), "kl_estimator: 'k9' is not one of"),
    (dict(temperature=0.0), "temperature must be > 0"),
    (dict(dual_clip=0.5), "dual_clip must be > 1"),
    (dict(value_model="shared"), "value_model: 'shared' is not one of"),
])
def test_bad_values_name_the_option(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        PPOConfig(**kwargs)


def test_yaml_round_trip_and_overrides(tmp_path):
    config = load_run_config(None, ["train.learning_rate=3e-6", "model.lora.r=8", "train.stop_token_ids=[5, 6]"])
    assert config.train.learning_rate == 3e-6 and config.model.lora.r == 8
    assert config.train.stop_token_ids == [5, 6]
    save_run_config(config, tmp_path / "c.yaml")
    again = load_run_config(tmp_path / "c.yaml")
    assert again == config


def test_unknown_key_suggests_the_right_one(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  learnig_rate: 1e-5\n")
    with pytest.raises(ConfigError, match="c.yaml: unknown option 'train.learnig_rate'; did you mean "
                                          "'train.learning_rate'"):
        load_run_config(path)


def test_wrong_type_names_the_option():
    with pytest.raises(ConfigError, match="train.batch_size: expected an integer, got 'many'"):
        load_run_config(None, ["train.batch_size=many"])


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_validate(path):
    from tether.config import RMRunConfig

    cls = RMRunConfig if path.name.startswith("rm-") else RunConfig
    assert isinstance(load_run_config(path, cls=cls), cls)


def test_configuration_reference_is_in_sync():
    """docs/configuration.md is generated from the config docstrings; regenerate with
    `tether config show --markdown > docs/configuration.md`."""
    from pathlib import Path

    from tether.cli import config_markdown

    doc = Path(__file__).parents[1] / "docs" / "configuration.md"
    assert doc.read_text() == config_markdown() + "\n"


def test_critic_init_needs_a_separate_critic():
    from tether import PPOConfig
    from tether.config import ConfigError

    assert PPOConfig().value_model == "head"  # the measured default (README: the seed program)
    with pytest.raises(ConfigError, match="critic_init='reward_model' initialises a separate critic"):
        PPOConfig(critic_init="reward_model")
    assert PPOConfig(critic_init="reward_model", value_model="separate").critic_init == "reward_model"
