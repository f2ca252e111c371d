"""Label mapping, star ratings, filters, dedupe and leakage removal."""

from __future__ import annotations

import json

import pytest

from tunegguf.data import DataConfig, prepare
from tunegguf.data.clean import to_examples
from tunegguf.data.loaders import load_table


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def _balanced(n, prefix="text", start=0):
    """n rows per class with distinct texts."""
    return [{"text": f"{prefix} {i}", "label": i % 2} for i in range(start, start + 2 * n)]


def test_label_map_matches_numbers_as_text(tmp_path):
    path = _jsonl(tmp_path / "a.jsonl", [
        {"text": "a", "label": 0}, {"text": "b", "label": "1"}, {"text": "c", "label": 1.0}, {"text": "d", "label": "0.0"},
    ])
    config = DataConfig(label_map={"0": "negative", "1": "positive"})
    examples = to_examples(load_table(path), config, "train").examples
    assert [e.label for e in examples] == ["negative", "positive", "positive", "negative"]


def test_star_ratings_drop_the_middle_and_count_it(tmp_path):
    rows = [{"text": f"r{i}", "label": stars} for i, stars in enumerate([1, 2, 3, 4, 5, 3.0, "5"])]
    config = DataConfig(star_ratings={"1-2": "negative", "4-5": "positive"})
    cleaned = to_examples(load_table(_jsonl(tmp_path / "s.jsonl", rows)), config, "train")
    assert [e.label for e in cleaned.examples] == ["negative", "negative", "positive", "positive", "positive"]
    assert cleaned.dropped["rating_outside_ranges"] == 2


def test_filters_drop_empty_short_and_unlabeled_rows(tmp_path):
    rows = [{"text": "long enough text", "label": 1}, {"text": "  ", "label": 0}, {"text": "hi", "label": 0},
            {"text": "no label here", "label": None}, {"text": "another long one", "label": 0}]
    config = DataConfig(min_text_length=5)
    cleaned = to_examples(load_table(_jsonl(tmp_path / "f.jsonl", rows)), config, "train")
    assert [e.text for e in cleaned.examples] == ["long enough text", "another long one"]
    assert dict(cleaned.dropped) == {"empty_text": 1, "too_short": 1, "missing_label": 1}


def test_labels_default_sorted_or_explicit_order(tmp_path):
    path = _jsonl(tmp_path / "l.jsonl", _balanced(20))
    mapped = DataConfig(train=path, label_map={"0": "zebra", "1": "apple"})
    assert prepare(mapped, tmp_path / "a").labels == ["apple", "zebra"]
    ordered = DataConfig(train=path, label_map={"0": "zebra", "1": "apple"}, labels=["zebra", "apple"])
    assert prepare(ordered, tmp_path / "b").labels == ["zebra", "apple"]


def test_dedupe_keeps_first_and_counts_conflicts(tmp_path):
    rows = _balanced(20) + [{"text": "text 0", "label": 0}, {"text": "text 1", "label": 0}]
    result = prepare(DataConfig(train=_jsonl(tmp_path / "d.jsonl", rows)), tmp_path / "out")
    assert result.manifest["dropped"]["train"]["duplicate"] == 2
    texts = [e.text for split in ("train", "validation", "test") for e in result.load(split)]
    assert len(texts) == 40 == len(set(texts))
    kept = {e.text: e.label for split in ("train", "validation", "test") for e in result.load(split)}
    assert kept["text 1"] == "1"  # the first row's label wins over the later conflicting one
    assert any("2 duplicate texts" in w and "1 of them with a different label" in w for w in result.warnings)


def test_leakage_rows_are_dropped_from_train_and_validation(tmp_path):
    train = _jsonl(tmp_path / "train.jsonl", _balanced(30))
    val = _jsonl(tmp_path / "val.jsonl", _balanced(5, start=0) + _balanced(5, prefix="val"))   # 10 shared
    test = _jsonl(tmp_path / "test.jsonl", _balanced(3, start=4) + _balanced(5, prefix="test"))  # 6 shared
    result = prepare(DataConfig(train=train, validation=val, test=test), tmp_path / "out")
    splits = {s: {e.text for e in result.load(s)} for s in ("train", "validation", "test")}
    assert not splits["train"] & splits["test"]
    assert not splits["train"] & splits["validation"]
    assert not splits["validation"] & splits["test"]
    assert result.manifest["dropped"]["test"] == {}
    assert result.manifest["dropped"]["validation"]["leakage"] == 6  # "text 4".."text 9" are in test
    assert result.manifest["dropped"]["train"]["leakage"] == 6 + 4
    assert sum("leakage" in w for w in result.warnings) == 3


def test_leakage_is_only_warned_when_dedupe_is_off(tmp_path):
    train = _jsonl(tmp_path / "train.jsonl", _balanced(30))
    test = _jsonl(tmp_path / "test.jsonl", _balanced(5, start=0))
    result = prepare(DataConfig(train=train, test=test, dedupe=False), tmp_path / "out")
    train_texts = {e.text for e in result.load("train")} | {e.text for e in result.load("validation")}
    assert len(train_texts & {e.text for e in result.load("test")}) == 10
    assert any("leakage: 10 train rows" in w and "kept" in w for w in result.warnings)


@pytest.mark.parametrize("bad", [{"validation_fraction": 0.0}, {"test_fraction": 1.5},
                                 {"validation_fraction": 0.5, "test_fraction": 0.45},
                                 {"star_ratings": {"five": "positive"}}, {"max_train_examples": 0},
                                 {"labels": ["a", "a"]},
                                 {"label_map": {"0": "n"}, "star_ratings": {"1-2": "n"}}])
def test_config_checks_name_the_setting(bad):
    from tunegguf.config.typed import from_dict
    from tunegguf.errors import TuneGGUFError

    with pytest.raises(TuneGGUFError, match=r"data\.\w+"):
        from_dict(DataConfig, bad)
