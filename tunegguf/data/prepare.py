"""The data stage: load the sources, clean, split, balance, and freeze the splits with a manifest.

`prepare(config, out_dir)` writes `out_dir/{train,validation,test}.jsonl` (one
`Example.to_dict()` a line) and `out_dir/data_manifest.json`. Run again with the same
config and unchanged source files, it reuses them without reading the sources.

Which rows score what: when `validation` is given but `test` is not, that file becomes the
test split and validation is carved out of train, so checkpoints are never picked on the
split that is reported.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunegguf.config.typed import to_dict
import tunegguf.data.split as splitting
from tunegguf.data.chat import DROP_REASONS, TRAILING_CUT
from tunegguf.data.clean import Cleaned, LengthLimit, dedupe, drop_overlap, overlap, to_examples
from tunegguf.data.config import DataConfig
from tunegguf.data.example import Example
from tunegguf.data.loaders import load_table, source_fingerprint
from tunegguf.errors import TuneGGUFError
from tunegguf.io import read_json, read_jsonl, sha256_file, write_json, write_jsonl

SPLITS = ("train", "validation", "test")
MANIFEST = "data_manifest.json"
# Bump when the preparation logic changes what lands in the files, so old runs are redone.
PREPARE_VERSION = 3
# A class with under this share of an even split (1 / classes) is "tiny" next to the others.
TINY_CLASS_SHARE = 0.2


@dataclass
class PreparedData:
    train: Path
    validation: Path
    test: Path
    labels: list[str]
    task: str
    manifest: dict[str, Any]
    class_weights: dict[str, float] | None
    warnings: list[str]
    reused: bool = False
    """True when the frozen files from an earlier identical run were kept as they were."""

    def path(self, split: str) -> Path:
        if split not in SPLITS:
            raise TuneGGUFError(f"unknown split '{split}'; splits are {', '.join(SPLITS)}")
        return getattr(self, split)

    def load(self, split: str) -> list[Example]:
        return load_split(self.path(split))


def load_split(path: str | Path) -> list[Example]:
    """Read one frozen split file back into Examples."""
    path = Path(path)
    if not path.is_file():
        raise TuneGGUFError(f"split file not found: {path}; run the data stage first")
    return [Example.from_dict(row) for row in read_jsonl(path)]


def run(config: DataConfig, out_dir: str | Path, length_limit: LengthLimit | None = None) -> PreparedData:
    """The stage entry point (same as `prepare`)."""
    return prepare(config, out_dir, length_limit)


@dataclass
class _Plan:
    """Which source each split comes from; None: carved out of train."""

    sources: dict[str, tuple[str, str] | None]
    """split -> (source string, setting it was named in)."""
    notes: list[str] = field(default_factory=list)


def _plan(config: DataConfig) -> _Plan:
    sources: dict[str, tuple[str, str] | None] = {"train": (config.train, "train"), "validation": None, "test": None}
    plan = _Plan(sources)
    if config.test:
        sources["test"] = (config.test, "test")
        if config.validation:
            sources["validation"] = (config.validation, "validation")
    elif config.validation:
        # The given validation file is what gets reported; pick checkpoints on a slice of train.
        sources["test"] = (config.validation, "validation")
        plan.notes.append(
            f"data.test is not set: the validation file scores the report (test split) and validation "
            f"is {config.validation_fraction:.0%} carved out of train"
        )
    return plan


def _split_name(config: DataConfig, setting: str) -> str:
    return config.split_names.get(setting, setting)


def _fingerprint(config: DataConfig, plan: _Plan,
                 length_limit: LengthLimit | None) -> tuple[str | None, dict[str, Any]]:
    sources = {}
    for split, entry in plan.sources.items():
        if entry is not None:
            source, setting = entry
            sources[split] = source_fingerprint(source, setting, _split_name(config, setting))
    if any(s.get("sha256") is None for s in sources.values()):
        return None, sources  # a hub dataset: cannot tell whether it changed without loading it
    limit = None if length_limit is None else [length_limit.max_seq_length, length_limit.identity]
    payload = json.dumps({"version": PREPARE_VERSION, "config": to_dict(config), "sources": sources,
                          "length_limit": limit}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest(), sources


def _reuse(out_dir: Path, fingerprint: str | None) -> PreparedData | None:
    manifest_path = out_dir / MANIFEST
    if fingerprint is None or not manifest_path.is_file():
        return None
    try:
        manifest = read_json(manifest_path)
    except (OSError, ValueError):
        return None
    if manifest.get("fingerprint") != fingerprint:
        return None
    for split in SPLITS:
        path = out_dir / f"{split}.jsonl"
        if not path.is_file() or sha256_file(path) != manifest["splits"][split]["sha256"]:
            return None
    return _result(out_dir, manifest, reused=True)


def _result(out_dir: Path, manifest: dict[str, Any], reused: bool) -> PreparedData:
    return PreparedData(
        train=out_dir / "train.jsonl",
        validation=out_dir / "validation.jsonl",
        test=out_dir / "test.jsonl",
        labels=list(manifest["labels"]),
        task=manifest["task"],
        manifest=manifest,
        class_weights=manifest.get("class_weights"),
        warnings=list(manifest.get("warnings", [])),
        reused=reused,
    )


def prepare(config: DataConfig, out_dir: str | Path, length_limit: LengthLimit | None = None) -> PreparedData:
    """Load, clean, split, balance and freeze; reuse the frozen files when nothing changed.

    `length_limit` (from a caller that has the tokenizer and prompt) also holds every row to
    model.max_seq_length tokens; data.max_text_length (characters) applies either way."""
    out_dir = Path(out_dir)
    plan = _plan(config)
    fingerprint, fingerprints = _fingerprint(config, plan, length_limit)
    reused = _reuse(out_dir, fingerprint)
    if reused is not None:
        return reused

    warnings: list[str] = list(plan.notes)
    cleaned: dict[str, Cleaned] = {}
    tables = {}
    for split, entry in plan.sources.items():
        if entry is None:
            continue
        source, setting = entry
        table = load_table(source, setting, _split_name(config, setting))
        tables[split] = table
        _require_demo_task(table, config, setting)
        cleaned[split] = to_examples(table, config, prefix=split, limit=length_limit)
        warnings += length_warnings(cleaned[split], table.name, config, length_limit)
        warnings += chat_warnings(cleaned[split], table.name)
        if config.dedupe:
            dedupe(cleaned[split])
        _require_rows(cleaned[split], table.name, split, config)

    _remove_leakage(cleaned, config, warnings)
    for split, part in cleaned.items():
        _require_rows(part, tables[split].name, split, config)
        if part.dropped["duplicate"]:
            conflict = f", {part.conflicts} of them with a different label" if part.conflicts else ""
            warnings.append(f"{tables[split].name}: dropped {part.dropped['duplicate']} duplicate texts "
                            f"(kept the first){conflict}")

    splits, dropped, extra_warnings = _split_and_balance(cleaned, config)
    warnings += extra_warnings
    labels = _labels(config, splits)
    weights = None
    if config.balance == "class_weights":
        weights = splitting.class_weights(splits["train"], labels)
    warnings += split_warnings(splits, labels, config)

    out_dir.mkdir(parents=True, exist_ok=True)
    split_info = {}
    for split in SPLITS:
        path = out_dir / f"{split}.jsonl"
        write_jsonl(path, (e.to_dict() for e in splits[split]))
        split_info[split] = {
            "path": path.name,
            "rows": len(splits[split]),
            "sha256": sha256_file(path),
            "label_counts": dict(sorted(Counter(e.label for e in splits[split] if e.label is not None).items())),
            "source": "carved from train" if plan.sources[split] is None else plan.sources[split][1],
        }
    sources = {}
    for split, table in tables.items():
        sources[split] = {**fingerprints.get(split, {}), **table.source, "setting": plan.sources[split][1],
                          "rows": cleaned[split].rows}
    manifest = {
        "version": PREPARE_VERSION,
        "fingerprint": fingerprint,
        "task": config.task,
        "labels": labels,
        "splits": split_info,
        "sources": sources,
        "dropped": dropped,
        "truncated": {split: dict(sorted(part.truncated.items())) for split, part in cleaned.items() if part.truncated},
        "class_weights": weights,
        "answers_checkable": answers_checkable(config, tables),
        "warnings": warnings,
        "config": to_dict(config),
    }
    write_json(out_dir / MANIFEST, manifest)
    return _result(out_dir, manifest, reused=False)


# The project's own sets and the task each is made for.
DEMO_TASKS = {"demo": "classification", "demo-instruct": "chat"}


def _require_demo_task(table, config: DataConfig, setting: str) -> None:
    kind = table.source.get("kind")
    task = DEMO_TASKS.get(kind)
    if task is not None and task != config.task:
        other = next((name for name, t in DEMO_TASKS.items() if t == config.task), None)
        fix = f"use data.{setting}: {other}" if other else f"give a {config.task} file"
        raise TuneGGUFError(
            f"data.{setting}: the {kind} set is for task: {task}, not {config.task}; set data.task: {task} or {fix}"
        )


def answers_checkable(config: DataConfig, tables: dict[str, Any]) -> bool:
    """data.answers_checkable, or (null) whether every source is a set whose answers are exact."""
    if config.task == "classification":
        return True  # a label is right or wrong
    if config.answers_checkable is not None:
        return config.answers_checkable
    return bool(tables) and all(t.source.get("kind") == "demo-instruct" for t in tables.values())


def chat_warnings(part: Cleaned, name: str) -> list[str]:
    """One line per reason chat rows were dropped, and for conversations cut after their last answer."""
    warnings = [f"{name}: dropped {part.dropped[reason]} conversations with {why}"
                for reason, why in DROP_REASONS.items() if part.dropped[reason]]
    if part.truncated[TRAILING_CUT]:
        warnings.append(f"{name}: cut the turns after the last assistant turn in {part.truncated[TRAILING_CUT]} "
                        f"conversations (nothing to learn from them)")
    return warnings


def _require_rows(part: Cleaned, name: str, split: str, config: DataConfig) -> None:
    if not part.examples:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(part.dropped.items())) or "no data rows"
        settings = {"chat": "data.messages_column and the conversations",
                    "instruction": "data.instruction_column / output_column"}.get(config.task, "data.text_columns")
        what = "" if config.task != "classification" else " and the label settings"
        raise TuneGGUFError(
            f"{name}: no rows left for {split} after filtering ({part.rows} rows; dropped {reasons}); "
            f"check {settings}, data.min_text_length / max_text_length{what}"
        )
    if config.task == "classification" and split == "train":
        classes = {e.label for e in part.examples}
        if len(classes) < 2:
            raise TuneGGUFError(
                f"{name}: only one class left after filtering ({next(iter(classes))!r}, {len(part.examples)} rows); "
                f"a classifier needs at least two; check data.label_map / data.star_ratings / data.label_column"
            )


def length_warnings(part: Cleaned, name: str, config: DataConfig, limit: LengthLimit | None) -> list[str]:
    """One line per limit that dropped or cut rows (data.too_long: drop / truncate)."""
    limits = {"too_long": f"data.max_text_length={config.max_text_length} characters"}
    if limit is not None:
        limits["too_long_tokens"] = f"model.max_seq_length={limit.max_seq_length} tokens"
    warnings = []
    for reason, over in limits.items():
        if part.dropped[reason]:
            warnings.append(f"{name}: dropped {part.dropped[reason]} rows over {over} (data.too_long: drop)")
        if part.truncated[reason]:
            warnings.append(f"{name}: cut {part.truncated[reason]} rows to {over} (data.too_long: truncate)")
    return warnings


def _remove_leakage(cleaned: dict[str, Cleaned], config: DataConfig, warnings: list[str]) -> None:
    """Texts in a later split (test, then validation) must not be trained or selected on."""
    pairs = [("train", "test"), ("validation", "test"), ("train", "validation")]
    for earlier, later in pairs:
        if earlier not in cleaned or later not in cleaned:
            continue
        if config.dedupe:
            n = drop_overlap(cleaned[earlier], cleaned[later].examples)
            if n:
                warnings.append(f"leakage: {n} {earlier} rows had text also in {later}; dropped them from {earlier}")
        else:
            n = overlap(cleaned[earlier].examples, cleaned[later].examples)
            if n:
                warnings.append(f"leakage: {n} {earlier} rows have text also in {later} "
                                f"(kept because data.dedupe is false)")


def _split_and_balance(cleaned: dict[str, Cleaned], config: DataConfig):
    """Carve missing splits from train, cap eval splits, balance and cap train."""
    warnings: list[str] = []
    dropped = {split: dict(sorted(part.dropped.items())) for split, part in cleaned.items()}
    train = cleaned["train"].examples
    total = len(train)
    splits: dict[str, list[Example]] = {}
    for split, fraction in (("test", config.test_fraction), ("validation", config.validation_fraction)):
        if split in cleaned:
            splits[split] = cleaned[split].examples
            continue
        count = max(1, round(total * fraction))
        if len(train) - count < 2:
            raise TuneGGUFError(
                f"data.train: {len(train)} rows are too few to carve a {split} split of {count}; "
                f"give data.{split} or more rows"
            )
        train, splits[split], stratified = splitting.carve(train, count, config.seed)
        if not stratified and config.task == "classification":
            warnings.append(f"{split}: carved from train without stratification (a class has too few rows)")
    for split in ("validation", "test"):
        before = len(splits[split])
        splits[split], stratified = splitting.subsample(splits[split], config.max_eval_examples, config.seed)
        if before > len(splits[split]):
            dropped.setdefault(split, {})["max_eval_examples"] = before - len(splits[split])
            if not stratified and config.task == "classification":
                warnings.append(f"{split}: max_eval_examples subsample is not stratified (a class has too few rows)")

    before = len(train)
    if config.balance == "undersample":
        train = splitting.undersample(train, config.seed)
        dropped["train"]["undersampled"] = before - len(train)
    elif config.balance == "oversample":
        train = splitting.oversample(train, config.seed)
        dropped["train"]["oversampled_added"] = len(train) - before
    if config.max_per_class is not None:
        before = len(train)
        train = splitting.cap_per_class(train, config.max_per_class, config.seed)
        if before > len(train):
            dropped["train"]["max_per_class"] = before - len(train)
    before = len(train)
    train, stratified = splitting.subsample(train, config.max_train_examples, config.seed)
    if before > len(train):
        dropped["train"]["max_train_examples"] = before - len(train)
        if not stratified and config.task == "classification":
            warnings.append("train: max_train_examples subsample is not stratified (a class has too few rows)")
    splits["train"] = splitting.shuffle(train, config.seed)
    if config.task == "classification" and len({e.label for e in splits["train"]}) < 2:
        raise TuneGGUFError(
            "data.max_train_examples / data.max_per_class left a single class in train; raise them"
        )
    return {split: splits[split] for split in SPLITS}, dropped, warnings


def _labels(config: DataConfig, splits: dict[str, list[Example]]) -> list[str]:
    if config.task != "classification":
        return []
    if config.labels:
        return list(config.labels)
    return sorted({e.label for rows in splits.values() for e in rows})


def split_warnings(splits: dict[str, list[Example]], labels: list[str], config: DataConfig) -> list[str]:
    """Imbalance and tiny-class warnings for each split, and classes missing from train."""
    warnings = []
    if config.task != "classification":
        return warnings
    for split, rows in splits.items():
        counts = Counter(e.label for e in rows)
        warnings += distribution_warnings(split, counts, config.imbalance_warning)
    missing = [label for label in labels if not any(e.label == label for e in splits["train"])]
    if missing:
        warnings.append(f"train: no rows of class {', '.join(map(repr, missing))}; the model cannot learn it")
    return warnings


def distribution_warnings(name: str, counts: Counter, imbalance: float) -> list[str]:
    total = sum(counts.values())
    if not total:
        return []
    warnings = []
    label, top = counts.most_common(1)[0]
    if top / total > imbalance:
        warnings.append(
            f"{name}: majority class '{label}' is {top / total:.0%} of {total} rows (over {imbalance:.0%}); "
            f"consider data.balance, and read per-class recall, not only accuracy"
        )
    # Few rows on a small balanced split are not a problem to flag; a class far below an
    # even share is (too few to learn it, and its recall on the splits is noise).
    even = 1 / len(counts)
    for label, n in sorted(counts.items()):
        if n / total < TINY_CLASS_SHARE * even:
            warnings.append(f"{name}: class '{label}' is tiny ({n} of {total} rows, {n / total:.1%}; an even split "
                            f"gives each class {even:.0%}); add rows of it or consider data.balance")
    return warnings
