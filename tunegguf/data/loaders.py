"""Read one data source into plain rows: CSV, TSV, JSONL, JSON, Parquet, save_to_disk, hub, demo.

Every reader returns a `Table` (rows as dicts in file order, the column names, and where
they came from with a sha256), so cleaning and splitting never care about the format.
Bad input fails here with one line naming the file and the fix.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from tunegguf.errors import TuneGGUFError, closest
from tunegguf.io import sha256_file

FILE_TYPES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "json", ".parquet": "parquet"}
SUPPORTED = ".csv, .tsv, .jsonl, .json or .parquet, a datasets save_to_disk directory, 'demo' or 'demo-instruct'"
# Why a readable file held no rows, and what to do, by file type.
NO_ROWS = {
    "csv": "only a header line; add one row per example below it",
    "tsv": "only a header line; add one row per example below it",
    "jsonl": "the file is empty or has only blank lines; write one JSON object per line",
    "json": "an empty list of records; add records like {\"text\": ..., \"label\": ...}",
    "parquet": "the table has no rows; write the examples into it",
    "dataset": "the split is empty; check data.split_names or the dataset",
}
SEPARATORS = {"csv": (",", "comma", ".csv"), "tsv": ("\t", "tab", ".tsv")}


@dataclass
class Table:
    rows: list[dict[str, Any]]
    columns: list[str]
    source: dict[str, Any]
    """{"path", "kind", "sha256"} plus "split" for datasets; what the manifest records."""
    name: str
    """Short name used in messages: the file name (or `dir[split]`, the hub name, 'demo')."""
    line_offset: int = 2
    """File line of data row 0 (1-based): 2 after a header row, 1 for JSONL, 0 when lines
    mean nothing (JSON, Parquet, datasets); used to point messages at the line to fix."""
    lines: list[int] | None = None
    """The file line of each row where they are not simply row + offset (JSONL with blank lines)."""

    def where(self, row_index: int) -> str:
        """'row 17 (line 18)' for messages; row numbers are 1-based data rows."""
        if self.lines is not None:
            return f"row {row_index + 1} (line {self.lines[row_index]})"
        if self.line_offset:
            return f"row {row_index + 1} (line {row_index + self.line_offset})"
        return f"row {row_index + 1}"


def is_demo(source: str) -> bool:
    """The project's own sentiment set (task: classification)."""
    return str(source).strip().lower() == "demo"


def is_demo_instruct(source: str) -> bool:
    """The project's own instruction set (task: chat)."""
    return str(source).strip().lower() == "demo-instruct"


def looks_local(source: str) -> bool:
    """A path the user meant as a local file, not a hub dataset name."""
    path = Path(source).expanduser()
    if path.exists() or path.suffix.lower() in FILE_TYPES or path.is_absolute():
        return True
    return source.startswith((".", "~")) or (os.sep in source and str(path.parent) != "." and path.parent.exists())


def source_fingerprint(source: str, setting: str | None, split_name: str) -> dict[str, Any]:
    """What identifies a source without parsing it (for stage skipping): path + sha256."""
    if is_demo(source):
        from tunegguf.data.demo import DEMO_VERSION, demo_sha256

        return {"path": "demo", "kind": "demo", "sha256": demo_sha256(), "version": DEMO_VERSION}
    if is_demo_instruct(source):
        import tunegguf.data.demo_instruct as demo_instruct

        return {"path": "demo-instruct", "kind": "demo-instruct", "sha256": demo_instruct.demo_sha256(),
                "version": demo_instruct.DEMO_VERSION}
    path = Path(source).expanduser()
    if path.is_dir():
        return {"path": str(path.resolve()), "kind": "save_to_disk", "split": split_name, "sha256": _sha256_dir(path)}
    if path.is_file():
        return {"path": str(path.resolve()), "kind": _file_kind(path, setting), "sha256": sha256_file(path)}
    if looks_local(source):
        missing_file(path, setting)
    return {"path": source, "kind": "hub", "split": split_name, "sha256": None}


def check_source(source: str, setting: str | None = "train") -> None:
    """The checks of `load_table` that read nothing: a local file that does not exist or has
    an unsupported type (a hub name, a directory and 'demo' pass), so a run can refuse a
    missing file at start-up."""
    path = Path(source).expanduser()
    if is_demo(source) or is_demo_instruct(source) or path.is_dir():
        return
    if path.is_file():
        _file_kind(path, setting)
    elif looks_local(source):
        missing_file(path, setting)


