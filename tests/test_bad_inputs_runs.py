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
    option = command[-2]
    _one_line_cli_error(_invoke(*args), f"{option} {taken} is a file, not a directory")
    assert taken.read_text() == "not a directory"


def test_run_dir_from_the_yaml_that_is_a_file(tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("x")
    config = _config(tmp_path, f"run_dir: {taken}\n")
    _one_line_cli_error(_invoke("run", config), f"run_dir {taken} is a file, not a directory")
    inside = _config(tmp_path, f"run_dir: {taken}/runs/demo\n", "inside.yaml")
    _one_line_cli_error(_invoke("run", inside), f"is under {taken}, which is a file")
