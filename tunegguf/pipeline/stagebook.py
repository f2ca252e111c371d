"""stages.json: what finished, with which fingerprint, and what it produced.

The paths a stage produced are stored relative to the run directory (absolute when they
lie outside it, as a base model in the cache does) and resolved against the run directory
on read, so a run directory works from any working directory, and after a move. Files
written before that stored paths relative to where the run was launched
(`runs/demo/export/gguf/...`); those are read from the stage's own folder on.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tunegguf.io import read_json, write_json
from tunegguf.pipeline.checks import STAGES

# The folder of the run directory each stage writes (run_pipeline's layout).
STAGE_DIRS = {"data": "data", "finetune": "finetune", "export": "export", "evaluate": "report"}
# Keys of a stage's result that hold a path, or a {name: path} mapping ("files").
PATH_KEYS = {"manifest", "adapter_dir", "history_path", "merged_dir", "report_json", "report_md", "report_html"}
PATH_MAP_KEYS = {"files"}


class StageBook:
    """The stages.json of one run directory."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "stages.json"
        self.entries: dict[str, Any] = read_json(self.path) if self.path.is_file() else {}

    def result(self, stage: str) -> dict | None:
        """What `stage` produced, its paths resolved against the run directory."""
        entry = self.entries.get(stage)
        if not entry or not isinstance(entry.get("result"), dict):
            return None
        return _convert(entry["result"], lambda value: str(self._resolve(stage, value)))

    def done(self, stage: str, fingerprint: str) -> dict | None:
        """The result of `stage` when it finished with this fingerprint and everything it
        produced is still there; None means it has to run (again)."""
        entry = self.entries.get(stage)
        if not entry or entry.get("fingerprint") != fingerprint:
            return None
        result = self.result(stage)
        return result if result is not None and all(Path(p).exists() for p in _paths(result)) else None

    def record(self, stage: str, fingerprint: str, result: dict, seconds: float) -> None:
        self.entries[stage] = {"fingerprint": fingerprint, "result": _convert(result, self._store),
                               "seconds": round(seconds, 1), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        write_json(self.path, self.entries)

    def forget_from(self, stage: str) -> None:
        for later in STAGES[STAGES.index(stage):]:
            self.entries.pop(later, None)
        write_json(self.path, self.entries)

    def _store(self, value: str) -> str:
        path = Path(value).resolve()  # a relative path is relative to the working directory now
        try:
            return path.relative_to(self.run_dir.resolve()).as_posix()
        except ValueError:
            return str(path)

    def _resolve(self, stage: str, value: str) -> Path:
        path = Path(value)
        if path.is_absolute():
            return path
        parts, folder = path.parts, STAGE_DIRS[stage]
        if parts and parts[0] != folder and folder in parts:
            # Launch-relative (an older stages.json): keep the part from the stage's folder on.
            path = Path(*parts[len(parts) - 1 - parts[::-1].index(folder):])
        return self.run_dir / path


def read_stages(run_dir: Path) -> dict[str, dict]:
    """{stage: result} of the finished stages of a run directory, paths resolved."""
    book = StageBook(run_dir)
    return {stage: result for stage in STAGES if (result := book.result(stage)) is not None}


def _convert(result: dict, convert) -> dict:
    out = dict(result)
    for key, value in result.items():
        if key in PATH_KEYS and isinstance(value, str):
            out[key] = convert(value)
        elif key in PATH_MAP_KEYS and isinstance(value, dict):
            out[key] = {name: convert(p) if isinstance(p, str) else p for name, p in value.items()}
    return out


def _paths(result: dict) -> list[str]:
    paths = [v for k, v in result.items() if k in PATH_KEYS and isinstance(v, str)]
    for key in PATH_MAP_KEYS:
        paths += [p for p in (result.get(key) or {}).values() if isinstance(p, str)]
    return paths
