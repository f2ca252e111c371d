"""Splits, balancing, caps, the frozen files and their manifest, and stage skipping."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from tunegguf.data import DataConfig, Example, load_split, prepare
from tunegguf.io import sha256_file


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def _imbalanced(tmp_path, pos=150, neg=50):
    rows = [{"text": f"pos {i}", "label": "pos"} for i in range(pos)]
    rows += [{"text": f"neg {i}", "label": "neg"} for i in range(neg)]
    rows.sort(key=lambda r: int(r["text"].split()[1]))  # interleave, as files usually are
    return _jsonl(tmp_path / "imb.jsonl", rows)


def _counts(result, split):
    return Counter(e.label for e in result.load(split))


def test_carved_splits_are_stratified_and_disjoint(tmp_path):
    result = prepare(DataConfig(train=_imbalanced(tmp_path)), tmp_path / "out")
    assert _counts(result, "test") == {"pos": 15, "neg": 5}
    assert _counts(result, "validation") == {"pos": 15, "neg": 5}
    assert _counts(result, "train") == {"pos": 120, "neg": 40}
    ids = [e.id for s in ("train", "validation", "test") for e in result.load(s)]
    assert len(ids) == len(set(ids)) == 200
    assert all(i.startswith("train-") for i in ids)  # ids name the source row
    assert result.manifest["splits"]["test"]["source"] == "carved from train"


def test_same_seed_same_files_other_seed_other_split(tmp_path):
    config = DataConfig(train=_imbalanced(tmp_path))
    a = prepare(config, tmp_path / "a")
    b = prepare(config, tmp_path / "b")
    for split in ("train", "validation", "test"):
        assert sha256_file(a.path(split)) == sha256_file(b.path(split)) == a.manifest["splits"][split]["sha256"]
    c = prepare(DataConfig(train=config.train, seed=7), tmp_path / "c")
    assert {e.id for e in c.load("test")} != {e.id for e in a.load("test")}


def test_validation_file_becomes_test_and_validation_is_carved(tmp_path):
    train = _imbalanced(tmp_path)
    val = _jsonl(tmp_path / "val.jsonl", [{"text": f"dev {i}", "label": ["pos", "neg"][i % 2]} for i in range(30)])
    result = prepare(DataConfig(train=train, validation=val), tmp_path / "out")
    assert {e.text for e in result.load("test")} == {f"dev {i}" for i in range(30)}
    assert [e.id for e in result.load("test")][:2] == ["test-0", "test-1"]
    assert len(result.load("validation")) == 20
    assert all(e.id.startswith("train-") for e in result.load("validation"))
    assert result.manifest["splits"]["test"]["source"] == "validation"
    assert result.manifest["splits"]["validation"]["source"] == "carved from train"
    assert any("validation file scores the report" in w for w in result.warnings)


def test_undersample_oversample_and_class_weights(tmp_path):
    train = _imbalanced(tmp_path)
    under = prepare(DataConfig(train=train, balance="undersample"), tmp_path / "u")
    assert _counts(under, "train") == {"pos": 40, "neg": 40}
    assert under.manifest["dropped"]["train"]["undersampled"] == 80
    assert _counts(under, "test") == {"pos": 15, "neg": 5}  # eval splits are never resampled

    over = prepare(DataConfig(train=train, balance="oversample"), tmp_path / "o")
    rows = over.load("train")
    assert Counter(e.label for e in rows) == {"pos": 120, "neg": 120}
    assert len({e.id for e in rows}) == 240  # copies get their own ids
    assert sum("~" in e.id for e in rows) == 80

    weighted = prepare(DataConfig(train=train, balance="class_weights"), tmp_path / "w")
    assert _counts(weighted, "train") == {"pos": 120, "neg": 40}
    assert weighted.class_weights == pytest.approx({"neg": 2.0, "pos": 160 / 240})
    assert weighted.manifest["class_weights"] == weighted.class_weights
    assert under.class_weights is None


def test_caps_per_class_train_and_eval(tmp_path):
    train = _imbalanced(tmp_path)
    capped = prepare(DataConfig(train=train, max_per_class=30), tmp_path / "c")
    assert _counts(capped, "train") == {"pos": 30, "neg": 30}
    small = prepare(DataConfig(train=train, max_train_examples=40, max_eval_examples=8), tmp_path / "s")
    assert _counts(small, "train") == {"pos": 30, "neg": 10}  # stratified keeps the 3:1 ratio
    assert _counts(small, "test") == {"pos": 6, "neg": 2}
    assert len(small.load("validation")) == 8
    assert small.manifest["dropped"]["train"]["max_train_examples"] == 120


def test_imbalance_and_tiny_class_warnings(tmp_path):
    result = prepare(DataConfig(train=_imbalanced(tmp_path, pos=300, neg=12)), tmp_path / "out")
    warnings = " | ".join(result.warnings)
    assert "train: majority class 'pos'" in warnings
    assert "test: class 'neg' is tiny" in warnings
    quiet = prepare(DataConfig(train=_imbalanced(tmp_path, pos=100, neg=100)), tmp_path / "q")
    assert not [w for w in quiet.warnings if "majority" in w or "tiny" in w]


def test_manifest_records_sources_and_is_reused(tmp_path):
    train = _imbalanced(tmp_path)
    config = DataConfig(train=train, max_train_examples=50)
    first = prepare(config, tmp_path / "out")
    manifest = json.loads((tmp_path / "out" / "data_manifest.json").read_text())
    assert manifest["sources"]["train"]["sha256"] == sha256_file(train)
    assert manifest["splits"]["train"]["rows"] == 50 and manifest["labels"] == ["neg", "pos"]
    assert not first.reused
    mtime = first.train.stat().st_mtime_ns

    again = prepare(config, tmp_path / "out")
    assert again.reused and again.train.stat().st_mtime_ns == mtime
    assert again.manifest == first.manifest

    changed = prepare(DataConfig(train=train, max_train_examples=60), tmp_path / "out")
    assert not changed.reused and len(changed.load("train")) == 60

    with open(train, "a", encoding="utf-8") as f:  # the source file changed: redo
        f.write(json.dumps({"text": "new row", "label": "neg"}) + "\n")
    assert not prepare(DataConfig(train=train, max_train_examples=60), tmp_path / "out").reused

    result = prepare(DataConfig(train=train, max_train_examples=60), tmp_path / "out")
    assert result.reused
    result.test.write_text("tampered\n")  # a frozen file edited by hand: redo
    assert not prepare(DataConfig(train=train, max_train_examples=60), tmp_path / "out").reused


def test_frozen_files_round_trip_as_examples(tmp_path):
    result = prepare(DataConfig(train=_imbalanced(tmp_path)), tmp_path / "out")
    rows = load_split(result.test)
    assert rows == result.load("test") and isinstance(rows[0], Example)
    first_line = json.loads(result.test.read_text().splitlines()[0])
    assert first_line == rows[0].to_dict() and set(first_line) == {"id", "text", "label"}


def test_instruction_task(tmp_path):
    rows = [{"instruction": f"Add {i} and 1", "input": "" if i % 2 else "numbers", "output": str(i + 1)}
            for i in range(40)]
    rows.append({"instruction": "Add 0 and 1", "input": "numbers", "output": "1"})  # duplicate prompt
    result = prepare(DataConfig(train=_jsonl(tmp_path / "i.jsonl", rows), task="instruction"), tmp_path / "out")
    assert result.labels == [] and result.task == "instruction"
    train = result.load("train")
    assert len(train) + len(result.load("validation")) + len(result.load("test")) == 40
    assert all(e.instruction and e.output and e.text is None for e in train)
    assert any(e.input == "numbers" for e in train) and any(e.input is None for e in train)
    assert result.manifest["dropped"]["train"]["duplicate"] == 1


def test_demo_source(tmp_path):
    result = prepare(DataConfig(train="demo"), tmp_path / "out")
    assert [len(result.load(s)) for s in ("train", "validation", "test")] == [640, 80, 80]
    assert _counts(result, "test") == {"negative": 40, "positive": 40}
    assert result.manifest["sources"]["train"]["kind"] == "demo"
    from tunegguf.data.demo import demo_sha256

    assert result.manifest["sources"]["train"]["sha256"] == demo_sha256()
    assert prepare(DataConfig(train="demo"), tmp_path / "out").reused
