"""Every subcommand turns bad user input into one `tether: error:` line naming the culprit, exit 2,
no traceback; `-v` shows the traceback."""

import json

import pytest

from tether.cli import main


@pytest.fixture
def files(tmp_path, model, tokenizer):
    tiny = tmp_path / "tiny"
    model.save_pretrained(tiny)
    tokenizer.save_pretrained(tiny)
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "prompts.jsonl").write_text("\n".join(json.dumps({"prompt": f"q {i}"}) for i in range(8)))
    (tmp_path / "bad.jsonl").write_text('{"prompt": "fine"}\n{not json\n')
    (tmp_path / "no_field.jsonl").write_text('{"question": "where is the prompt"}\n')
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"})
                                                    for _ in range(4)))
    (tmp_path / "pairs_bad.jsonl").write_text('{"prompt": "p", "chosen": "a"}\n')
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    (tmp_path / "run_dir").mkdir()
    (tmp_path / "not_a_checkpoint").mkdir()
    return tmp_path


def ppo(f, *extra, model=None, data=None, rule="length"):
    return ["ppo", "--out", str(f / "out"), f"model.name_or_path={model or f / 'tiny'}",
            f"data.path={data or f / 'prompts.jsonl'}", f"reward.rule={rule}", "train.batch_size=4",
            "train.max_new_tokens=2", "train.ppo_epochs=1", *extra]


def evaluate(f, *extra, model=None, rule="length", prompts=None):
    return ["eval", "--model", str(model or f / "tiny"), "--reward", rule, "--prompts",
            str(prompts or f / "prompts.jsonl"), "--max-new-tokens", "2", "--out", str(f / "eval"), *extra]


# (name, argv builder, text the error line must contain)
CASES = [
    ("ppo: model path that does not exist", lambda f: ppo(f, model=f / "nowhere"), "nowhere"),
    ("ppo: directory without a model", lambda f: ppo(f, model=f / "empty_dir"), "empty_dir"),
    ("ppo: unknown reward rule", lambda f: ppo(f, rule="kindness"), "kindness"),
    ("ppo: prompts file missing", lambda f: ppo(f, data=f / "missing.jsonl"), "missing.jsonl"),
    ("ppo: malformed JSONL", lambda f: ppo(f, data=f / "bad.jsonl"), "bad.jsonl:2"),
    ("ppo: prompt field missing", lambda f: ppo(f, data=f / "no_field.jsonl"), "prompt"),
    ("ppo: unknown option", lambda f: ppo(f, "train.learnig_rate=1"), "train.learning_rate"),
    ("ppo: option of the wrong type", lambda f: ppo(f, "train.batch_size=many"), "train.batch_size"),
    ("ppo: config file missing", lambda f: ["ppo", "--config", str(f / "nope.yaml")], "nope.yaml"),
    ("ppo: config file not YAML", lambda f: ["ppo", "--config", str(f / "bad.yaml")], "bad.yaml"),
    ("ppo: resume with nothing to resume", lambda f: ppo(f, "--resume"), "checkpoint"),
    ("ppo: resume from a directory that is no checkpoint",
     lambda f: ppo(f, "--resume", str(f / "not_a_checkpoint")), "not_a_checkpoint"),
    ("ppo: reward model path that does not exist",
     lambda f: ppo(f, f"reward.model={f / 'no_rm'}", rule=""), "no_rm"),
    ("rm: no data", lambda f: ["rm", "--out", str(f / "rm")], "data.path"),
    ("rm: pairs without a rejected answer",
     lambda f: ["rm", "--out", str(f / "rm"), f"data.path={f / 'pairs_bad.jsonl'}", f"model={f / 'tiny'}"],
     "pairs_bad.jsonl"),
    ("rm: backbone path that does not exist",
     lambda f: ["rm", "--out", str(f / "rm"), f"data.path={f / 'pairs.jsonl'}", f"model={f / 'nowhere'}"],
     "nowhere"),
    ("eval: model path that does not exist", lambda f: evaluate(f, model=f / "nowhere"), "nowhere"),
    ("eval: directory without a model", lambda f: evaluate(f, model=f / "empty_dir"), "empty_dir"),
    ("eval: unknown reward rule", lambda f: evaluate(f, rule="kindness"), "kindness"),
    ("eval: bad rule argument", lambda f: evaluate(f, "--reward-arg", "target_words=lots"), "target_words"),
    ("eval: prompts file missing", lambda f: evaluate(f, prompts=f / "missing.jsonl"), "missing.jsonl"),
    ("eval: baseline that does not exist", lambda f: evaluate(f, "--baseline", str(f / "no_base")), "no_base"),
    ("eval: reward model that does not exist",
     lambda f: ["eval", "--model", str(f / "tiny"), "--reward-model", str(f / "no_rm")], "no_rm"),
    ("demo: unknown override", lambda f: ["demo", "--out", str(f / "demo"), "ppo.learnig_rate=1"], "learnig_rate"),
    ("export: not a LoRA checkpoint", lambda f: ["export", str(f / "tiny"), "--merge", "--out", str(f / "m")],
     "adapter"),
    ("export: checkpoint that does not exist",
     lambda f: ["export", str(f / "nowhere"), "--merge", "--out", str(f / "m")], "nowhere"),
    ("report: run directory without metrics", lambda f: ["report", str(f / "run_dir")], "run_dir"),
    ("report: run directory that does not exist", lambda f: ["report", str(f / "no_run")], "no_run"),
    ("config show: bad override", lambda f: ["config", "show", "train.batch_size=-1"], "train.batch_size"),
]


@pytest.mark.parametrize("name, argv, culprit", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_line_exit_2(files, name, argv, culprit, capsys):
    code = main(argv(files))
    err = capsys.readouterr().err
    assert "Traceback" not in err, err[-2000:]
    assert code == 2, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("tether: error:")]
    assert len(lines) == 1, err[-2000:]
    assert culprit in err, err[-2000:]


def test_verbose_shows_the_traceback(files, capsys):
    assert main(["-v", *ppo(files, model=files / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "tether: error:" in err
