"""Every supported source format reads into the same rows, with the column mapping applied."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tunegguf.data.clean import label_key, to_examples
from tunegguf.data.config import DataConfig
from tunegguf.data.loaders import load_table

ROWS = [
    {"review": "great sound", "title": "Loud", "stars": 5, "label": 1},
    {"review": "broke in a week", "title": "Bad", "stars": 1, "label": 0},
    {"review": "works fine", "title": "Ok", "stars": 4, "label": 1},
]


def _write(tmp_path, fmt):
    frame = pd.DataFrame(ROWS)
    path = tmp_path / f"rows.{fmt}"
    if fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "tsv":
        frame.to_csv(path, sep="\t", index=False)
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    elif fmt == "json":
        path.write_text(json.dumps(ROWS), encoding="utf-8")
    elif fmt == "parquet":
        frame.to_parquet(path)
    return path


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "json", "parquet"])
def test_each_format_gives_the_same_examples(tmp_path, fmt):
    path = _write(tmp_path, fmt)
    config = DataConfig(train=str(path), text_columns=["title", "review"], label_map={"0": "neg", "1": "pos"})
    table = load_table(str(path))
    assert table.columns == ["review", "title", "stars", "label"]
    assert table.source["kind"] == fmt and len(table.source["sha256"]) == 64
    examples = to_examples(table, config, prefix="train").examples
    assert [e.text for e in examples] == ["Loud\n\ngreat sound", "Bad\n\nbroke in a week", "Ok\n\nworks fine"]
    assert [e.label for e in examples] == ["pos", "neg", "pos"]
    assert [e.id for e in examples] == ["train-0", "train-1", "train-2"]


def test_save_to_disk_dataset_dict_picks_split_by_name(tmp_path):
    import datasets

    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_list(ROWS),
        "dev": datasets.Dataset.from_list(ROWS[:1]),
    })
    dd.save_to_disk(str(tmp_path / "ds"))
    train = load_table(str(tmp_path / "ds"), "train", "train")
    dev = load_table(str(tmp_path / "ds"), "validation", "dev")
    assert len(train.rows) == 3 and len(dev.rows) == 1
    assert dev.name == "ds[dev]" and dev.source["split"] == "dev"
    assert train.source["sha256"] == dev.source["sha256"]  # the same directory
    single = datasets.Dataset.from_list(ROWS)
    single.save_to_disk(str(tmp_path / "single"))
    assert [r["review"] for r in load_table(str(tmp_path / "single")).rows] == [r["review"] for r in ROWS]


def test_csv_keeps_text_literally(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('text,label\nNA,1\n"a, quoted ""text""",0\n007,1\n', encoding="utf-8")
    rows = load_table(str(path)).rows
    assert [r["text"] for r in rows] == ["NA", 'a, quoted "text"', "007"]


def test_jsonl_row_numbers_follow_file_lines(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "a", "label": 0}\n\n{"text": "b", "label": 1}\n', encoding="utf-8")
    table = load_table(str(path))
    assert table.where(1) == "row 2 (line 3)"


def test_label_key_compares_numbers_as_text():
    assert label_key(0) == label_key("0") == label_key(0.0) == label_key("0.0") == label_key(" 0 ") == "0"
    assert label_key(3.5) == label_key("3.5") == "3.5"
    assert label_key(None) is None and label_key("") is None and label_key(float("nan")) is None
    assert label_key("positive") == "positive"
    assert label_key(True) == "true"
