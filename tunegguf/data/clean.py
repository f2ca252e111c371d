"""Rows to Examples: column mapping, label mapping, filters, exact-duplicate and leakage removal.

Counts of every dropped row go back to the caller (they end up in the manifest), and a
label that the config does not account for is an error naming the file, column and row.
"""

from __future__ import annotations

import json
import math
import numbers
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from tunegguf.data.chat import TRAILING_CUT, conversation_length, messages_column, normalize
from tunegguf.data.config import DataConfig, parse_rating_range
from tunegguf.data.example import Example
from tunegguf.data.loaders import Table
from tunegguf.errors import TuneGGUFError, closest

TEXT_JOINER = "\n\n"
# How `tunegguf data inspect` sets the same thing, named in the missing-column message.
CLI_FLAGS = {"text_columns": " (inspect: --text-column)", "label_column": " (inspect: --label-column)"}


@dataclass
class Cleaned:
    examples: list[Example]
    rows: int
    """Rows in the source before anything was dropped."""
    dropped: Counter = field(default_factory=Counter)
    conflicts: int = 0
    """Duplicate texts whose labels disagreed (the first row's label was kept)."""
    truncated: Counter = field(default_factory=Counter)
    """Rows cut to fit (data.too_long: truncate), by the limit they were over; chat rows
    whose turns after the last assistant turn were cut, as trailing_turns."""


@dataclass(frozen=True)
class LengthLimit:
    """A token limit the data stage cannot measure itself (it imports no prompts or tokenizer):
    the caller renders and tokenizes, the data stage drops, cuts or rejects per data.too_long."""

    measure: Callable[[Example], int]
    """Tokens of the example as the model reads it (rendered prompt, plus the answer to learn)."""
    max_seq_length: int
    """The limit in tokens: model.max_seq_length."""
    identity: str = ""
    """What `measure` depends on (model, tokenizer, prompt template): part of the data stage's
    fingerprint, so a changed tokenizer or template prepares the splits again."""


def label_key(value: Any) -> str | None:
    """A raw label as text, so 0, "0", 0.0 and "0.0" all give "0"; empty gives None."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, numbers.Number):
        number = float(value)
        if math.isnan(number):
            return None
        return str(int(number)) if number.is_integer() else repr(number)
    text = str(value).strip()
    if not text:
        return None
    try:
        number = float(text)
    except ValueError:
        return text
    if math.isfinite(number) and any(ch.isdigit() for ch in text):
        return str(int(number)) if number.is_integer() else repr(number)
    return text


def text_value(value: Any) -> str:
    """A cell as stripped text; None / NaN become ''."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


def example_key(example: Example) -> str:
    """What counts as 'the same row' for dedupe and leakage: the text the model reads, for
    a chat row the conversation before its last assistant turn (the prompt it is scored on)."""
    if example.text is not None:
        return example.text
    if example.is_chat:
        return json.dumps(example.messages[: example.last_assistant], ensure_ascii=False, sort_keys=True)
    return f"{example.instruction}{TEXT_JOINER}{example.input or ''}"


def reference_answer(example: Example) -> str | None:
    """The answer a row is scored on: its label, its output, or its last assistant turn."""
    if example.is_classification:
        return example.label
    if example.is_chat:
        index = example.last_assistant
        return None if index is None else example.messages[index]["content"]
    return example.output


def require_columns(table: Table, columns: list[tuple[str, str]], fix: str | None = None) -> None:
    """columns: (column, setting that names it). Missing -> one line with the closest name and
    `fix` (default: set data.<setting>)."""
    for column, setting in columns:
        if column not in table.columns:
            how = fix or f"set data.{setting}{CLI_FLAGS.get(setting, '')}"
            raise TuneGGUFError(
                f"{table.name}: no column '{column}'{closest(column, table.columns)}; columns are "
                f"{', '.join(table.columns) or '(none)'}; {how}"
            )


