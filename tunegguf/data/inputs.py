"""A user's own file of texts to classify (`predict --input`), read like the data stage reads.

Same formats and the same one-line errors as `data inspect` / `data prepare` (a TSV named
.csv, an empty file, a bad JSONL line, unquoted commas), plus the checks a plain list of
texts needs: the text column exists and every row has text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunegguf.data.clean import require_columns, text_value
from tunegguf.data.loaders import load_table, missing_file
from tunegguf.errors import TuneGGUFError


def load_rows(path: str | Path, text_column: str = "text",
              option: str = "--text-column") -> tuple[list[dict[str, Any]], list[str]]:
    """(rows in file order as dicts, the stripped text of each row) from a .csv, .tsv, .jsonl,
    .json or .parquet file; `option` is how the caller's user sets the text column."""
    path = Path(path).expanduser()
    if not path.is_file():
        missing_file(path, None)
    table = load_table(str(path), setting=None)
    require_columns(table, [(text_column, "")], fix=f"use {option}")
    texts = []
    for index, row in enumerate(table.rows):
        text = text_value(row.get(text_column))
        if not text:
            raise TuneGGUFError(
                f"{table.name}, {table.where(index)}: no text in column '{text_column}'; fill it in or remove the row"
            )
        texts.append(text)
    return table.rows, texts
