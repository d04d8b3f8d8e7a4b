"""Property-based tests: random malformed rows and configs give a clean error that names the file,
row or option — never a traceback from deep inside."""

import json
import string
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tether.config import ConfigError, RMRunConfig, RunConfig, from_dict, load_run_config
from tether.data import DataError, load_prompts
from tether.data.preferences import load_preferences

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

scalars = st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True) | st.text(max_size=12)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", 3]),
                                           "content": st.text(max_size=10) | st.integers()}), max_size=3)
field_values = json_values | messages | st.text(max_size=20)
prompt_rows = st.dictionaries(st.sampled_from(["prompt", "messages", "text", "chosen", "rejected", "margin"]),
                              field_values, max_size=4)
lines = st.one_of(
    prompt_rows.map(json.dumps),
    json_values.map(json.dumps),
    st.text(max_size=30),  # not JSON at all
    st.binary(max_size=20).map(lambda b: b.decode("latin-1")),
)


def write(lines_, raw_bytes=b""):
    path = Path(tempfile.mkdtemp()) / "rows.jsonl"
    path.write_bytes("\n".join(lines_).encode("utf-8", "surrogatepass") + raw_bytes)
    return path


@SETTINGS
@given(st.lists(lines, min_size=0, max_size=6), st.binary(max_size=6))
def test_prompt_files_load_or_fail_naming_the_file(rows, tail):
    path = write(rows, tail)
    try:
        prompts = load_prompts(path)
    except DataError as err:
        assert str(path) in str(err)
    else:
        assert prompts and all(isinstance(p, (str, list)) for p in prompts)


@SETTINGS
@given(st.lists(lines, min_size=0, max_size=6))
def test_preference_files_load_or_fail_naming_the_file(rows):
    path = write(rows)
    try:
        pairs = load_preferences(path)
    except DataError as err:
        assert str(path) in str(err)
    else:
        assert all(p.chosen != p.rejected and isinstance(p.chosen, str) for p in pairs)


@SETTINGS
@given(st.lists(prompt_rows | json_values, max_size=5))
def test_in_memory_rows_fail_naming_the_row(rows):
    try:
        load_prompts(rows)
    except DataError as err:
        assert "prompt " in str(err)


SECTIONS = {"model": ["name_or_path", "gguf_file", "dtype", "trust_remote_code", "lora"],
            "data": ["path", "prompt_field", "epochs", "max_iterations"],
            "reward": ["rule", "rule_args", "model", "batch_size"],
            "train": ["batch_size", "learning_rate", "ppo_epochs", "kl_estimator", "adaptive_kl", "top_p",
                      "mini_batch_size", "algorithm", "num_generations", "cliprange", "max_bad_steps",
                      "prompt_overflow", "lernin_rate"],
            "save_every": None, "keep_checkpoints": None, "output_dir": None, "bogus": None}


@st.composite
def run_configs(draw):
    config = {}
    for section in draw(st.lists(st.sampled_from(sorted(SECTIONS)), max_size=4, unique=True)):
        keys = SECTIONS[section]
        if keys is None or not draw(st.integers(0, 5)):  # a scalar where a section (or option) belongs
            config[section] = draw(scalars)
        else:
            config[section] = draw(st.dictionaries(st.sampled_from(keys), scalars | st.lists(scalars, max_size=2),
                                                   max_size=3))
    return config


@SETTINGS
@given(run_configs())
def test_random_run_configs_build_or_fail_naming_the_option(data):
    try:
        config = from_dict(RunConfig, data)
    except ConfigError as err:
        message = str(err)
        assert any(name in message for name in data), message
    else:
        import dataclasses
        import math

        floats = [v for section in (config.train, config.data, config.reward) for v in
                  dataclasses.asdict(section).values() if isinstance(v, float)]
        assert all(math.isfinite(v) for v in floats)


@SETTINGS
@given(st.text(alphabet=string.printable, max_size=80))
def test_random_yaml_text_fails_naming_the_file(text):
    path = Path(tempfile.mkdtemp()) / "run.yaml"
    path.write_text(text)
    for cls in (RunConfig, RMRunConfig):
        try:
            load_run_config(path, cls=cls)
        except ConfigError as err:
            assert str(path) in str(err)


@pytest.mark.parametrize("override", ["train.batch_size=abc", "train=3", "train.batch_size.x=1", "nope", "train.top_p=2"])
def test_bad_overrides_are_config_errors(override):
    with pytest.raises(ConfigError):
        load_run_config(None, [override])
