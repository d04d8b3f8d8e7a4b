import json

import pytest

from tether.data import DataError, left_pad, load_prompts, render_prompt, tokenize_prompts


def write_jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_jsonl_prompts_and_chat_messages(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hi"}, {"messages": [{"role": "user", "content": "yo"}]}])
    prompts = load_prompts(path)
    assert prompts[0] == "hi" and prompts[1][0]["content"] == "yo"


@pytest.mark.parametrize("row, message", [
    ('{"prompt": ', "p.jsonl:2: invalid JSON"),
    ({"text": "x"}, "p.jsonl:2: no 'prompt' or 'messages' field"),
    ({"prompt": "   "}, "p.jsonl:2: prompt is empty"),
    ({"prompt": 3}, "p.jsonl:2: expected a non-empty string"),
    ([1, 2], "p.jsonl:2: expected an object"),
])
def test_bad_rows_name_file_and_line(tmp_path, row, message):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "fine"}, row])
    with pytest.raises(DataError, match=message):
        load_prompts(path)


def test_hf_dataset_and_builtin(tmp_path):
    from datasets import Dataset

    ds = Dataset.from_list([{"prompt": "a"}, {"prompt": "b"}])
    assert load_prompts(ds) == ["a", "b"]
    ds.save_to_disk(str(tmp_path / "ds"))
    assert load_prompts(tmp_path / "ds") == ["a", "b"]
    assert len(load_prompts("builtin:instructions")) >= 200
    with pytest.raises(DataError, match="no such built-in prompt set"):
        load_prompts("builtin:nope")


def test_chat_template_is_applied_to_strings(tokenizer):
    text, templated = render_prompt("hello", tokenizer)
    assert templated and text == "<|bos|>user: hello<|eos|><|bos|>assistant: "
    raw, templated = render_prompt("hello", tokenizer, use_chat_template=False)
    assert raw == "hello" and not templated


def test_long_prompts_keep_their_end_with_a_warning(tokenizer, caplog):
    ids = tokenize_prompts(["abcdefghij", "ab"], tokenizer, max_prompt_length=4, use_chat_template=False)
    assert tokenizer.decode(ids[0]) == "ghij" and tokenizer.decode(ids[1]) == "ab"
    assert "1 of 2 prompts were longer than max_prompt_length=4" in caplog.text


def test_left_pad():
    ids, mask = left_pad([[1, 2, 3], [4]], pad_id=0)
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]]
    assert mask.tolist() == [[True, True, True], [False, False, True]]