def to_examples(table: Table, config: DataConfig, prefix: str, limit: LengthLimit | None = None) -> Cleaned:
    """Map the table's rows to Examples with ids f"{prefix}-{row}" (row in the source), then
    apply data.max_text_length and `limit` (tokens) as data.too_long says."""
    if table.source.get("kind") == "demo":
        # The demo has fixed columns and class names; column and label settings are for files.
        examples = [Example(id=f"{prefix}-{i}", text=r["text"], label=r["label"]) for i, r in enumerate(table.rows)]
        cleaned = Cleaned(examples=examples, rows=len(table.rows))
    elif table.source.get("kind") == "demo-instruct":
        cleaned = _chat_examples(table, config, prefix, column="messages")
    elif config.task == "chat":
        cleaned = _chat_examples(table, config, prefix)
    elif config.task == "instruction":
        cleaned = _instruction_examples(table, config, prefix)
    else:
        cleaned = _classification_examples(table, config, prefix)
    _fit_lengths(cleaned, table, config, limit)
    return cleaned


def _classification_examples(table: Table, config: DataConfig, prefix: str) -> Cleaned:
    require_columns(table, [(c, "text_columns") for c in config.text_columns] + [(config.label_column, "label_column")])
    label_map = {label_key(k): v for k, v in config.label_map.items()}
    ranges = [(parse_rating_range(k), v) for k, v in config.star_ratings.items()]
    allowed = set(config.labels)
    unknown: dict[str, int] = {}  # raw value outside label_map -> first row index
    outside: dict[str, int] = {}  # class outside data.labels -> first row index
    found: Counter = Counter()
    first_row: dict[str, int] = {}  # raw value -> first row index
    dropped: Counter = Counter()
    examples = []
    for index, row in enumerate(table.rows):
        text = TEXT_JOINER.join(part for part in (text_value(row.get(c)) for c in config.text_columns) if part)
        raw = label_key(row.get(config.label_column))
        if not text:
            dropped["empty_text"] += 1
            continue
        if raw is None:
            dropped["missing_label"] += 1
            continue
        found[raw] += 1
        first_row.setdefault(raw, index)
        if ranges:
            label = _rating_class(raw, ranges, table, config, index)
            if label is None:
                dropped["rating_outside_ranges"] += 1
                continue
        elif label_map:
            label = label_map.get(raw)
            if label is None:
                unknown.setdefault(raw, index)
                continue
        else:
            label = raw
        if allowed and label not in allowed:
            outside.setdefault(label, index)
            continue
        if len(text) < config.min_text_length:
            dropped["too_short"] += 1
            continue
        examples.append(Example(id=f"{prefix}-{index}", text=text, label=label))
    if unknown:
        _unknown_labels(table, config, "data.label_map", unknown, found)
    if outside:
        _unknown_labels(table, config, "data.labels", outside, found)
    if not (label_map or ranges or allowed):
        _require_one_label_kind(table, config, first_row)
    return Cleaned(examples=examples, rows=len(table.rows), dropped=dropped)


def _rating_class(raw: str, ranges, table: Table, config: DataConfig, index: int) -> str | None:
    try:
        rating = float(raw)
    except ValueError:
        raise TuneGGUFError(
            f"{table.name}, column '{config.label_column}', {table.where(index)}: rating {raw!r} is not a "
            f"number; data.star_ratings needs numeric ratings (or use data.label_map)"
        ) from None
    for (low, high), label in ranges:
        if low <= rating <= high:
            return label
    return None


def _unknown_labels(table: Table, config: DataConfig, what: str, unknown: dict[str, int], found: Counter) -> None:
    shown = ", ".join(f"{raw!r} (first at {table.where(i)})" for raw, i in list(unknown.items())[:5])
    more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
    values = ", ".join(f"{v!r} x{n}" for v, n in sorted(found.items(), key=lambda kv: -kv[1])[:10])
    raise TuneGGUFError(
        f"{table.name}, column '{config.label_column}': {'classes' if what == 'data.labels' else 'label values'} "
        f"not in {what}: {shown}{more}; raw values found: {values}; add them to {what} or fix those rows"
    )


