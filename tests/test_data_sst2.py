"""SST-2 read in place from ../shared/data/sst2 (skipped where it is absent)."""

from __future__ import annotations

from collections import Counter

import pytest

from tunegguf.data import DataConfig, inspect_files, prepare

pytestmark = pytest.mark.sst2

LABEL_MAP = {"0": "negative", "1": "positive"}


def test_prepare_sst2_small(sst2_dir, tmp_path):
    config = DataConfig(train=str(sst2_dir / "train.tsv"), validation=str(sst2_dir / "validation.tsv"),
                        text_columns=["sentence"], label_map=LABEL_MAP, max_train_examples=300,
                        max_eval_examples=100)
    result = prepare(config, tmp_path / "data")
    assert result.labels == ["negative", "positive"]
    train, validation, test = (result.load(s) for s in ("train", "validation", "test"))
    assert [len(train), len(validation), len(test)] == [300, 100, 100]
    # Stratified: SST-2 train is 44.2% negative, the dev file 49.1%.
    assert Counter(e.label for e in train)["negative"] == pytest.approx(0.442 * 300, abs=2)
    assert Counter(e.label for e in test)["negative"] == pytest.approx(49, abs=1)
    assert all(e.id.startswith("test-") for e in test)  # the dev file is the reported split
    assert all(e.id.startswith("train-") for e in validation)
    manifest = result.manifest
    assert manifest["sources"]["train"]["rows"] == 67349 and manifest["sources"]["test"]["rows"] == 872
    assert manifest["dropped"]["train"]["duplicate"] > 0
    assert not {e.text for e in train} & {e.text for e in test}


def test_inspect_sst2_train(sst2_dir):
    report = inspect_files([str(sst2_dir / "train.tsv")], DataConfig(text_columns=["sentence"], label_map=LABEL_MAP))
    info = report["files"][0]
    assert info["rows"] == 67349 and info["kept"] == 67349
    assert info["labels"]["negative"]["count"] == 29780 and info["labels"]["positive"]["count"] == 37569
    assert 0 < info["text_chars"]["p5"] < info["text_chars"]["p50"] < info["text_chars"]["p95"] <= info["text_chars"]["max"]
    assert info["duplicates"] > 0
