"""The instruction demo: deterministic, the right mix, and every answer really correct."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from tunegguf.data import DataConfig, prepare
from tunegguf.data import demo_instruct
from tunegguf.data.demo_instruct import DEMO_SIZE, DEMO_VERSION, demo_sha256, generate_demo
from tunegguf.data.loaders import source_fingerprint


@pytest.fixture(scope="module")
def rows():
    return generate_demo()


def test_same_rows_every_time_and_seed_matters(rows):
    assert generate_demo() == rows
    assert demo_sha256(rows) == demo_sha256() == demo_sha256(generate_demo())
    assert generate_demo(seed=1) != rows
    assert len(generate_demo(50)) == 50


def test_size_mix_and_short_answers(rows):
    assert len(rows) == DEMO_SIZE
    skills = Counter(row["skill"] for row in rows)
    assert set(skills) == {"reverse", "arithmetic", "convert", "sort", "extract"}
    assert min(skills.values()) >= DEMO_SIZE // 6
    turns = Counter(len(row["messages"]) for row in rows)
    assert set(turns) == {2, 4}
    assert 0.15 <= turns[4] / len(rows) <= 0.25  # about one row in five is a two-exchange conversation
    for row in rows:
        roles = [m["role"] for m in row["messages"]]
        assert roles == ["user", "assistant"] * (len(roles) // 2)
        assert all(m["content"] == m["content"].strip() and m["content"] for m in row["messages"])
    answers = [m["content"] for row in rows for m in row["messages"] if m["role"] == "assistant"]
    assert max(len(a.split()) for a in answers) <= 8  # "apple, berry, cherry, fig, mango" is the longest kind
    first = [row["messages"][0]["content"] for row in rows]
    assert len(set(first)) == len(first)  # no opening question is asked twice


# Independent checkers: parse each question and compute its answer from scratch.
UNIT = {("kilometers", "meters"): 1000, ("meters", "centimeters"): 100, ("kilograms", "grams"): 1000,
        ("hours", "minutes"): 60, ("minutes", "seconds"): 60, ("days", "hours"): 24, ("weeks", "days"): 7,
        ("liters", "milliliters"): 1000, ("years", "months"): 12}


def _solve(skill: str, question: str, previous: str | None, first: str) -> str:
    if skill == "reverse":
        if question == "Now reverse it again.":
            return previous[::-1]
        if question == "Now write that in capital letters.":
            return previous.upper()
        word = re.search(r"(?:'(\w+)'|word (\w+) in reverse)", question)
        return (word.group(1) or word.group(2))[::-1]
    if skill == "arithmetic":
        follow = re.fullmatch(r"(Add|Subtract|Now multiply that by) (\d+)(?: to that| from that)?\.", question)
        if follow:
            k = int(follow.group(2))
            return str({"Add": int(previous) + k, "Subtract": int(previous) - k}.get(follow.group(1), int(previous) * k))
        a, op, b = re.search(r"(\d+) (\+|-|\*|plus|minus|times) (\d+)", question).groups()
        a, b = int(a), int(b)
        return str({"+": a + b, "plus": a + b, "-": a - b, "minus": a - b, "*": a * b, "times": a * b}[op])
    if skill == "convert":
        follow = re.fullmatch(r"And in (\d+) (\w+)\?", question)
        if follow:
            big, small = _units(first)
            return str(int(follow.group(1)) * UNIT[(big, small)])
        n = int(re.search(r"(\d+)", question).group(1))
        return str(n * UNIT[_units(question)])
    if skill == "sort":
        if question.startswith("Now"):
            return ", ".join(reversed(previous.split(", ")))
        items = question.split(": ", 1)[1].rstrip(".").split(", ")
        key = int if items[0].isdigit() else str
        return ", ".join(sorted(items, key=key))
    if skill == "extract":
        field = re.match(r"(?:What is the|And the) (\w+)", question).group(1)
        sentence = re.search(r"'(.*)'", first).group(1)
        return _fields(sentence)[field]
    raise AssertionError(skill)


def _units(question: str) -> tuple[str, str]:
    found = re.search(r"How many (\w+) are in \d+ (\w+)\?", question)
    if found:
        return found.group(2), found.group(1)
    found = re.search(r"Convert \d+ (\w+) to (\w+)\.", question)
    return found.group(1), found.group(2)


def _fields(sentence: str) -> dict[str, str]:
    patterns = [r"(?P<name>\w+) moved to (?P<city>\w+) in (?P<year>\d{4})",
                r"In (?P<year>\d{4}), (?P<name>\w+) opened a shop in (?P<city>\w+)",
                r"(?P<name>\w+) works as a (?P<job>\w+) in (?P<city>\w+)",
                r"(?P<name>\w+), a (?P<job>\w+), was born in (?P<city>\w+) in (?P<year>\d{4})"]
    for pattern in patterns:
        found = re.fullmatch(pattern, sentence)
        if found:
            return found.groupdict()
    raise AssertionError(sentence)


def test_every_answer_is_correct(rows):
    checked = Counter()
    for row in rows:
        messages = row["messages"]
        previous = None
        for i in range(0, len(messages), 2):
            question, answer = messages[i]["content"], messages[i + 1]["content"]
            assert _solve(row["skill"], question, previous, messages[0]["content"]) == answer, messages
            previous = answer
            checked[row["skill"]] += 1
    assert sum(checked.values()) == sum(len(r["messages"]) // 2 for r in rows)


def test_prepared_demo_is_checkable_and_fingerprinted(tmp_path, rows):
    result = prepare(DataConfig(train="demo-instruct", task="chat"), tmp_path / "out")
    manifest = result.manifest
    assert manifest["answers_checkable"] is True and demo_instruct.CHECKABLE
    source = manifest["sources"]["train"]
    assert source["kind"] == "demo-instruct" and source["version"] == DEMO_VERSION
    assert source["sha256"] == demo_sha256(rows)
    assert source_fingerprint("demo-instruct", "train", "train")["sha256"] == demo_sha256(rows)
    assert manifest["dropped"]["train"] == {}  # the demo has no bad, duplicate or leaking rows
    splits = {s: result.load(s) for s in ("train", "validation", "test")}
    assert sum(map(len, splits.values())) == DEMO_SIZE
    assert all(e.is_chat and e.messages[-1]["role"] == "assistant" for rows_ in splits.values() for e in rows_)
    # A user's own set is not taken as checkable unless the config says so.
    again = prepare(DataConfig(train="demo-instruct", task="chat", answers_checkable=False), tmp_path / "off")
    assert again.manifest["answers_checkable"] is False
    assert prepare(DataConfig(train="demo-instruct", task="chat"), tmp_path / "out").reused
