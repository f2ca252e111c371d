"""task: chat: both conversation shapes, every bad-row case (refused or counted), frozen round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunegguf.data import DataConfig, Example, LengthLimit, load_split, prepare
from tunegguf.data.chat import normalize
from tunegguf.errors import TuneGGUFError
from tunegguf.io import read_json


def _chat(i: int, answer: str | None = None) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": answer or f"answer {i}"}]


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def _good_rows(n: int = 30, column: str = "messages") -> list[dict]:
    return [{column: _chat(i)} for i in range(n)]


def _fails(call, *fragments) -> str:
    with pytest.raises(TuneGGUFError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


# ---- shapes -----------------------------------------------------------------------------


def test_openai_and_sharegpt_shapes_give_the_same_conversation():
    openai = [{"role": "system", "content": " Be brief. "}, {"role": "user", "content": "Hi"},
              {"role": "assistant", "content": "Hello"}]
    sharegpt = [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
                {"from": "gpt", "value": "Hello"}]
    # Some exports write OpenAI role names into ShareGPT's "from".
    mixed = [{"from": "system", "value": "Be brief."}, {"from": "user", "value": "Hi"},
             {"from": "assistant", "value": "Hello"}]
    expected = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"}]
    for cell in (openai, sharegpt, mixed, json.dumps(sharegpt)):
        conversation = normalize(cell, "f.jsonl, row 1")
        assert conversation.messages == expected
        assert conversation.drop is None and conversation.cut == 0


def test_auto_column_reads_conversations_and_parquet_cells(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    rows = [{"conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": f"a{i}"}]}
            for i in range(30)]
    path = tmp_path / "chat.parquet"
    pd.DataFrame(rows).to_parquet(path)  # read back, each cell is a numpy array of dicts
    result = prepare(DataConfig(train=str(path), task="chat"), tmp_path / "out")
    examples = [e for split in ("train", "validation", "test") for e in result.load(split)]
    assert len(examples) == 30
    assert all(e.is_chat and not e.is_classification for e in examples)
    by_question = {e.messages[0]["content"]: e.messages for e in examples}
    assert by_question["q7"] == [{"role": "user", "content": "q7"}, {"role": "assistant", "content": "a7"}]
    assert result.task == "chat" and result.labels == []
    assert result.manifest["answers_checkable"] is False


def test_messages_column_setting_and_missing_column(tmp_path):
    train = _write_jsonl(tmp_path / "c.jsonl", _good_rows(column="dialog"))
    result = prepare(DataConfig(train=train, task="chat", messages_column="dialog"), tmp_path / "out")
    assert result.manifest["splits"]["train"]["rows"] > 0
    _fails(lambda: prepare(DataConfig(train=train, task="chat"), tmp_path / "o2"),
           "c.jsonl: no conversation column", "columns are dialog", "set data.messages_column")
    _fails(lambda: prepare(DataConfig(train=train, task="chat", messages_column="dialogs"), tmp_path / "o3"),
           "no column 'dialogs'", "dialog", "data.messages_column")


def test_example_round_trips_through_the_frozen_split(tmp_path):
    example = Example(id="train-3", messages=[{"role": "user", "content": "2+2?"},
                                              {"role": "assistant", "content": "4"}])
    assert Example.from_dict(json.loads(json.dumps(example.to_dict()))) == example
    assert example.is_chat and example.last_assistant == 1
    rows = _good_rows() + [{"messages": [{"role": "system", "content": "S"}, *_chat(99),
                                         {"role": "user", "content": "more"}, {"role": "assistant", "content": "ok"}]}]
    result = prepare(DataConfig(train=_write_jsonl(tmp_path / "c.jsonl", rows), task="chat", test_fraction=0.2),
                     tmp_path / "out")
    loaded = [e for split in ("train", "validation", "test") for e in load_split(result.path(split))]
    long = next(e for e in loaded if len(e.messages) == 5)
    assert [m["role"] for m in long.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert long.messages[-1] == {"role": "assistant", "content": "ok"}
    assert sorted(int(e.id.split("-")[1]) for e in loaded) == list(range(31))


# ---- bad rows: refused ---------------------------------------------------------------------


@pytest.mark.parametrize(("cell", "fragments"), [
    ({"role": "user", "content": "hi"}, ["row 3 (line 3)", "not a list of messages"]),
    (7, ["row 3 (line 3)", "int, not a list"]),
    (None, ["row 3 (line 3)", "no conversation; fill it in or remove the row"]),
    ("[{\"role\": \"user\"", ["row 3 (line 3)", "not valid JSON", "list of"]),
    (["hello"], ["row 3 (line 3), message 1", "str, not a message object"]),
    ([{"content": "hi"}], ["message 1", "no 'role' (OpenAI) or 'from' (ShareGPT) key", "keys: content"]),
    ([{"role": "user", "content": "q"}, {"role": "assistant"}], ["message 2", "no 'content' key"]),
    ([{"from": "human"}], ["message 1", "has 'from' but no 'value' key"]),
    ([{"role": "user", "content": "q"}, {"role": "tool", "content": "x"}, {"role": "assistant", "content": "a"}],
     ["message 2", "unknown role 'tool'", "system, user, assistant", "remove the row"]),
    ([{"role": "user", "content": ["part"]}, {"role": "assistant", "content": "a"}],
     ["message 1", "content is list, not text"]),
])
def test_malformed_rows_stop_with_one_line_naming_file_row_and_fix(tmp_path, cell, fragments):
    rows = _good_rows(10)
    rows.insert(2, {"messages": cell})
    train = _write_jsonl(tmp_path / "bad.jsonl", rows)
    _fails(lambda: prepare(DataConfig(train=train, task="chat"), tmp_path / "out"),
           "bad.jsonl, column 'messages'", *fragments)


@pytest.mark.parametrize(("settings", "fragment"), [
    ({"balance": "oversample"}, "data.balance applies to task: classification only"),
    ({"too_long": "truncate"}, "data.too_long: truncate applies to task: classification only"),
    ({"messages_column": " "}, "data.messages_column: give a column name"),
])
def test_chat_settings_that_do_not_apply_are_refused(settings, fragment):
    from tunegguf.config.typed import from_dict

    _fails(lambda: from_dict(DataConfig, {"task": "chat", **settings}, "data"), fragment)


# ---- bad rows: counted drops ---------------------------------------------------------------


def test_content_problems_are_counted_drops_with_warnings(tmp_path):
    user, answer = {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}
    system = {"role": "system", "content": "s"}
    bad = [
        [{"role": "user", "content": "only a question"}],                       # no assistant turn
        [{"role": "system", "content": "s"}, {"role": "user", "content": "no answer"}],
        [{"role": "user", "content": "   "}, answer],                            # empty content
        [{"role": "user", "content": "q-empty"}, {"role": "assistant", "content": None}],
        [system, system, {"role": "user", "content": "q-two"}, answer],          # two system messages
        [{"role": "user", "content": "q-late"}, system, answer],                 # system not first
    ]
    trailing = [user | {"content": "q-trailing"}, answer, {"role": "user", "content": "thanks"},
                {"role": "user", "content": ""}]
    rows = _good_rows(30) + [{"messages": m} for m in bad] + [{"messages": trailing}]
    result = prepare(DataConfig(train=_write_jsonl(tmp_path / "c.jsonl", rows), task="chat"), tmp_path / "out")
    dropped = result.manifest["dropped"]["train"]
    assert dropped == {"empty_content": 2, "no_assistant_turn": 2, "system_not_first": 1, "two_system_messages": 1}
    assert result.manifest["truncated"] == {"train": {"trailing_turns": 1}}
    warnings = "\n".join(result.warnings)
    for fragment in ("dropped 2 conversations with no assistant turn", "dropped 2 conversations with a message "
                     "with empty content", "dropped 1 conversations with more than one system message",
                     "dropped 1 conversations with a system message after the first turn",
                     "cut the turns after the last assistant turn in 1 conversations"):
        assert fragment in warnings, warnings
    kept = [e for split in ("train", "validation", "test") for e in result.load(split)]
    assert len(kept) == 31
    cut = next(e for e in kept if e.messages[0]["content"] == "q-trailing")
    assert cut.messages == [{"role": "user", "content": "q-trailing"}, answer]


def test_length_caps_apply_to_the_whole_conversation(tmp_path):
    # Each message is short; together they are over the cap.
    long = [m for i in range(6) for m in _chat(100 + i, "x" * 30)]
    rows = _good_rows(30) + [{"messages": long}]
    train = _write_jsonl(tmp_path / "c.jsonl", rows)
    result = prepare(DataConfig(train=train, task="chat", max_text_length=150), tmp_path / "out")
    assert result.manifest["dropped"]["train"] == {"too_long": 1}
    assert any("dropped 1 rows over data.max_text_length=150 characters" in w for w in result.warnings)
    _fails(lambda: prepare(DataConfig(train=train, task="chat", max_text_length=150, too_long="error"),
                           tmp_path / "e"), "c.jsonl, row 31 (line 31)", "over data.max_text_length=150",
           "data.too_long: drop")
    # Tokens: the caller's measure sees the chat Example; here one "token" per message.
    seen = []

    def measure(example: Example) -> int:
        seen.append(example)
        return len(example.messages)

    limited = prepare(DataConfig(train=train, task="chat"), tmp_path / "tok",
                      length_limit=LengthLimit(measure=measure, max_seq_length=4, identity="messages"))
    assert limited.manifest["dropped"]["train"] == {"too_long_tokens": 1}
    assert seen and all(e.is_chat for e in seen)


def test_dedupe_and_leakage_key_is_the_conversation_before_the_last_answer(tmp_path):
    rows = _good_rows(30)
    rows.append({"messages": _chat(3, "another answer")})  # same prompt as row 4, another answer
    train = _write_jsonl(tmp_path / "train.jsonl", rows)
    test = _write_jsonl(tmp_path / "test.jsonl", [{"messages": _chat(i, "different")} for i in (5, 6, 200, 201)])
    result = prepare(DataConfig(train=train, test=test, task="chat"), tmp_path / "out")
    assert result.manifest["dropped"]["train"] == {"duplicate": 1, "leakage": 2}
    assert any("1 of them with a different label" in w for w in result.warnings)
    trained = {e.messages[0]["content"] for e in result.load("train") + result.load("validation")}
    assert "question 5" not in trained and "question 6" not in trained and "question 7" in trained


def test_demo_sets_need_their_task(tmp_path):
    _fails(lambda: prepare(DataConfig(train="demo", task="chat"), tmp_path / "a"),
           "data.train: the demo set is for task: classification, not chat", "demo-instruct")
    _fails(lambda: prepare(DataConfig(train="demo-instruct"), tmp_path / "b"),
           "the demo-instruct set is for task: chat", "data.task: chat")


def test_cli_data_prepare_on_a_chat_file(tmp_path):
    from click.testing import CliRunner

    from tunegguf.cli.data import data_group

    train = _write_jsonl(tmp_path / "chat.jsonl", _good_rows(40, column="conversations"))
    config = tmp_path / "run.yaml"
    config.write_text(f"run_dir: {tmp_path / 'run'}\ndata:\n  train: {train}\n  task: chat\n", encoding="utf-8")
    result = CliRunner().invoke(data_group, ["prepare", "--config", str(config)])
    assert result.exit_code == 0, result.output
    out = tmp_path / "run" / "data"
    assert f"data written: {out}" in result.output
    manifest = read_json(out / "data_manifest.json")
    assert manifest["task"] == "chat" and manifest["answers_checkable"] is False
    assert sum(manifest["splits"][s]["rows"] for s in ("train", "validation", "test")) == 40
    rows = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert all(set(row) == {"id", "messages"} for row in rows)
    again = CliRunner().invoke(data_group, ["prepare", "--config", str(config), "--set", "data.answers_checkable=true"])
    assert again.exit_code == 0, again.output
    assert read_json(out / "data_manifest.json")["answers_checkable"] is True


def test_inspect_reads_chat_files(tmp_path):
    from tunegguf.data import inspect_files

    rows = _good_rows(12) + [{"messages": _chat(3)}, {"messages": [{"role": "user", "content": "q"}]}]
    report = inspect_files([_write_jsonl(tmp_path / "c.jsonl", rows)], DataConfig(task="chat"))
    info = report["files"][0]
    assert info["rows"] == 14 and info["kept"] == 13 and info["duplicates"] == 1
    assert info["dropped"] == {"no_assistant_turn": 1} and info["labels"] == {}
    # Characters of all the content: "question 0" + "answer 0" is the shortest conversation.
    assert info["text_chars"]["max"] == len("question 11") + len("answer 11")
