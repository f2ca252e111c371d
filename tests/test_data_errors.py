"""Each kind of bad input gives one TuneGGUFError line naming the file/column/row and the fix."""

from __future__ import annotations

import json

import pytest

from tunegguf.data import DataConfig, prepare
from tunegguf.errors import TuneGGUFError


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def _fails(config, tmp_path, *fragments):
    with pytest.raises(TuneGGUFError) as info:
        prepare(config, tmp_path / "out")
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_missing_file_suggests_a_near_name(tmp_path):
    (tmp_path / "reviews.csv").write_text("text,label\na,1\n")
    _fails(DataConfig(train=str(tmp_path / "review.csv")), tmp_path,
           "data.train: file not found", "review.csv", "did you mean 'reviews.csv'")


def test_unsupported_extension(tmp_path):
    (tmp_path / "data.xlsx").write_bytes(b"PK\x03\x04")
    _fails(DataConfig(train=str(tmp_path / "data.xlsx")), tmp_path, "data.xlsx", "unsupported file type '.xlsx'", ".csv")


def test_misspelled_column_suggests_closest(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("review_text,label\ngood,1\nbad,0\n")
    _fails(DataConfig(train=str(path), text_columns=["review_txt"]), tmp_path,
           "t.csv: no column 'review_txt'", "did you mean 'review_text'", "columns are review_text, label",
           "set data.text_columns")
    _fails(DataConfig(train=str(path), text_columns=["review_text"], label_column="lable"), tmp_path,
           "no column 'lable'", "did you mean 'label'", "data.label_column")


def test_empty_after_filtering_lists_the_reasons(tmp_path):
    path = _jsonl(tmp_path / "short.jsonl", [{"text": "hi", "label": 0}, {"text": "", "label": 1}])
    _fails(DataConfig(train=path, min_text_length=10), tmp_path,
           "short.jsonl: no rows left for train", "empty_text: 1", "too_short: 1", "data.min_text_length")


def test_label_outside_the_map_names_values_and_first_row(tmp_path):
    path = tmp_path / "l.csv"
    path.write_text("text,label\na,0\nb,1\nc,2\nd,2\ne,x\n")
    message = _fails(DataConfig(train=str(path), label_map={"0": "negative", "1": "positive"}), tmp_path,
                     "l.csv, column 'label'", "not in data.label_map", "'2' (first at row 3 (line 4))",
                     "'x' (first at row 5 (line 6))", "add them to data.label_map")
    assert "'2' x2" in message  # the values found, with counts


def test_class_outside_explicit_labels(tmp_path):
    path = _jsonl(tmp_path / "l.jsonl", [{"text": "a", "label": "pos"}, {"text": "b", "label": "neutral"}])
    _fails(DataConfig(train=path, labels=["pos", "neg"]), tmp_path,
           "classes not in data.labels", "'neutral' (first at row 2 (line 2))")


def test_non_utf8_names_byte_offset_and_line(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("text,label\ngood,1\ncaf\xe9 was bad,0\n".encode("latin-1"))
    _fails(DataConfig(train=str(path)), tmp_path, "latin.csv: not UTF-8 at byte 21 (line 3", "re-encode", "iconv")


def test_single_class_left_after_filtering(tmp_path):
    rows = [{"text": f"good {i}", "label": 5} for i in range(10)] + [{"text": "meh", "label": 3}]
    _fails(DataConfig(train=_jsonl(tmp_path / "s.jsonl", rows), star_ratings={"1-2": "negative", "4-5": "positive"}),
           tmp_path, "s.jsonl: only one class left after filtering ('positive', 10 rows)", "data.star_ratings")


def test_hub_name_offline_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _fails(DataConfig(train="someone/some-dataset"), tmp_path,
           "data.train: 'someone/some-dataset' is not a local file", "offline", "give a local file")


def test_non_numeric_star_rating(tmp_path):
    path = _jsonl(tmp_path / "r.jsonl", [{"text": "a", "label": 5}, {"text": "b", "label": "five"}])
    _fails(DataConfig(train=path, star_ratings={"4-5": "positive"}), tmp_path,
           "r.jsonl, column 'label', row 2 (line 2): rating 'five' is not a number")


def test_missing_split_in_saved_dataset(tmp_path):
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_list([{"text": "a", "label": 0}])}).save_to_disk(
        str(tmp_path / "ds"))
    _fails(DataConfig(train=str(tmp_path / "ds"), split_names={"train": "trian"}), tmp_path,
           "no split 'trian'", "did you mean 'train'", "data.split_names.train")


def test_bad_json_line(tmp_path):
    path = tmp_path / "b.jsonl"
    path.write_text('{"text": "a", "label": 0}\n{"text": oops}\n')
    _fails(DataConfig(train=str(path)), tmp_path, "b.jsonl: line 2 is not valid JSON")
