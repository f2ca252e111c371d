"""The rows `tunegguf evaluate` scores: a frozen split as it is, or a raw data file prepared
with the run config's data settings."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from tunegguf.data.config import DataConfig
from tunegguf.errors import TuneGGUFError


def looks_frozen(path: Path) -> bool:
    """A frozen split: JSON lines of Example.to_dict() (an id and a text, instruction or messages)."""
    if path.suffix != ".jsonl":
        return False
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    raise TuneGGUFError(f"{path}: the first row is not valid JSON") from None
                return isinstance(row, dict) and "id" in row and any(k in row for k in ("text", "instruction", "messages"))
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
            f"{data} is not a frozen split (JSON lines with id and text, instruction or messages); "
            "prepare it with `tunegguf data prepare`"
        ) from None
    prepared = prepare(dataclasses.replace(data_config, test=str(data)), out_dir / "data")
    return prepared.load(split), list(prepared.labels)


def split_file_of(data: Path, out_dir: Path, split: str) -> Path:
    """The frozen split file `load_examples` read (for the manifest beside it)."""
    return data if looks_frozen(data) else out_dir / "data" / f"{split}.jsonl"


def answers_checkable(split_file: Path) -> bool:
    """Whether the data manifest beside a frozen split says its reference answers are exact
    (the generated instruction demo), so exact match against them means something."""
    manifest = Path(split_file).parent / "data_manifest.json"
    if not manifest.is_file():
        return False
    try:
        return bool(json.loads(manifest.read_text(encoding="utf-8")).get("answers_checkable", False))
    except (OSError, ValueError):
        return False
