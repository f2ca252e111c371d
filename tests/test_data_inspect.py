"""`inspect_files` and the `data` click group (run through CliRunner on data_group itself)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from tunegguf.data import DataConfig, inspect_files
from tunegguf.cli.data import data_group, parse_label_map
from tunegguf.errors import TuneGGUFError


@pytest.fixture
def two_files(tmp_path):
    train = tmp_path / "train.tsv"
    train.write_text("label\tsentence\n" + "".join(f"{i % 2}\tsentence number {i}\n" for i in range(40))
                     + "0\tsentence number 0\n1\tsentence number 2\n", encoding="utf-8")
    dev = tmp_path / "dev.tsv"
    dev.write_text("label\tsentence\n0\tsentence number 0\n1\tsentence number 1\n0\tfresh one\n1\tfresh two\n",
                   encoding="utf-8")
    return train, dev


def test_inspect_report_shape(two_files):
    train, dev = two_files
    config = DataConfig(text_columns=["sentence"], label_map={"0": "neg", "1": "pos"})
    report = inspect_files([str(train), str(dev)], config)
    assert set(report) == {"files", "leakage", "warnings"}
    first = report["files"][0]
    assert first["name"] == "train.tsv" and first["rows"] == 42 and first["kept"] == 42
    assert first["labels"] == {"neg": {"count": 21, "share": 0.5}, "pos": {"count": 21, "share": 0.5}}
    assert first["duplicates"] == 2 and first["duplicate_label_conflicts"] == 1
    assert set(first["text_chars"]) == {"p5", "p50", "p95", "max"}
    assert first["text_chars"]["max"] == len("sentence number 39")
    assert report["leakage"] == [{"a": "train.tsv", "b": "dev.tsv", "rows_of_b_in_a": 2}]
    assert any("leakage: 2 rows of dev.tsv" in w for w in report["warnings"])
    assert any("2 duplicate texts, 1 with a different label" in w for w in report["warnings"])


def test_cli_inspect_json(two_files):
    train, dev = two_files
    result = CliRunner().invoke(data_group, ["inspect", str(train), str(dev), "--text-column", "sentence",
                                             "--label-map", "0=negative,1=positive", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)  # JSON only, nothing else on stdout
    assert list(report["files"][1]["labels"]) == ["negative", "positive"]


def test_cli_inspect_table_and_config_file(two_files, tmp_path):
    train, _ = two_files
    config = tmp_path / "run.yaml"
    config.write_text("data:\n  text_columns: [sentence]\n  label_map: {0: negative, 1: positive}\n")
    result = CliRunner().invoke(data_group, ["inspect", str(train), "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "train.tsv" in result.output and "negative" in result.output and "50.0%" in result.output
    assert "duplicate texts" in result.output


def test_cli_errors_are_one_line_exit_2(two_files):
    train, _ = two_files
    result = CliRunner().invoke(data_group, ["inspect", str(train)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: train.tsv: no column 'text'; columns are label, sentence; set data.text_columns "
        "(inspect: --text-column)"
    ]
    bad_map = CliRunner().invoke(data_group, ["inspect", str(train), "--text-column", "sentence", "--label-map", "0:neg"])
    assert bad_map.exit_code == 2 and "--label-map: '0:neg' is not RAW=CLASS" in bad_map.output


def test_cli_prepare_writes_and_reuses(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(f"run_dir: {tmp_path / 'run'}\ndata:\n  train: demo\n")
    runner = CliRunner()
    first = runner.invoke(data_group, ["prepare", "--config", str(config), "--set", "data.max_eval_examples=20"])
    assert first.exit_code == 0, first.output
    assert "data written" in first.output and "test: 20 rows (negative 10, positive 10)" in first.output
    assert (tmp_path / "run" / "data" / "data_manifest.json").is_file()
    again = runner.invoke(data_group, ["prepare", "--config", str(config), "--set", "data.max_eval_examples=20"])
    assert "data reused" in again.output


def test_parse_label_map():
    assert parse_label_map("0=negative, 1 = positive") == {"0": "negative", "1": "positive"}
    with pytest.raises(TuneGGUFError):
        parse_label_map("0=negative,=positive")


def test_help_is_fast_to_import():
    result = CliRunner().invoke(data_group, ["--help"])
    assert result.exit_code == 0 and "inspect" in result.output and "prepare" in result.output
