"""Seeded splitting, subsampling and class balancing (sklearn does the stratified draws).

Each function takes a list of Examples and returns new lists; the kept rows stay in their
source order, so the frozen files are easy to diff and depend only on the data and seed.
"""

from __future__ import annotations

import random
from collections import Counter

from tunegguf.data.example import Example


def _labels(examples: list[Example]) -> list[str] | None:
    """Stratification targets, or None for instruction rows."""
    if not examples or not examples[0].is_classification:
        return None
    return [e.label for e in examples]


def carve(examples: list[Example], count: int, seed: int) -> tuple[list[Example], list[Example], bool]:
    """Split off `count` rows (stratified by label when possible): (rest, carved, stratified)."""
    from sklearn.model_selection import train_test_split

    count = max(1, min(count, len(examples) - 1))
    index = list(range(len(examples)))
    labels = _labels(examples)
    stratified = labels is not None
    try:
        rest, picked = train_test_split(index, test_size=count, random_state=seed, stratify=labels)
    except ValueError:
        # A class with a single row, or fewer carved rows than classes: sklearn cannot
        # stratify. A plain seeded draw still gives a reproducible split (and a warning).
        rest, picked = train_test_split(index, test_size=count, random_state=seed)
        stratified = False
    return [examples[i] for i in sorted(rest)], [examples[i] for i in sorted(picked)], stratified


def subsample(examples: list[Example], count: int | None, seed: int) -> tuple[list[Example], bool]:
    """Keep `count` rows, stratified by label when possible: (kept, stratified)."""
    if count is None or count >= len(examples):
        return examples, True
    _, kept, stratified = carve(examples, count, seed)
    return kept, stratified


def undersample(examples: list[Example], seed: int) -> list[Example]:
    """Every class cut down to the smallest class's count (seeded draw per class)."""
    counts = Counter(e.label for e in examples)
    return cap_per_class(examples, min(counts.values()), seed) if counts else examples


def oversample(examples: list[Example], seed: int) -> list[Example]:
    """Every class topped up to the largest class's count by repeating random rows.

    Copies get ids `<id>~<k>` so ids stay unique within the split.
    """
    rng = random.Random(seed)
    by_class: dict[str, list[Example]] = {}
    for example in examples:
        by_class.setdefault(example.label, []).append(example)
    target = max((len(rows) for rows in by_class.values()), default=0)
    extra = []
    for label in sorted(by_class):
        rows = by_class[label]
        for k in range(target - len(rows)):
            source = rows[rng.randrange(len(rows))]
            extra.append(Example(id=f"{source.id}~{k + 1}", text=source.text, label=source.label))
    return examples + extra


def cap_per_class(examples: list[Example], cap: int | None, seed: int) -> list[Example]:
    """At most `cap` rows of each class (a seeded draw, source order kept)."""
    if cap is None:
        return examples
    rng = random.Random(seed)
    by_class: dict[str, list[int]] = {}
    for i, example in enumerate(examples):
        by_class.setdefault(example.label, []).append(i)
    keep: set[int] = set()
    for label in sorted(by_class):
        rows = by_class[label]
        keep.update(rows if len(rows) <= cap else rng.sample(rows, cap))
    return [examples[i] for i in sorted(keep)]


def class_weights(examples: list[Example], labels: list[str]) -> dict[str, float]:
    """sklearn's 'balanced' weights, n / (classes * count), for the classes present."""
    import numpy as np
    from sklearn.utils.class_weight import compute_class_weight

    present = [label for label in labels if any(e.label == label for e in examples)]
    weights = compute_class_weight("balanced", classes=np.array(present), y=np.array([e.label for e in examples]))
    return {label: round(float(w), 6) for label, w in zip(present, weights)}


def shuffle(examples: list[Example], seed: int) -> list[Example]:
    """Seeded shuffle for the train file, so a reader that does not shuffle still mixes classes."""
    rows = list(examples)
    random.Random(seed).shuffle(rows)
    return rows