def label_kind(key: str) -> str:
    """'number', 'boolean' or 'text' for a label as `label_key` gives it (CSV cells are
    text, so a CSV's "0" is a number, as JSON's 0 is)."""
    if key.lower() in ("true", "false"):
        return "boolean"
    try:
        return "number" if math.isfinite(float(key)) else "text"
    except ValueError:
        return "text"


def _require_one_label_kind(table: Table, config: DataConfig, first_row: dict[str, int]) -> None:
    """0/1 beside "negative"/"positive" in one column would become four classes: refuse."""
    kinds: dict[str, list[str]] = {}
    for key in first_row:
        kinds.setdefault(label_kind(key), []).append(key)
    if len(kinds) < 2:
        return
    column = config.label_column
    seen = " and ".join(
        f"{kind}s ({table.rows[first_row[keys[0]]][column]!r} at {table.where(first_row[keys[0]])})"
        for kind, keys in kinds.items()
    )
    template = ", ".join(f'"{keys[0]}": <class>' for keys in kinds.values())
    raise TuneGGUFError(
        f"{table.name}, column '{column}': labels mix {seen}, which would make {len(first_row)} classes "
        f"({', '.join(map(repr, sorted(first_row)))}); map every raw value to its class with data.label_map, "
        f"e.g. {{{template}, ...}} (inspect: --label-map), or list them all in data.labels to keep them apart"
    )


def _fit_lengths(cleaned: Cleaned, table: Table, config: DataConfig, limit: LengthLimit | None) -> None:
    """Rows over data.max_text_length characters or `limit` tokens: drop, cut or refuse."""
    kept = []
    for example in cleaned.examples:
        fitted = _fit(example, table, config, limit, cleaned)
        if fitted is not None:
            kept.append(fitted)
    cleaned.examples = kept


def text_length(example: Example) -> int:
    """Characters of what the model reads, as data.min_text_length counts them (a chat row:
    every message's content)."""
    if example.text is not None:
        return len(example.text)
    if example.is_chat:
        return conversation_length(example.messages)
    return len(example.instruction or "") + len(example.input or "")


def _fit(example: Example, table: Table, config: DataConfig, limit: LengthLimit | None,
         cleaned: Cleaned) -> Example | None:
    cap = config.max_text_length
    length = text_length(example)
    if cap is not None and length > cap:
        over = f"{length:,} characters, over data.max_text_length={cap}"
        if config.too_long != "truncate":
            return _too_long(example, table, config, cleaned, "too_long", over, "raise data.max_text_length")
        example = replace(example, text=example.text[:cap].rstrip())
        cleaned.truncated["too_long"] += 1
    if limit is None:
        return example
    tokens = limit.measure(example)
    if tokens <= limit.max_seq_length:
        return example
    over = f"{tokens:,} tokens as prompted, over model.max_seq_length={limit.max_seq_length}"
    if config.too_long != "truncate":
        return _too_long(example, table, config, cleaned, "too_long_tokens", over, "raise model.max_seq_length")
    cleaned.truncated["too_long_tokens"] += 1
    return cut_to_tokens(example, limit)


def _too_long(example: Example, table: Table, config: DataConfig, cleaned: Cleaned, reason: str,
              over: str, fix: str) -> None:
    if config.too_long == "error":
        keep = "drop or truncate" if example.is_classification else "drop"
        row = int(example.id.rsplit("-", 1)[1])  # ids are f"{prefix}-{row}" (to_examples)
        raise TuneGGUFError(
            f"{table.name}, {table.where(row)}: {over}; {fix}, shorten or remove the row, or set data.too_long: {keep}"
        )
    cleaned.dropped[reason] += 1
    return None


