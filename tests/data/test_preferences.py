import json
import logging

import pytest

from tether.data.preferences import PreferencePair, load_preferences
from tether.data.prompts import DataError


def write(tmp_path, rows):
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_text_rows_with_margin(tmp_path):
    path = write(tmp_path, [{"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away.", "margin": 2}])
    assert load_preferences(path) == [PreferencePair("Hi", "Hello!", "Go away.", 2.0)]


def test_conversations_split_into_prompt_and_last_assistant_message():
    user = [{"role": "user", "content": "Hi"}]
    row = {"chosen": user + [{"role": "assistant", "content": "Hello!"}],
           "rejected": user + [{"role": "assistant", "content": "Go away."}]}
    [pair] = load_preferences([row])
    assert pair.prompt == user and pair.chosen == "Hello!" and pair.rejected == "Go away."


def test_conversations_with_different_prompts_are_rejected():
    row = {"chosen": [{"role": "user", "content": "A"}, {"role": "assistant", "content": "x"}],
           "rejected": [{"role": "user", "content": "B"}, {"role": "assistant", "content": "y"}]}
    with pytest.raises(DataError, match="pair 0: 'chosen' and 'rejected' conversations have different prompts"):
        load_preferences([row])


@pytest.mark.parametrize("row, message", [
    ({"prompt": "p", "chosen": "a"}, r"missing field\(s\) \['rejected'\]"),
    ({"prompt": "p", "chosen": "  ", "rejected": "b"}, "'chosen' is empty"),
    ({"prompt": "", "chosen": "a", "rejected": "b"}, "prompt is empty"),
    ({"prompt": "p", "chosen": 3, "rejected": "b"}, "'chosen' must be a non-empty string"),
    ({"prompt": "p", "chosen": "a", "rejected": "b", "margin": "big"}, "'margin' must be a finite number"),
    ({"prompt": "p", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"}, "role 'user'; expected 'assistant'"),
])
def test_malformed_rows_name_file_and_line(tmp_path, row, message):
    path = write(tmp_path, [{"prompt": "ok", "chosen": "a", "rejected": "b"}, row])
    with pytest.raises(DataError, match=f"pairs.jsonl:2: .*{message}"):
        load_preferences(path)


def test_invalid_json_names_the_line(tmp_path):
    path = write(tmp_path, [{"prompt": "ok", "chosen": "a", "rejected": "b"}, "{not json"])
    with pytest.raises(DataError, match="pairs.jsonl:2: invalid JSON"):
        load_preferences(path)


def test_identical_pairs_are_dropped_with_a_count(tmp_path, caplog):
    path = write(tmp_path, [{"prompt": "p", "chosen": "same", "rejected": "same"},
                            {"prompt": "p", "chosen": "a", "rejected": "b"}])
    with caplog.at_level(logging.WARNING):
        pairs = load_preferences(path)
    assert len(pairs) == 1
    assert "dropped 1 pair(s)" in caplog.text and "pairs.jsonl:1" in caplog.text


def test_hf_dataset_rows(tmp_path):
    from datasets import Dataset

    ds = Dataset.from_list([{"prompt": "p", "chosen": "a", "rejected": "b"}])
    ds.save_to_disk(str(tmp_path / "ds"))
    assert load_preferences(ds) == load_preferences(tmp_path / "ds") == [PreferencePair("p", "a", "b")]


def test_missing_file():
    with pytest.raises(DataError, match="nope.jsonl: preference file not found"):
        load_preferences("nope.jsonl")


def test_preferences_from_csv(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("prompt,chosen,rejected\nq1,good answer,bad answer\nq2,yes,no\n")
    pairs = load_preferences(path)
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [("q1", "good answer", "bad answer"), ("q2", "yes", "no")]
    assert pairs[1].where.endswith("pairs.csv:row 2")
