"""Look at data files before training: sizes, labels, text lengths, duplicates, leakage.

`inspect_files` returns a plain dict (what `tunegguf data inspect --json` prints);
`render_inspection` draws it as rich tables.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from tunegguf.data.clean import count_duplicates, overlap, text_length, to_examples
from tunegguf.data.config import DataConfig
from tunegguf.data.loaders import load_table
from tunegguf.data.prepare import distribution_warnings


def _percentiles(lengths: list[int]) -> dict[str, float]:
    import numpy as np

    if not lengths:
        return {"p5": 0, "p50": 0, "p95": 0, "max": 0}
    values = np.asarray(lengths)
    p5, p50, p95 = np.percentile(values, [5, 50, 95])
    return {"p5": float(p5), "p50": float(p50), "p95": float(p95), "max": int(values.max())}


def inspect_files(paths: list[str], config: DataConfig) -> dict[str, Any]:
    """Per file: rows, kept rows, drop reasons, label distribution, text length percentiles
    (characters), duplicates; across files: rows shared by each pair (leakage); warnings."""
    files = []
    examples = {}
    for position, path in enumerate(paths):
        table = load_table(path, setting=None, split_name=config.split_names.get("train", "train"))
        cleaned = to_examples(table, config, prefix=f"f{position}")
        rows = cleaned.examples
        duplicates, conflicts = count_duplicates(rows)
        counts = Counter(e.label for e in rows if e.label is not None)
        total = sum(counts.values())
        warnings = distribution_warnings(table.name, counts, config.imbalance_warning) if counts else []
        if duplicates:
            conflict = f", {conflicts} with a different label" if conflicts else ""
            warnings.append(f"{table.name}: {duplicates} duplicate texts{conflict}")
        files.append({
            "path": str(path),
            "name": table.name,
            "sha256": table.source.get("sha256"),
            "rows": cleaned.rows,
            "kept": len(rows),
            "dropped": dict(sorted(cleaned.dropped.items())),
            "labels": {label: {"count": n, "share": round(n / total, 4)} for label, n in sorted(counts.items())},
            "text_chars": _percentiles([text_length(e) for e in rows]),
            "duplicates": duplicates,
            "duplicate_label_conflicts": conflicts,
            "warnings": warnings,
        })
        examples[position] = rows
    leakage = []
    for i in range(len(paths)):
        for j in range(i + 1, len(paths)):
            shared = overlap(examples[j], examples[i])
            leakage.append({"a": files[i]["name"], "b": files[j]["name"], "rows_of_b_in_a": shared})
    warnings = [w for f in files for w in f["warnings"]]
    warnings += [f"leakage: {p['rows_of_b_in_a']} rows of {p['b']} also appear in {p['a']}"
                 for p in leakage if p["rows_of_b_in_a"]]
    return {"files": files, "leakage": leakage, "warnings": warnings}


def render_inspection(report: dict[str, Any], console=None) -> None:
    """Print the report as rich tables (one summary row per file, then labels and warnings)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    summary = Table(title="data files (text length in characters)")
    summary.add_column("file", no_wrap=True)
    for column in ("rows", "kept", "dropped", "dups", "p5", "p50", "p95", "max"):
        summary.add_column(column, justify="left" if column == "dropped" else "right")
    for f in report["files"]:
        dropped = ", ".join(f"{k} {v}" for k, v in f["dropped"].items()) or "-"
        chars = f["text_chars"]
        summary.add_row(f["name"], f"{f['rows']:,}", f"{f['kept']:,}", dropped, f"{f['duplicates']:,}",
                        f"{chars['p5']:.0f}", f"{chars['p50']:.0f}", f"{chars['p95']:.0f}", f"{chars['max']:,}")
    console.print(summary)
    labels = Table(title="labels")
    labels.add_column("file")
    labels.add_column("label")
    labels.add_column("count", justify="right")
    labels.add_column("share", justify="right")
    for f in report["files"]:
        for label, info in f["labels"].items():
            labels.add_row(f["name"], label, f"{info['count']:,}", f"{info['share']:.1%}")
    if labels.row_count:
        console.print(labels)
    if report["leakage"]:
        leak = Table(title="shared texts between files")
        for column in ("file a", "file b", "rows of b in a"):
            leak.add_column(column)
        for pair in report["leakage"]:
            leak.add_row(pair["a"], pair["b"], f"{pair['rows_of_b_in_a']:,}")
        console.print(leak)
    for warning in report["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
