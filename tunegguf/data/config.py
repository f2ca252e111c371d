"""Where the examples come from and how they are cleaned, balanced and split."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class DataConfig:
    train: str = "demo"
    """A file (.csv .tsv .jsonl .json .parquet), a `datasets.save_to_disk` directory, a hub
    dataset name (online only), or "demo" for the project's own small sentiment set."""

    validation: str | None = None
    """A separate validation file; None carves `validation_fraction` out of train."""

    test: str | None = None
    """The split the report is scored on; None uses `validation` (when given) or carves
    `test_fraction` out of train. Checkpoints are never picked on it."""

    task: Literal["classification", "instruction"] = "classification"

    text_columns: list[str] = field(default_factory=lambda: ["text"])
    """Columns joined (with a blank line) into the text to classify."""

    label_column: str = "label"

    instruction_column: str = "instruction"
    input_column: str = "input"
    output_column: str = "output"

    labels: list[str] = field(default_factory=list)
    """The class names, in order; empty: the sorted values found (after label_map)."""

    label_map: dict[str, str] = field(default_factory=dict)
    """Raw label value -> class name, e.g. {"0": "negative", "1": "positive"}. Keys are
    compared as text, so 0 and "0" match."""

    star_ratings: dict[str, str] = field(default_factory=dict)
    """Numeric rating ranges -> class, e.g. {"1-2": "negative", "4-5": "positive"};
    ratings in no range (3) are dropped."""

    min_text_length: int = 1
    dedupe: bool = True
    balance: Literal["none", "undersample", "oversample", "class_weights"] = "none"
    max_per_class: int | None = None
    """Cap on training examples per class (after balancing)."""

    max_train_examples: int | None = None
    max_eval_examples: int | None = None
    """Cap on validation and test rows (stratified), for quick runs."""

    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 42
    imbalance_warning: float = 0.65
    """Warn when the majority class holds more than this share of a split."""
