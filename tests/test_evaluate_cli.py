"""`tunegguf evaluate` through click's CliRunner: flags, file discovery, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tunegguf.cli.evaluate import evaluate_command, parse_gguf_options
from tunegguf.evaluate.manifest import gguf_dir_files, quant_name
from tunegguf.errors import TuneGGUFError


def write_split(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


ROWS = [
    {"id": "a", "text": "A wonderful, moving film.", "label": "positive"},
    {"id": "b", "text": "Broke after one day, awful.", "label": "negative"},
    {"id": "c", "text": "Great sound and battery life.", "label": "positive"},
    {"id": "d", "text": "Dull plot and wooden acting.", "label": "negative"},
]


def test_help_is_fast_and_imports_nothing_heavy():
    code = (
        "import sys; from click.testing import CliRunner; from tunegguf.cli.evaluate import evaluate_command;"
        "r = CliRunner().invoke(evaluate_command, ['--help']); assert r.exit_code == 0, r.output;"
        "assert '--gguf-dir' in r.output and '--check' in r.output;"
        "heavy = [m for m in ('torch', 'transformers', 'llama_cpp', 'sklearn', 'matplotlib') if m in sys.modules];"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_quant_names_from_file_names():
    assert quant_name(Path("model-Q4_K_M.gguf")) == "Q4_K_M"
    assert quant_name(Path("smollm2-f16.gguf")) == "f16"
    assert quant_name(Path("out/llama.q8_0.gguf")) == "Q8_0"
    assert quant_name(Path("x-IQ4_XS.gguf")) == "IQ4_XS"
    assert quant_name(Path("merged.gguf")) == "merged"


def test_parse_gguf_options():
    assert parse_gguf_options(("Q8_0=a.gguf", " f16 = b.gguf")) == {"Q8_0": Path("a.gguf"), "f16": Path("b.gguf")}
    with pytest.raises(TuneGGUFError, match="expected NAME=FILE"):
        parse_gguf_options(("a.gguf",))
    with pytest.raises(TuneGGUFError, match="twice"):
        parse_gguf_options(("x=a.gguf", "x=b.gguf"))


def test_gguf_dir_reads_manifest_or_globs(tmp_path):
    for name in ("m-f16.gguf", "m-Q8_0.gguf", "m-Q4_K_M.gguf"):
        (tmp_path / name).write_bytes(b"x")
    assert gguf_dir_files(tmp_path) == {
        "Q4_K_M": tmp_path / "m-Q4_K_M.gguf", "Q8_0": tmp_path / "m-Q8_0.gguf", "f16": tmp_path / "m-f16.gguf",
    }
    manifest = {"files": [{"quant": "Q8_0", "path": "m-Q8_0.gguf", "sha256": "..."}, {"path": "m-f16.gguf"}]}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert gguf_dir_files(tmp_path) == {"Q8_0": tmp_path / "m-Q8_0.gguf", "f16": tmp_path / "m-f16.gguf"}
    export_style = {"format": "tunegguf-export-manifest/1", "files": {
        "m-f16.gguf": {"quant": "f16", "path": "m-f16.gguf", "size": 1},
        "m-Q4_K_M.gguf": {"quant": "Q4_K_M", "path": "m-Q4_K_M.gguf", "size": 1},
    }}
    (tmp_path / "manifest.json").write_text(json.dumps(export_style))
    assert gguf_dir_files(tmp_path) == {"f16": tmp_path / "m-f16.gguf", "Q4_K_M": tmp_path / "m-Q4_K_M.gguf"}
    (tmp_path / "manifest.json").write_text(json.dumps({"Q4_K_M": {"file": "m-Q4_K_M.gguf"}}))
    assert gguf_dir_files(tmp_path) == {"Q4_K_M": tmp_path / "m-Q4_K_M.gguf"}
    (tmp_path / "manifest.json").write_text("{broken")
    with pytest.raises(TuneGGUFError, match="manifest.json: not valid JSON"):
        gguf_dir_files(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TuneGGUFError, match="no .gguf files"):
        gguf_dir_files(empty)


def test_bad_gguf_flag_is_one_line_exit_2(tmp_path):
    data = write_split(tmp_path / "test.jsonl", ROWS)
    result = CliRunner().invoke(evaluate_command, ["--data", str(data), "--gguf", "model.gguf"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: --gguf 'model.gguf': expected NAME=FILE, e.g. --gguf Q8_0=out/model-Q8_0.gguf"
    ]


def test_label_outside_list_names_the_row(tmp_path):
    data = write_split(tmp_path / "test.jsonl", ROWS + [{"id": "e", "text": "meh", "label": "neutral"}])
    result = CliRunner().invoke(
        evaluate_command, ["--data", str(data), "--labels", "negative,positive", "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2
    assert "error: row 5 (id 'e'): label 'neutral' is not one of ['negative', 'positive']" in result.output
    assert "Traceback" not in result.output


def test_unknown_setting_and_missing_gguf(tmp_path):
    data = write_split(tmp_path / "test.jsonl", ROWS)
    result = CliRunner().invoke(evaluate_command, ["--data", str(data), "--set", "evaluate.bootstrapp=5"])
    assert result.exit_code == 2
    assert "unknown setting 'evaluate.bootstrapp' (did you mean 'bootstrap'?)" in result.output
    result = CliRunner().invoke(evaluate_command, ["--data", str(data), "--gguf", f"Q8_0={tmp_path / 'no.gguf'}"])
    assert result.exit_code == 2
    assert "GGUF file for 'Q8_0' not found" in result.output


@pytest.mark.slow
def test_cli_end_to_end(tmp_path, smollm2_dir, smollm2_f16_gguf):
    data = write_split(tmp_path / "test.jsonl", ROWS)
    out = tmp_path / "report"
    args = [
        "--hf", str(smollm2_dir), "--gguf", f"f16={smollm2_f16_gguf}", "--data", str(data),
        "--labels", "negative,positive", "--out", str(out), "--limit", "3", "--check",
        "--set", "evaluate.modes=[labels]", "--set", "evaluate.bootstrap=50",
    ]
    result = CliRunner().invoke(evaluate_command, args)
    assert result.exit_code == 0, result.output
    assert "f16: parity holds" in result.output
    report = json.loads((out / "report.json").read_text())
    assert report["n_examples"] == 3
    assert report["config"]["bootstrap"] == 50
    assert report["modes"] == ["labels"]
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "predictions.jsonl", "report.html", "report.json", "report.md",
    ]


@pytest.mark.slow  # the data stage also builds the default (demo) train split: seconds
def test_raw_data_file_is_prepared_with_the_config(tmp_path):
    """A CSV (not a frozen split) goes through the data stage and becomes the test split whole."""
    from tunegguf.config.run import load_run_config
    from tunegguf.evaluate.inputs import load_examples

    csv = tmp_path / "reviews.csv"
    csv.write_text("text,label\n" + "".join(
        f"review number {i} is {'good' if i % 2 else 'bad'},{'positive' if i % 2 else 'negative'}\n" for i in range(20)
    ))
    config = load_run_config(None, [])
    examples, labels = load_examples(csv, config.data, config.evaluate.split, tmp_path / "out")
    assert labels == ["negative", "positive"]
    assert len(examples) == 20
    assert {e.text for e in examples} == {f"review number {i} is {'good' if i % 2 else 'bad'}" for i in range(20)}
    frozen = write_split(tmp_path / "test.jsonl", ROWS)
    examples, labels = load_examples(frozen, config.data, config.evaluate.split, tmp_path / "out2")
    assert [e.id for e in examples] == ["a", "b", "c", "d"] and labels == []
