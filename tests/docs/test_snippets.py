"""Every code block in README.md and docs/ runs (Python, a page's blocks in order) or resolves (shell commands), so the docs cannot
drift from the code. Python blocks run against tiny random models: the packaged model names are swapped
for tiny saved ones and the names a block assumes (``model``, ``tokenizer``, ``prompt_batches``...) are
provided. Shell commands are parsed by tether's own argument parser and their configs and overrides are
resolved; `tether config show` and `--help` run for real; the long runs themselves are covered by
tests/test_cli.py, tests/test_demo.py and tests/study."""

from __future__ import annotations

import contextlib
import io
import json
import shlex
from pathlib import Path

import pytest

from tiny import tiny_reward_model

from .snippets import ROOT, Snippet, markdown_files, right_column, snippets

PYTHON = snippets(("python",))
SHELL = snippets(("bash", "sh", "console"))
PLACEHOLDER_CONFIGS = {"my-run.yaml", "run.yaml"}  # names the docs use for "your config" (and my_*.py scripts)


def test_the_docs_have_code_blocks_to_check():
    assert len(PYTHON) >= 8 and len(SHELL) >= 8


@pytest.mark.parametrize("snippet", [s for s in snippets(("python", "bash", "sh", "yaml")) if s.marker],
                         ids=lambda s: s.id)
def test_markers_are_known_and_give_a_reason(snippet):
    assert snippet.marker == "runs: right column" or (
        snippet.marker.startswith("not run:") and len(snippet.marker) > len("not run:") + 15
    ), f"{snippet.id}: unknown marker or a 'not run' without its reason: {snippet.marker!r}"


@pytest.fixture
def docs_world(tmp_path, monkeypatch, model, tokenizer):
    """A working directory holding what the doc blocks assume: tiny models standing in for the packaged
    ones, prompts.jsonl, preference pairs, and the names ``model``, ``tokenizer``, ``MODEL``..."""
    policy, rm = tmp_path / "tiny-policy", tmp_path / "tiny-rm"
    model.save_pretrained(policy)
    tokenizer.save_pretrained(policy)
    tiny_reward_model(tokenizer).save_pretrained(rm)
    tokenizer.save_pretrained(rm)
    questions = [f"Question {i}: what is {i} plus {i}?" for i in range(16)]
    (tmp_path / "prompts.jsonl").write_text("\n".join(json.dumps({"prompt": q}) for q in questions))
    for name, n in (("pairs.jsonl", 8), ("heldout_pairs.jsonl", 4)):
        (tmp_path / name).write_text("\n".join(
            json.dumps({"prompt": questions[i], "chosen": f"It is {2 * i}, thanks!", "rejected": "No."})
            for i in range(n)))
    monkeypatch.chdir(tmp_path)
    names = {"smollm2-135m-instruct": str(policy), "all-minilm-l6-v2": str(rm)}
    namespace = {"MODEL": str(policy), "model": model, "tokenizer": tokenizer, "prompt_batches": [questions],
                 "score": len, "prompts": questions[:8], "reference_policy_samples": [f"{i}" for i in range(8)]}
    return names, namespace


def _swap_models(code: str, names: dict[str, str]) -> str:
    for packaged, tiny in names.items():
        code = code.replace(f'"{packaged}"', repr(tiny))
    return code


PAGES_WITH_PYTHON = sorted({s.path for s in PYTHON}, key=str)