def load_table(source: str, setting: str | None = "train", split_name: str | None = None) -> Table:
    """Read `source` (named in config setting `data.<setting>`; None: named on a command
    line) into a Table. `split_name` picks the split of a DatasetDict or hub dataset."""
    split_name = split_name or setting or "train"
    check_source(source, setting)
    if is_demo(source):
        return _load_demo()
    if is_demo_instruct(source):
        return _load_demo_instruct()
    path = Path(source).expanduser()
    if path.is_dir():
        table = _load_saved_dataset(path, setting, split_name)
    elif not path.is_file():
        table = _load_hub(source, setting, split_name)
    else:
        kind = _file_kind(path, setting)
        if kind != "parquet":
            _check_utf8(path)
        reader = {"csv": _read_delimited, "tsv": _read_delimited, "jsonl": _read_jsonl, "json": _read_json,
                  "parquet": _read_parquet}[kind]
        table = reader(path, kind)
        table.source = {"path": str(path.resolve()), "kind": kind, "sha256": sha256_file(path)}
    if not table.rows:
        why = NO_ROWS.get(table.source["kind"], NO_ROWS["dataset"])
        raise TuneGGUFError(f"{_prefix(setting)}{source}: no data rows ({why})")
    return table


# ---- files ---------------------------------------------------------------------------


def _file_kind(path: Path, setting: str | None) -> str:
    kind = FILE_TYPES.get(path.suffix.lower())
    if kind is None:
        shown = path.suffix or "(no extension)"
        raise TuneGGUFError(f"{_prefix(setting)}{path}: unsupported file type '{shown}'; use {SUPPORTED}")
    return kind


def missing_file(path: Path, setting: str | None):
    """Raise file-not-found with the closest name in the same directory."""
    hint = closest(path.name, [p.name for p in path.parent.iterdir()]) if path.parent.is_dir() else ""
    raise TuneGGUFError(
        f"{_prefix(setting)}file not found: {path}{hint}; check the path (relative paths start at {Path.cwd()})"
    )


def _prefix(setting: str | None) -> str:
    return f"data.{setting}: " if setting else ""


def _check_utf8(path: Path) -> None:
    """Fail on the first invalid byte with its offset and line, before a parser mangles it."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise TuneGGUFError(
            f"{path}: not UTF-8 at byte {exc.start} (line {line}, byte 0x{data[exc.start]:02x}); "
            f"re-encode it, e.g. iconv -f latin1 -t utf-8 {path.name} > fixed{path.suffix}"
        ) from None


def _check_separator(path: Path, kind: str) -> None:
    """A TSV named .csv (or the reverse) would read as one column holding whole lines."""
    with path.open(encoding="utf-8-sig") as f:
        header = f.readline()
    sep, _, _ = SEPARATORS[kind]
    other_kind = "tsv" if kind == "csv" else "csv"
    other, other_name, other_suffix = SEPARATORS[other_kind]
    if sep not in header and other in header:
        raise TuneGGUFError(
            f"{path}: the header line is {other_name}-separated but the name ends in {path.suffix}; "
            f"rename it to {path.stem}{other_suffix}"
        )


def _parser_message(exc: Exception, kind: str) -> str:
    """pandas' 'Expected 2 fields in line 3, saw 3' as the line to fix and what to change."""
    found = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(exc))
    if found:
        want, line, saw = map(int, found.groups())
        return _field_count_message(line, want, saw, kind)
    sep_name = SEPARATORS[kind][1]
    return f"cannot parse as {kind.upper()}: {str(exc).strip()}; check quoting and the {sep_name} separators"


def _field_count_message(line: int, want: int, saw: int, kind: str) -> str:
    sep_name = SEPARATORS[kind][1]
    return (f"line {line} has {saw} {sep_name}-separated fields, the header has {want}; "
            f"put text that contains {sep_name}s in double quotes")


