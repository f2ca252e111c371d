"""`tunegguf data ...`: inspect data files and prepare (freeze) the splits of a run config.

Parsing and printing only; the work is in `inspect_files` and `prepare`.
"""

from __future__ import annotations

import json

import click

from tunegguf.cli.common import Group
from tunegguf.errors import TuneGGUFError


def parse_label_map(text: str | None) -> dict[str, str]:
    """'0=negative,1=positive' -> {'0': 'negative', '1': 'positive'}."""
    if not text:
        return {}
    mapping = {}
    for part in text.split(","):
        raw, sep, name = part.partition("=")
        if not sep or not raw.strip() or not name.strip():
            raise TuneGGUFError(f"--label-map: {part!r} is not RAW=CLASS; write e.g. 0=negative,1=positive")
        mapping[raw.strip()] = name.strip()
    return mapping


@click.group("data", cls=Group)
def data_group() -> None:
    """Inspect datasets and freeze the train / validation / test splits."""


@data_group.command("inspect")
@click.argument("files", nargs=-1, required=True)
@click.option("--text-column", "text_columns", multiple=True, help="Column(s) holding the text (repeat to join several).")
@click.option("--label-column", default=None, help="Column holding the label.")
@click.option("--label-map", default=None, help="Raw label -> class, e.g. 0=negative,1=positive.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Take column and label settings from this run config's data section.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON only.")
def inspect_command(files, text_columns, label_column, label_map, config_path, as_json) -> None:
    """Rows, label distribution, text lengths, duplicates and leakage of FILE... ('demo' works too)."""
    from tunegguf.config.run import load_run_config
    from tunegguf.data.inspect import inspect_files, render_inspection

    label_mapping = parse_label_map(label_map) if label_map is not None else None
    config = load_run_config(config_path, flags={
        "data.text_columns": ("--text-column", list(text_columns) or None),
        "data.label_column": ("--label-column", label_column),
        "data.label_map": ("--label-map", label_mapping),
        # An explicit label map replaces the config's star-rating buckets.
        "data.star_ratings": ("--label-map", {} if label_mapping is not None else None),
    }).data
    report = inspect_files(list(files), config)
    if as_json:
        click.echo(json.dumps(report, indent=2, ensure_ascii=False))
        return
    render_inspection(report)


@data_group.command("prepare")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None, help="Run config (YAML).")
@click.option("--set", "overrides", multiple=True, help="Override a setting, e.g. data.max_train_examples=500.")
@click.option("--out", "out_dir", default=None,
              help="Where the frozen splits go (default: <run_dir>/data).")
def prepare_command(config_path, overrides, out_dir) -> None:
    """Load, clean, split and freeze the data of a run config; reuse the files when unchanged."""
    from tunegguf.config.run import load_run_config
    from tunegguf.data.prepare import prepare
    from tunegguf.io import require_output_dir

    run_config = load_run_config(config_path, list(overrides))
    out = require_output_dir(out_dir, "--out") if out_dir else require_output_dir(run_config.run_dir, "run_dir") / "data"
    result = prepare(run_config.data, out)
    state = "reused" if result.reused else "written"
    click.echo(f"data {state}: {out}")
    for split in ("train", "validation", "test"):
        info = result.manifest["splits"][split]
        counts = ", ".join(f"{k} {v}" for k, v in info["label_counts"].items())
        click.echo(f"  {split}: {info['rows']} rows" + (f" ({counts})" if counts else ""))
    if result.class_weights:
        click.echo("  class weights: " + ", ".join(f"{k} {v:.3f}" for k, v in result.class_weights.items()))
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