def cut_to_tokens(example: Example, limit: LengthLimit) -> Example:
    """The longest prefix of the text whose prompt fits (binary search: log2(chars) measures)."""
    def fits(chars: int) -> bool:
        return limit.measure(replace(example, text=example.text[:chars])) <= limit.max_seq_length

    if not fits(1):
        raise TuneGGUFError(
            f"the prompt around the text is already over model.max_seq_length={limit.max_seq_length} tokens; "
            f"raise model.max_seq_length or shorten the prompt template"
        )
    low, high = 1, len(example.text) - 1  # fits(low) holds, fits(len) does not
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return replace(example, text=example.text[:low].rstrip())


def _instruction_examples(table: Table, config: DataConfig, prefix: str) -> Cleaned:
    require_columns(table, [(config.instruction_column, "instruction_column"), (config.output_column, "output_column")])
    has_input = config.input_column in table.columns
    dropped: Counter = Counter()
    examples = []
    for index, row in enumerate(table.rows):
        instruction = text_value(row.get(config.instruction_column))
        given = text_value(row.get(config.input_column)) if has_input else ""
        output = text_value(row.get(config.output_column))
        if not instruction:
            dropped["empty_text"] += 1
            continue
        if not output:
            dropped["empty_output"] += 1
            continue
        if len(instruction) + len(given) < config.min_text_length:
            dropped["too_short"] += 1
            continue
        examples.append(Example(id=f"{prefix}-{index}", instruction=instruction, input=given or None, output=output))
    return Cleaned(examples=examples, rows=len(table.rows), dropped=dropped)


def _chat_examples(table: Table, config: DataConfig, prefix: str, column: str | None = None) -> Cleaned:
    column = column or messages_column(table.columns, config.messages_column)
    if column is None:
        if config.messages_column is not None:
            require_columns(table, [(config.messages_column, "messages_column")])
        raise TuneGGUFError(
            f"{table.name}: no conversation column ('messages' or 'conversations'); columns are "
            f"{', '.join(table.columns) or '(none)'}; set data.messages_column to the column holding them"
        )
    dropped: Counter = Counter()
    truncated: Counter = Counter()
    examples = []
    for index, row in enumerate(table.rows):
        conversation = normalize(row.get(column), f"{table.name}, column '{column}', {table.where(index)}")
        if conversation.drop:
            dropped[conversation.drop] += 1
            continue
        if conversation_length(conversation.messages) < config.min_text_length:
            dropped["too_short"] += 1
            continue
        if conversation.cut:
            truncated[TRAILING_CUT] += 1
        examples.append(Example(id=f"{prefix}-{index}", messages=conversation.messages))
    return Cleaned(examples=examples, rows=len(table.rows), dropped=dropped, truncated=truncated)


def dedupe(cleaned: Cleaned) -> None:
    """Drop exact duplicate texts in place, keeping the first; count label conflicts."""
    first_label: dict[str, str | None] = {}
    kept = []
    for example in cleaned.examples:
        key = example_key(example)
        if key in first_label:
            cleaned.dropped["duplicate"] += 1
            if first_label[key] != reference_answer(example):
                cleaned.conflicts += 1
            continue
        first_label[key] = reference_answer(example)
        kept.append(example)
    cleaned.examples = kept


def count_duplicates(examples: list[Example]) -> tuple[int, int]:
    """(rows whose text appeared earlier, of those with a different label) without dropping."""
    probe = Cleaned(examples=list(examples), rows=len(examples))
    dedupe(probe)
    return probe.dropped["duplicate"], probe.conflicts


def drop_overlap(cleaned: Cleaned, later: list[Example], reason: str = "leakage") -> int:
    """Drop rows whose text is also in `later` (a split scored after training); return the count."""
    keys = {example_key(e) for e in later}
    kept = [e for e in cleaned.examples if example_key(e) not in keys]
    removed = len(cleaned.examples) - len(kept)
    if removed:
        cleaned.dropped[reason] += removed
    cleaned.examples = kept
    return removed


def overlap(a: list[Example], b: list[Example]) -> int:
    """Rows of `a` whose text is also in `b`."""
    keys = {example_key(e) for e in b}
    return sum(example_key(e) in keys for e in a)
