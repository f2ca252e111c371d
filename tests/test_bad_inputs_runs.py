"""Bad inputs from the reliability issue that concern run directories, start-up checks and child
processes: each is one clear line (or a note), never a traceback, never a half-written output
passed off as done. One section per defect class."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from tunegguf.cli import cli
from tunegguf.errors import TuneGGUFError

REPO = Path(__file__).resolve().parents[1]


def _invoke(*args: str, input: str | None = None):
    return CliRunner().invoke(cli, [str(a) for a in args], input=input)


def _one_line_cli_error(result, *fragments: str) -> str:
    """Exit status 2 and a single `error: ...` line containing every fragment."""
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _config(tmp_path: Path, text: str = "", name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


# ---- #10 an output directory option pointing at a file -----------------------------------


@pytest.mark.parametrize("command", [
    ["run", "{config}", "--run-dir", "{file}"],
    ["finetune", "--config", "{config}", "--run-dir", "{file}"],
    ["export", "run", "--config", "{config}", "--out", "{file}"],
    ["evaluate", "--config", "{config}", "--data", "{config}", "--out", "{file}"],
    ["data", "prepare", "--config", "{config}", "--out", "{file}"],
], ids=lambda c: " ".join(c[:2]))
def test_output_directory_option_that_is_a_file(tmp_path, command):
    config = _config(tmp_path)
    taken = tmp_path / "taken.txt"
    taken.write_text("not a directory")
    args = [a.format(config=config, file=taken) for a in command]
    line = _one_line_cli_error(_invoke(*args), f"{taken} is a file, not a directory")
    assert line.startswith(f"error: {command[-2]}"), line
    assert taken.read_text() == "not a directory"


def test_run_dir_from_the_yaml_that_is_a_file(tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("x")
    config = _config(tmp_path, f"run_dir: {taken}\n")
    _one_line_cli_error(_invoke("run", config), f"run_dir {taken} is a file, not a directory")
    inside = _config(tmp_path, f"run_dir: {taken}/runs/demo\n", "inside.yaml")
    _one_line_cli_error(_invoke("run", inside), f"is under {taken}, which is a file")


# ---- #3 what can be checked at start-up is checked at start-up ----------------------------


def _never_reached(monkeypatch):
    """Make the data stage and the fine-tune fail loudly if a command gets that far."""
    import tunegguf.data
    import tunegguf.finetune

    def reached(*args, **kwargs):
        raise AssertionError("a stage ran before the start-up checks refused the config")

    monkeypatch.setattr(tunegguf.data, "prepare", reached)
    monkeypatch.setattr(tunegguf.finetune, "run", reached)


@pytest.mark.parametrize("settings,fragments", [
    ("export:\n  quants: [Q8_0, Q4_K_Z]\n", ["export.quants: unknown quant type 'Q4_K_Z'", "did you mean"]),
    ("export:\n  imatrix_quants: [Q4_X]\n", ["export.imatrix_quants: unknown quant type 'Q4_X'"]),
    ("export:\n  imatrix_quants: [f16]\n", ["export.imatrix_quants: F16 is not quantized"]),
    ("model:\n  name: smollm2-135\n", ["model.name: unknown model 'smollm2-135'", "did you mean 'smollm2-135m'"]),
    ("data:\n  train: reviews.csv\n", ["data.train: file not found", "reviews.csv"]),
    ("data:\n  validation: ./dev.jsonl\n", ["data.validation: file not found", "dev.jsonl"]),
    ("evaluate:\n  quants: [Q5_K_M]\n", ["evaluate.quants names 'Q5_K_M', which the export does not write",
                                          "it writes F16, Q8_0 (add it to export.quants"]),
    ("finetune:\n  target_modules: [q_prj, v_proj]\n",
     ["finetune.target_modules: the model has no module named 'q_prj'", "did you mean 'q_proj'"]),
], ids=["quant", "imatrix-quant", "imatrix-f16", "alias", "train-file", "validation-file", "evaluate-quants",
        "target-module"])
def test_config_validate_and_run_refuse_at_start_up(tmp_path, monkeypatch, settings, fragments):
    _never_reached(monkeypatch)
    if "evaluate" in settings:
        settings += "export:\n  quants: [Q8_0]\n"
    config = _config(tmp_path, settings)
    _one_line_cli_error(_invoke("config", "validate", config), *fragments)
    _one_line_cli_error(_invoke("run", config, "--run-dir", tmp_path / "run"), *fragments)
    assert not (tmp_path / "run").exists(), "nothing is written before the checks pass"
    if "evaluate" not in settings and "export" not in settings:
        _one_line_cli_error(_invoke("finetune", "--config", config, "--run-dir", tmp_path / "ft"), *fragments)
        assert not (tmp_path / "ft").exists()


def test_config_validate_lists_every_problem(tmp_path):
    config = _config(tmp_path, "model:\n  name: tiny-lama3\nexport:\n  quants: [Q9]\ndata:\n  train: missing.tsv\n")
    result = _invoke("config", "validate", config)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("error: ") for line in lines), result.output
    assert ["data.train" in lines[0], "model.name" in lines[1], "export.quants" in lines[2]] == [True] * 3
    with pytest.raises(TuneGGUFError, match=r"data.train: .* \(and 2 more problems: `tunegguf config validate`"):
        from tunegguf.config.run import load_run_config
        from tunegguf.pipeline.run import run_pipeline

        run_pipeline(load_run_config(config, [f"run_dir={tmp_path / 'run'}"]))
    assert not (tmp_path / "run").exists()


def test_export_run_names_the_flag_at_start_up(tmp_path):
    line = _one_line_cli_error(_invoke("export", "run", "--base", "smollm2-135", "--out", tmp_path / "out"),
                               "--base: model.name: unknown model 'smollm2-135'")
    assert "did you mean 'smollm2-135m'" in line
    _one_line_cli_error(_invoke("export", "run", "--quants", "Q8_0,Q4_K_Z", "--out", tmp_path / "out"),
                        "--quants: export.quants: unknown quant type 'Q4_K_Z'")
    assert not (tmp_path / "out").exists()


def test_shipped_configs_pass_the_start_up_checks():
    from tunegguf.config.run import load_run_config
    from tunegguf.pipeline.checks import problems_before_start

    assert problems_before_start(load_run_config(REPO / "configs" / "demo.yaml")) == []
    # A hub model and hub/absent data are left to their stage: only the file the user must supply is named.
    amazon = problems_before_start(load_run_config(REPO / "configs" / "llama31_8b_amazon_a100.yaml"))
    assert len(amazon) == 1 and amazon[0].startswith("data.train: file not found: amazon_reviews.csv"), amazon


def test_the_known_module_names_are_those_of_the_architecture():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tunegguf.models.registry import ALIASES, MODULE_NAMES

    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(num_hidden_layers=1, hidden_size=64, intermediate_size=128,
                                             num_attention_heads=4, num_key_value_heads=2, vocab_size=100))
    leaves = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()} - {""}
    assert MODULE_NAMES["LlamaForCausalLM"] == {n for n in leaves if not n.isdigit()}
    assert {alias.architecture for alias in ALIASES.values()} <= set(MODULE_NAMES)