def _read_delimited(path: Path, kind: str) -> Table:
    import pandas as pd

    _check_separator(path, kind)
    # dtype=str and no NA parsing: text stays exactly as written ("NA", "001"), and labels are
    # compared as text later (0, "0" and 0.0 all become "0").
    try:
        frame = pd.read_csv(path, sep=SEPARATORS[kind][0], dtype=str, keep_default_na=False,
                            encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        raise TuneGGUFError(f"{path}: the file is empty; it needs a header row and data rows") from None
    except pd.errors.ParserError as exc:
        raise TuneGGUFError(f"{path}: {_parser_message(exc, kind)}") from None
    if not isinstance(frame.index, pd.RangeIndex):
        # The first data line had one field more than the header, so pandas made the first
        # column the index: every text would be shifted by one column.
        fields = len(frame.columns)
        raise TuneGGUFError(f"{path}: {_field_count_message(2, fields, fields + 1, kind)}")
    columns = [str(c) for c in frame.columns]
    return Table(rows=frame.to_dict("records"), columns=columns, source={}, name=path.name, line_offset=2)


def jsonl_records(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSONL file, read one line at a time;
    a line that is not a JSON object is a one-line error naming it."""
    with path.open(encoding="utf-8-sig") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TuneGGUFError(f"{path}: line {number} is not valid JSON ({exc.msg}); one object per line") from None
            if not isinstance(row, dict):
                raise TuneGGUFError(f"{path}: line {number} is not a JSON object; one {{...}} record per line")
            yield number, row


def _read_jsonl(path: Path, kind: str) -> Table:
    rows, lines = [], []
    for number, row in jsonl_records(path):
        rows.append(row)
        lines.append(number)
    # Blank lines are skipped, so keep the real line numbers for messages.
    return Table(rows=rows, columns=_columns(rows), source={}, name=path.name, line_offset=0, lines=lines)


def _read_json(path: Path, kind: str) -> Table:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise TuneGGUFError(f"{path}: not valid JSON at line {exc.lineno} ({exc.msg})") from None
    if isinstance(data, dict):  # {"data": [...]}: accept a single list of records inside
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) == 1:
            data = lists[0]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise TuneGGUFError(f"{path}: expected a JSON list of records like [{{\"text\": ..., \"label\": ...}}]")
    return Table(rows=data, columns=_columns(data), source={}, name=path.name, line_offset=0)


def _read_parquet(path: Path, kind: str) -> Table:
    import pandas as pd

    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt or foreign file
        raise TuneGGUFError(f"{path}: cannot read as Parquet ({type(exc).__name__}: {exc})") from None
    rows = frame.astype(object).where(frame.notna(), None).to_dict("records")
    return Table(rows=rows, columns=[str(c) for c in frame.columns], source={}, name=path.name, line_offset=0)


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        for key in row:
            seen.setdefault(str(key), None)
    return list(seen)


# ---- datasets ------------------------------------------------------------------------


def _sha256_dir(path: Path) -> str:
    """One digest over every file's relative path and sha256 (a save_to_disk directory)."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}\0{sha256_file(file)}\n".encode())
    return digest.hexdigest()


def _load_saved_dataset(path: Path, setting: str | None, split_name: str) -> Table:
    if not any((path / marker).is_file() for marker in ("dataset_dict.json", "dataset_info.json", "state.json")):
        raise TuneGGUFError(
            f"{_prefix(setting)}{path} is a directory but not a datasets save_to_disk directory; "
            f"give a file ({SUPPORTED})"
        )
    import datasets

    loaded = datasets.load_from_disk(str(path))
    name = path.name
    if isinstance(loaded, datasets.DatasetDict):
        if split_name not in loaded:
            splits = list(loaded)
            raise TuneGGUFError(
                f"{path}: no split '{split_name}'{closest(split_name, splits)}; splits are {', '.join(splits)}; "
                f"set data.split_names.{setting or 'train'}"
            )
        loaded = loaded[split_name]
        name = f"{path.name}[{split_name}]"
    table = Table(rows=loaded.to_list(), columns=list(loaded.column_names), source={}, name=name, line_offset=0)
    table.source = {"path": str(path.resolve()), "kind": "save_to_disk", "split": split_name, "sha256": _sha256_dir(path)}
    return table


def hub_offline() -> bool:
    flags = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    return any(os.environ.get(flag, "").strip().lower() in ("1", "true", "yes", "on") for flag in flags)


def _load_hub(name: str, setting: str | None, split_name: str) -> Table:
    if hub_offline():
        raise TuneGGUFError(
            f"{_prefix(setting)}'{name}' is not a local file and the Hugging Face hub is offline "
            f"(HF_HUB_OFFLINE=1); give a local file ({SUPPORTED}) or go online"
        )
    import datasets

    try:
        loaded = datasets.load_dataset(name, split=split_name)
    except Exception as exc:  # network, auth, missing dataset or split: all the user's to fix
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TuneGGUFError(
            f"{_prefix(setting)}cannot load hub dataset '{name}' split '{split_name}': {first}; "
            f"check the name and data.split_names, or give a local file"
        ) from None
    table = Table(rows=loaded.to_list(), columns=list(loaded.column_names), source={},
                  name=f"{name}[{split_name}]", line_offset=0)
    table.source = {"path": name, "kind": "hub", "split": split_name, "sha256": None,
                    "fingerprint": getattr(loaded, "_fingerprint", None)}
    return table


def _load_demo() -> Table:
    from tunegguf.data.demo import DEMO_VERSION, demo_sha256, generate_demo

    rows = generate_demo()
    table = Table(rows=rows, columns=["text", "label"], source={}, name="demo", line_offset=0)
    table.source = {"path": "demo", "kind": "demo", "sha256": demo_sha256(rows), "version": DEMO_VERSION}
    return table


def _load_demo_instruct() -> Table:
    import tunegguf.data.demo_instruct as demo_instruct

    rows = demo_instruct.generate_demo()
    table = Table(rows=rows, columns=["messages", "skill"], source={}, name="demo-instruct", line_offset=0)
    table.source = {"path": "demo-instruct", "kind": "demo-instruct", "sha256": demo_instruct.demo_sha256(rows),
                    "version": demo_instruct.DEMO_VERSION}
    return table