@pytest.mark.parametrize("page", PAGES_WITH_PYTHON, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_blocks_run(page: Path, docs_world):
    """A page's Python blocks run in order in one namespace, as a reader runs them one after another."""
    names, namespace = docs_world
    namespace = dict(namespace)
    for snippet in (s for s in PYTHON if s.path == page and not s.marker.startswith("not run")):
        code = right_column(snippet.code) if snippet.marker == "runs: right column" else snippet.code
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                exec(compile(_swap_models(code, names), snippet.id, "exec"), namespace)
        except Exception as err:  # name the block, not this test
            pytest.fail(f"{snippet.id}: the documented code fails: {type(err).__name__}: {err}")


def test_right_column_is_the_tether_side():
    listing = "from trl import A        from tether import A\nfrom trl.core import B   from tether.core import B"
    assert right_column(listing) == "from tether import A\nfrom tether.core import B"


def _commands(code: str) -> list[list[str]]:
    """The commands of a shell block: continuations joined, comments dropped, ``&&`` chains split."""
    commands = []
    for line in code.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        while words:
            cut = words.index("&&") if "&&" in words else len(words)
            commands.append(words[:cut])
            words = words[cut + 1:]
    return commands


def _tether_args(words: list[str]) -> list[str] | None:
    """The arguments after ``tether`` in ``tether ...``, ``.venv/bin/tether ...``, ``python -m tether ...``,
    ``torchrun ... -m tether ...``; None if the command is not tether's."""
    if Path(words[0]).name == "tether":
        return words[1:]
    if "-m" in words and words[words.index("-m") + 1:][:1] == ["tether"]:
        return words[words.index("-m") + 2:]
    return None


def _check_tether_command(args: list[str], where: str) -> None:
    from tether.cli import make_parser, main
    from tether.config import RMRunConfig, RunConfig, load_run_config
    from tether.demo import demo_config
    from tether.study.overopt import overopt_config

    if "--help" in args or args[:2] == ["config", "show"]:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            assert main(args) == 0, f"{where}: `tether {' '.join(args)}` failed"
        assert out.getvalue().strip(), f"{where}: `tether {' '.join(args)}` printed nothing"
        return
    try:
        parsed = make_parser().parse_args(args)
    except SystemExit:
        pytest.fail(f"{where}: tether's parser rejects `tether {' '.join(args)}`")
    config = getattr(parsed, "config", None)
    if config is not None and not (ROOT / config).exists():
        assert config in PLACEHOLDER_CONFIGS, f"{where}: config file {config} does not exist"
        config = None
    elif config is not None:
        config = str(ROOT / config)
    overrides = getattr(parsed, "overrides", [])
    if parsed.command == "ppo":
        load_run_config(config, overrides, cls=RunConfig)
    elif parsed.command == "rm":
        load_run_config(config, overrides, cls=RMRunConfig)
    elif parsed.command == "demo":
        demo_config(overrides)
    elif parsed.command == "study":
        overopt_config(overrides, parsed.minutes)


@pytest.mark.parametrize("snippet", [s for s in SHELL if not s.marker.startswith("not run")], ids=lambda s: s.id)
def test_shell_block_commands_resolve(snippet: Snippet):
    for words in _commands(snippet.code):
        where = f"{snippet.id}: `{' '.join(words)}`"
        args = _tether_args(words)
        if args is not None:
            _check_tether_command(args, where)
        elif words[0] == "bash" or words[0].endswith("python") and words[1:2] != ["-m"]:
            assert (ROOT / words[1]).is_file(), f"{where}: {words[1]} does not exist"
        elif words[0] == "torchrun" and words[-1].endswith(".py"):
            assert (ROOT / words[-1]).is_file() or words[-1].startswith("my_"), f"{where}: {words[-1]} does not exist"
        elif words[:3] == [".venv/bin/python", "-m", "pytest"]:
            continue  # the suite this test is part of
        elif Path(words[0]).name == "mkdocs":
            assert words[1] in ("serve", "build") and (ROOT / "mkdocs.yml").is_file(), where
        else:
            pytest.fail(f"{where}: a command this test does not know how to check; teach it, or mark the block "
                        "<!-- not run: REASON -->")


def test_readme_links_point_at_files_that_exist():
    import re

    for path in markdown_files()[:1]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
            if not target.startswith(("http://", "https://", "mailto:")):
                assert (path.parent / target).exists(), f"{path.name} links to {target}, which does not exist"


@pytest.mark.parametrize("snippet", [s for s in snippets(("yaml", "yml")) if not s.marker.startswith("not run")]
                         or [pytest.param(None, marks=pytest.mark.skip(reason="the docs have no YAML block"))],
                         ids=lambda s: s.id if s else "none")
def test_yaml_blocks_are_valid_run_configs(snippet, tmp_path):
    """A YAML block in the docs is a `tether ppo` config: it must load, every key known."""
    from tether.config import load_run_config

    path = tmp_path / "block.yaml"
    path.write_text(snippet.code)
    try:
        load_run_config(str(path), [])
    except Exception as err:
        pytest.fail(f"{snippet.id}: not a valid run config: {type(err).__name__}: {err}")


def test_a_yaml_block_with_an_unknown_key_is_caught(tmp_path):
    from tether.config import ConfigError, load_run_config

    (tmp_path / "bad.yaml").write_text("train: {learning_rat: 1e-5}\n")
    with pytest.raises(ConfigError):
        load_run_config(str(tmp_path / "bad.yaml"), [])
