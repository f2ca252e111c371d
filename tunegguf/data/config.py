"""Where the examples come from and how they are cleaned, balanced and split."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class DataConfig:
    train: str = "demo"
    """A file (.csv .tsv .jsonl .json .parquet), a `datasets.save_to_disk` directory, a hub
    dataset name (online only), "demo" for the project's own small sentiment set, or
    "demo-instruct" for its own instruction set (task: chat, answers checkable exactly)."""

    split_names: dict[str, str] = field(
        default_factory=lambda: {"train": "train", "validation": "validation", "test": "test"}
    )
    """Which split of a `save_to_disk` DatasetDict or a hub dataset each source reads, by the
    setting it was named in (train / validation / test); the same directory may be given
    for all three. Missing keys fall back to the setting's own name."""

    validation: str | None = None
    """A separate validation file; None carves `validation_fraction` out of train."""

    test: str | None = None
    """The split the report is scored on; None uses `validation` (when given) or carves
    `test_fraction` out of train. Checkpoints are never picked on it."""

    task: Literal["classification", "instruction", "chat"] = "classification"
    """classification: text + label, splits stratified by label; instruction: instruction,
    optional input, and the output to learn (no labels, plain random splits); chat: a
    conversation per row (OpenAI `messages` or ShareGPT `conversations`), loss on every
    assistant turn, the last assistant turn being the answer scored (plain random splits)."""

    text_columns: list[str] = field(default_factory=lambda: ["text"])
    """Columns joined (with a blank line) into the text to classify."""

    label_column: str = "label"

    instruction_column: str = "instruction"
    input_column: str = "input"
    output_column: str = "output"

    messages_column: str | None = None
    """task: chat: the column holding each row's conversation, a list of {"role", "content"}
    (OpenAI) or {"from", "value"} (ShareGPT: human, gpt, system) messages, or that list as a
    JSON string. null: "messages", else "conversations"."""

    answers_checkable: bool | None = None
    """Whether a reference answer can be checked by exact match (arithmetic, extraction),
    so the report scores exact match against it, not only chrF. null: true for
    "demo-instruct", false otherwise. Recorded in the data manifest."""

    labels: list[str] = field(default_factory=list)
    """The class names, in order; empty: the sorted values found (after label_map)."""

    label_map: dict[str, str] = field(default_factory=dict)
    """Raw label value -> class name, e.g. {"0": "negative", "1": "positive"}. Keys are
    compared as text, so 0 and "0" match."""

    star_ratings: dict[str, str] = field(default_factory=dict)
    """Numeric rating ranges -> class, e.g. {"1-2": "negative", "4-5": "positive"};
    ratings in no range (3) are dropped."""

    min_text_length: int = 1
    """Rows whose text (stripped) is shorter than this many characters are dropped."""

    max_text_length: int | None = 100_000
    """Rows whose text (classification), instruction + input, or conversation (all messages'
    content, task: chat) is longer than this many
    characters are handled by `too_long`; a cheap cap that needs no tokenizer. null: no cap.
    A caller with the tokenizer (`prepare(..., length_limit=LengthLimit(...))`) holds rows to
    model.max_seq_length tokens the same way; `tunegguf run` leaves that to the fine-tune,
    which drops over-long training rows with a note, and to `evaluate.too_long`."""

    too_long: Literal["drop", "truncate", "error"] = "drop"
    """Rows over max_text_length (or model.max_seq_length tokens). drop: leave them out,
    counted as too_long in the data manifest with a warning; truncate: cut the text to fit
    (classification only: cutting an instruction row changes what its answer answers);
    error: stop at the first one, naming the file and row."""

    dedupe: bool = True
    """Drop exact duplicate texts (keep the first) and drop from train (and validation) any
    text that is also in a later split, so no scored row was seen in training."""

    balance: Literal["none", "undersample", "oversample", "class_weights"] = "none"
    """Train split only. undersample / oversample resample to the smallest / largest class;
    class_weights leaves the rows alone and returns weights n / (classes * count)."""
    max_per_class: int | None = None
    """Cap on training examples per class (after balancing)."""

    max_train_examples: int | None = None
    """Stratified, seeded subsample of train (after balancing), for quick runs."""

    max_eval_examples: int | None = None
    """Cap on validation and test rows (stratified), for quick runs."""

    validation_fraction: float = 0.1
    """Share of the (cleaned) train source carved out as validation when no validation
    file serves as validation (also when the validation file is taken as test)."""

    test_fraction: float = 0.1
    """Share of the train source carved out as test when neither test nor validation is given."""

    seed: int = 42
    """Seeds the splits, resampling and subsamples: same seed and sources, same files."""

    imbalance_warning: float = 0.65
    """Warn when the majority class holds more than this share of a split."""

    def __post_init__(self) -> None:
        # ValueError here becomes a one-line TuneGGUFError in `from_dict`; each names the setting.
        if not self.text_columns and self.task == "classification":
            raise ValueError("data.text_columns: give at least one column to read the text from")
        if self.messages_column is not None and not self.messages_column.strip():
            raise ValueError("data.messages_column: give a column name, or null to find 'messages' / 'conversations'")
        for name in ("validation_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ValueError(f"data.{name}: {value} must be between 0 and 1 (exclusive)")
        if self.validation_fraction + self.test_fraction >= 0.9:
            raise ValueError(
                "data.validation_fraction + data.test_fraction leave under 10% for training; lower them"
            )
        if not 0.5 <= self.imbalance_warning <= 1.0:
            raise ValueError(f"data.imbalance_warning: {self.imbalance_warning} must be between 0.5 and 1")
        if self.min_text_length < 0:
            raise ValueError("data.min_text_length: must be 0 or more")
        if self.max_text_length is not None and self.max_text_length < max(1, self.min_text_length):
            raise ValueError(
                f"data.max_text_length: {self.max_text_length} must be at least data.min_text_length "
                f"({self.min_text_length}) and 1 (or null for no cap)"
            )
        if self.too_long == "truncate" and self.task != "classification":
            raise ValueError("data.too_long: truncate applies to task: classification only; use drop or error")
        for name in ("max_per_class", "max_train_examples", "max_eval_examples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"data.{name}: {value} must be 1 or more (or null for no cap)")
        if self.label_map and self.star_ratings:
            raise ValueError("data.label_map and data.star_ratings are both set; use one of them")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"data.labels lists a class twice: {self.labels}")
        for key in self.star_ratings:
            parse_rating_range(key)  # raises with the key's name when malformed
        if self.task != "classification" and self.balance != "none":
            raise ValueError("data.balance applies to task: classification only; set it to none")


def parse_rating_range(key: str) -> tuple[float, float]:
    """'1-2' -> (1.0, 2.0), '5' -> (5.0, 5.0); both ends inclusive."""
    text = str(key).strip()
    lo, sep, hi = text.partition("-")
    if not sep:
        hi = lo
    try:
        low, high = float(lo), float(hi)
    except ValueError:
        raise ValueError(
            f"data.star_ratings: key {key!r} is not a rating range like '1-2' or '5'"
        ) from None
    if low > high:
        raise ValueError(f"data.star_ratings: range {key!r} runs backwards; write it as '{hi}-{lo}'")
    return low, high
