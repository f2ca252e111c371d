"""The rows `tunegguf evaluate` scores: a frozen split as it is, or a raw data file prepared
with the run config's data settings."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from tunegguf.data.config import DataConfig
from tunegguf.errors import TuneGGUFError


def looks_frozen(path: Path) -> bool:
    """A frozen split: JSON lines of Example.to_dict() (an id and a text or instruction)."""
    if path.suffix != ".jsonl":
        return False
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    raise TuneGGUFError(f"{path}: the first row is not valid JSON") from None
                return isinstance(row, dict) and "id" in row and ("text" in row or "instruction" in row)
    return False


def load_examples(data: Path, data_config: DataConfig, split: str, out_dir: Path) -> tuple[list, list[str]]:
    """Examples to score and the labels the data stage found (may be empty)."""
    from tunegguf.data.example import Example
    from tunegguf.io import read_jsonl

    if looks_frozen(data):
        return [Example.from_dict(row) for row in read_jsonl(data)], []
    # A raw data file: the data stage cleans it with the config's columns and label map,
    # and the file becomes the test split as a whole.
    try:
        from tunegguf.data.prepare import prepare
    except ImportError:
        raise TuneGGUFError(
            f"{data} is not a frozen split (JSON lines with id and text); prepare it with `tunegguf data prepare`"
        ) from None
    prepared = prepare(dataclasses.replace(data_config, test=str(data)), out_dir / "data")
    return prepared.load(split), list(prepared.labels)
