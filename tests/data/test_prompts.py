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


def test_builtin_sets_join_and_do_not_overlap():
    instructions, everyday = load_prompts("builtin:instructions"), load_prompts("builtin:everyday")
    joined = load_prompts("builtin:instructions+everyday")
    assert joined == instructions + everyday and len(joined) >= 128 + 192 + 16  # the demo's split fits
    assert not set(instructions) & set(everyday) and len(set(joined)) == len(joined)
    with pytest.raises(DataError, match="builtin:nope: no such built-in prompt set"):
        load_prompts("builtin:instructions+nope")


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


def test_prompt_overflow_drop_and_error(tokenizer, caplog):
    from tether.data.prompts import limit_prompt_lengths

    ids = [[1] * 3, [2] * 9, [3] * 4, [4] * 6]
    kept_ids, kept = limit_prompt_lengths(ids, 4, "drop")
    assert kept == [0, 2] and kept_ids == [[1] * 3, [3] * 4]
    assert "2 of 4 prompts were longer than max_prompt_length=4 and were dropped (first: prompt 1)" in caplog.text
    with pytest.raises(DataError, match="prompt 1 has 9 tokens, more than max_prompt_length=4 \\(2 prompts"):
        limit_prompt_lengths(ids, 4, "error")
    trimmed, kept = limit_prompt_lengths(ids, 4, "truncate_left")
    assert kept == [0, 1, 2, 3] and trimmed[1] == [2] * 4 and trimmed[0] == [1] * 3


def test_train_drops_over_long_prompts_when_asked(model, tokenizer):
    from tether import PPOConfig, PPOTrainer

    seen = []
    config = PPOConfig(batch_size=2, mini_batch_size=2, ppo_epochs=1, max_new_tokens=3, max_prompt_length=30,
                       prompt_overflow="drop")
    trainer = PPOTrainer(config, model, tokenizer, reward_fn=lambda p, c: seen.extend(p) or [0.0] * len(c))
    trainer.train(["short", "x" * 200, "tiny", "y" * 300], progress=False)
    assert sorted(seen) == ["short", "tiny"]
    config.prompt_overflow = "error"
    with pytest.raises(DataError, match="prompt 1 has"):
        PPOTrainer(config, model, tokenizer).step(["short", "x" * 200], ["a", "b"], [0.0, 1.0])


def test_csv_parquet_and_a_formatter(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    csv = tmp_path / "p.csv"
    csv.write_text("prompt,topic\nhello there,greet\nwhat is up,greet\n")
    assert load_prompts(csv) == ["hello there", "what is up"]
    pq.write_table(pa.table({"article": ["cats sleep", "dogs bark"]}), tmp_path / "p.parquet")
    assert load_prompts(tmp_path / "p.parquet", formatter=lambda r: f"Summarise: {r['article']}") == [
        "Summarise: cats sleep", "Summarise: dogs bark"]
    with pytest.raises(DataError, match=r"p.parquet:row 1: no 'prompt'"):
        load_prompts(tmp_path / "p.parquet")
    with pytest.raises(DataError, match=r"p.csv:row 2: the prompt formatter raised KeyError"):
        load_prompts(csv, formatter=lambda r: r["missing"] if r["prompt"] == "what is up" else r["prompt"])
    (tmp_path / "bad.csv").write_text('prompt,x\n"unclosed,1\n')
    with pytest.raises(DataError, match="bad.csv: cannot read csv"):
        load_prompts(tmp_path / "bad.csv")
