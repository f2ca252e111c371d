"""A user's file of texts read in fixed-size chunks, in constant memory (`predict --input`).

CSV, TSV, JSONL and Parquet stream (pandas `chunksize`, line by line, pyarrow
`iter_batches`); a JSON array and a datasets save_to_disk directory are read whole (their
formats cannot be read in pieces). Every chunk carries its rows as plain dicts, each row's
text and how messages name the row, with the same one-line errors as `load_rows`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from tunegguf.data.clean import text_value
from tunegguf.data.loaders import NO_ROWS, jsonl_records, SEPARATORS, _check_separator, _field_count_message, _file_kind, \
    _parser_message, load_table, missing_file
from tunegguf.errors import TuneGGUFError, closest

STREAMED = ("csv", "tsv", "jsonl", "parquet")
"""File kinds read chunk by chunk; the others (json, save_to_disk) are read whole."""
_BLOCK = 1 << 20


@dataclass
class Chunk:
    index: int
    """0-based chunk number; rows index * chunk_rows ... of the input."""
    start: int
    """0-based number of the chunk's first row in the input."""
    rows: list[dict[str, Any]]
    texts: list[str]
    names: list[str]
    """How a message names each row: 'reviews.csv, row 17 (line 18)'."""


class RowStream:
    """Open `path` and check what can be checked before a model loads (type, UTF-8, header,
    the text column); then `chunks()` reads it front to back."""

    def __init__(self, path: str | Path, text_column: str = "text", chunk_rows: int = 512,
                 option: str = "--text-column") -> None:
        if chunk_rows < 1:
            raise TuneGGUFError(f"chunk size {chunk_rows}: give at least 1 row")
        self.path = Path(path).expanduser()
        self.text_column, self.chunk_rows, self.option = text_column, chunk_rows, option
        if self.path.is_dir():
            self.kind = "dataset"
        elif self.path.is_file():
            self.kind = _file_kind(self.path, None)
        else:
            missing_file(self.path, None)
        self.name = self.path.name
        self.total: int | None = None
        """Rows in the input when cheap to know (Parquet metadata, a whole read), else an
        estimate from the line count (a quoted field with a newline counts twice), or None."""
        self._whole: list[dict[str, Any]] | None = None
        self._columns: list[str] | None = None
        if self.kind in ("csv", "tsv", "jsonl"):
            lines = _utf8_lines(self.path)
            self.total = max(0, lines - (1 if self.kind != "jsonl" else 0))
            if self.kind != "jsonl":
                _check_separator(self.path, self.kind)
        elif self.kind == "parquet":
            self.total = self._parquet_file().metadata.num_rows
        else:
            table = load_table(str(self.path), setting=None)
            self._whole, self.total = table.rows, len(table.rows)
            self._columns = table.columns
        # The first chunk now: a missing column or an empty file is one line before a model loads.
        self._iter = self._read()
        self._first = next(self._iter, None)
        if self._first is None:
            why = NO_ROWS.get(self.kind, NO_ROWS["dataset"])
            raise TuneGGUFError(f"{self.path}: no data rows ({why})")

    @property
    def identity(self) -> dict[str, Any]:
        """What tells this input from another without reading it (a resumed run's check)."""
        path = self.path.resolve()
        if path.is_dir():
            files = [p.stat() for p in path.rglob("*") if p.is_file()]
            return {"path": str(path), "size": sum(s.st_size for s in files),
                    "mtime_ns": max((s.st_mtime_ns for s in files), default=0)}
        stat = path.stat()
        return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}

    def chunks(self) -> Iterator[Chunk]:
        """The input's chunks, in order (once: the stream cannot be rewound)."""
        first, self._first = self._first, None
        if first is None:
            raise RuntimeError("RowStream.chunks() was already read")
        yield first
        yield from self._iter

    # ---- readers -------------------------------------------------------------------------
    def _read(self) -> Iterator[Chunk]:
        batches = {"csv": self._delimited, "tsv": self._delimited, "jsonl": self._jsonl,
                   "parquet": self._parquet}.get(self.kind, self._rows_whole)()
        start = 0
        for index, (rows, lines) in enumerate(batches):
            if index == 0:
                self._check_column(rows)
            texts, names = [], []
            for offset, row in enumerate(rows):
                name = f"{self.name}, {self._where(start + offset, lines[offset] if lines else None)}"
                text = text_value(row.get(self.text_column))
                if not text:
                    raise TuneGGUFError(f"{name}: no text in column '{self.text_column}'; fill it in or remove the row")
                texts.append(text)
                names.append(name)
            yield Chunk(index=index, start=start, rows=rows, texts=texts, names=names)
            start += len(rows)

    def _where(self, row: int, line: int | None) -> str:
        if line is not None:
            return f"row {row + 1} (line {line})"
        if self.kind in ("csv", "tsv"):
            return f"row {row + 1} (line {row + 2})"
        return f"row {row + 1}"

    def _check_column(self, rows: list[dict[str, Any]]) -> None:
        # The header (CSV/TSV), the schema (Parquet), the whole table's; JSONL: the first chunk's keys.
        columns = self._columns if self._columns is not None else list(dict.fromkeys(k for r in rows for k in r))
        if self.text_column not in columns:
            raise TuneGGUFError(
                f"{self.name}: no column '{self.text_column}'{closest(self.text_column, columns)}; columns are "
                f"{', '.join(map(str, columns)) or '(none)'}; use {self.option}")

    def _delimited(self) -> Iterator[tuple[list[dict[str, Any]], None]]:
        import pandas as pd

        # dtype=str and no NA parsing, as the data stage reads: text stays exactly as written.
        try:
            reader = pd.read_csv(self.path, sep=SEPARATORS[self.kind][0], dtype=str, keep_default_na=False,
                                 encoding="utf-8-sig", chunksize=self.chunk_rows)
            for number, frame in enumerate(reader):
                if number == 0 and not isinstance(frame.index, pd.RangeIndex):
                    # One field more on the first data line than in the header: pandas made the
                    # first column the index, and every text would be shifted by a column.
                    fields = len(frame.columns)
                    raise TuneGGUFError(f"{self.path}: {_field_count_message(2, fields, fields + 1, self.kind)}")
                self._columns = [str(c) for c in frame.columns]
                if len(frame):  # a header-only file reads as one empty chunk
                    yield frame.to_dict("records"), None
        except pd.errors.EmptyDataError:
            raise TuneGGUFError(f"{self.path}: the file is empty; it needs a header row and data rows") from None
        except pd.errors.ParserError as exc:
            raise TuneGGUFError(f"{self.path}: {_parser_message(exc, self.kind)}") from None

    def _jsonl(self) -> Iterator[tuple[list[dict[str, Any]], list[int]]]:
        rows: list[dict[str, Any]] = []
        lines: list[int] = []
        for number, row in jsonl_records(self.path):
            rows.append(row)
            lines.append(number)
            if len(rows) == self.chunk_rows:
                yield rows, lines
                rows, lines = [], []
        if rows:
            yield rows, lines

    def _parquet_file(self):
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(self.path)
        except Exception as exc:  # pyarrow raises several types for a corrupt or foreign file
            raise TuneGGUFError(f"{self.path}: cannot read as Parquet ({type(exc).__name__}: {exc})") from None

    def _parquet(self) -> Iterator[tuple[list[dict[str, Any]], None]]:
        parquet = self._parquet_file()
        self._columns = list(parquet.schema_arrow.names)
        try:
            for batch in parquet.iter_batches(batch_size=self.chunk_rows):
                if not batch.num_rows:
                    continue
                # Python values row by row (an int column with a null stays int elsewhere), so a
                # chunk's rows do not depend on which other rows share the chunk.
                yield batch.to_pylist(), None
        except TuneGGUFError:
            raise
        except Exception as exc:
            raise TuneGGUFError(f"{self.path}: cannot read as Parquet ({type(exc).__name__}: {exc})") from None

    def _rows_whole(self) -> Iterator[tuple[list[dict[str, Any]], None]]:
        rows = self._whole or []
        for start in range(0, len(rows), self.chunk_rows):
            yield rows[start : start + self.chunk_rows], None


def _utf8_lines(path: Path) -> int:
    """The file's line count, checking on the way that it is UTF-8 (block by block: constant
    memory); the first invalid byte is one line with its offset, line and the fix."""
    lines, base, carry, last = 0, 0, b"", b""
    with path.open("rb") as f:
        while True:
            block = f.read(_BLOCK)
            data = carry + block
            if not data:
                break
            try:
                data.decode("utf-8")
                carry = b""
            except UnicodeDecodeError as exc:
                cut = exc.reason == "unexpected end of data" and exc.end == len(data)
                if not (cut and block):  # a character cut by the block end is read with the next block
                    line = lines + data.count(b"\n", 0, exc.start) + 1
                    raise TuneGGUFError(
                        f"{path}: not UTF-8 at byte {base + exc.start} (line {line}, byte 0x{data[exc.start]:02x}); "
                        f"re-encode it, e.g. iconv -f latin1 -t utf-8 {path.name} > fixed{path.suffix}") from None
                carry = data[exc.start:]
                data = data[: exc.start]
            lines += data.count(b"\n")
            base += len(data)
            last = data[-1:] or last
            if not block:
                break
    return lines + (1 if last and last != b"\n" else 0)
