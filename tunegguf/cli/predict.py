"""`tunegguf predict`: a string, stdin lines, or a CSV/TSV/JSONL file in and out."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from tunegguf.cli.common import Command, comma_list


def _read_table(path: Path, text_column: str):
    import pandas as pd

    from tunegguf.errors import TuneGGUFError, closest

    if not path.is_file():
        raise TuneGGUFError(f"input file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        elif suffix == ".tsv":
            frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=3)
        elif suffix in (".jsonl", ".json"):
            frame = pd.read_json(path, lines=suffix == ".jsonl", dtype=False)
        else:
            raise TuneGGUFError(f"{path}: unsupported input type {suffix!r}; use .csv, .tsv or .jsonl")
    except UnicodeDecodeError:
        raise TuneGGUFError(f"{path}: not UTF-8 text; re-save it as UTF-8") from None
    if text_column not in frame.columns:
        raise TuneGGUFError(
            f"{path}: no column '{text_column}'{closest(text_column, map(str, frame.columns))}; "
            f"columns: {', '.join(map(str, frame.columns))} (use --text-column)"
        )
    return frame


def _write_table(frame, path: Path) -> None:
    from tunegguf.io import atomic_path

    suffix = path.suffix.lower()
    with atomic_path(path) as tmp:
        if suffix == ".csv":
            frame.to_csv(tmp, index=False)
        elif suffix == ".tsv":
            frame.to_csv(tmp, sep="\t", index=False)
        else:
            frame.to_json(tmp, orient="records", lines=True, force_ascii=False)


@click.command("predict", cls=Command)
@click.argument("texts", nargs=-1)
@click.option("--run", "run_dir", type=click.Path(file_okay=False), help="A tunegguf run directory (prompt, labels, exported files).")
@click.option("--model", default=None, help="A quant name from the run (Q4_K_M, f16, ...), a .gguf file, or an HF checkpoint directory.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Without --run: the run config with the prompt settings.")
@click.option("--labels", default=None, help="Without --run: the labels in order, e.g. negative,positive.")
@click.option("--input", "input_path", type=click.Path(dir_okay=False), help="CSV, TSV or JSONL file to classify.")
@click.option("--output", "output_path", type=click.Path(dir_okay=False), help="Where to write the file with label and probability columns.")
@click.option("--text-column", default="text", show_default=True)
@click.option("--batch-size", default=16, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per text.")
def predict_command(texts, run_dir, model, config_path, labels, input_path, output_path, text_column, batch_size, as_json):
    """Classify TEXTS (or stdin lines, or --input FILE) with the same prompt and scoring as the evaluator.

    \b
    tunegguf predict --run runs/demo "the battery died after a day"
    cat reviews.txt | tunegguf predict --run runs/demo --model f16
    tunegguf predict --run runs/demo --input reviews.csv --output scored.csv
    """
    from tunegguf.config.run import load_run_config
    from tunegguf.errors import TuneGGUFError
    from tunegguf.pipeline.predict import Predictor, predict, predictor_from_run

    if run_dir:
        predictor = predictor_from_run(Path(run_dir), model)
    else:
        if not (model and labels):
            raise TuneGGUFError("give --run RUN_DIR, or --model with --labels (and --config for the prompt settings)")
        config = load_run_config(config_path)
        predictor = Predictor(model=Path(model), prompt=config.prompt, labels=comma_list(labels),
                              n_threads=config.evaluate.n_threads, n_ctx=config.evaluate.n_ctx,
                              config_path=Path(config_path) if config_path else None)

    frame = None
    if input_path:
        frame = _read_table(Path(input_path), text_column)
        items = [str(t) for t in frame[text_column].tolist()]
    elif texts and texts != ("-",):
        items = list(texts)
    elif not sys.stdin.isatty() or texts == ("-",):
        items = [line.rstrip("\n") for line in sys.stdin if line.strip()]
    else:
        items = []
    if not items:
        raise TuneGGUFError("nothing to classify: give TEXT arguments, pipe lines on stdin, or use --input FILE")

    results = predict(predictor, items, batch_size=batch_size)
    if frame is not None:
        frame["label"] = [r.label for r in results]
        frame["probability"] = [round(r.probability, 6) for r in results]
        for label in predictor.labels:
            frame[f"p_{label}"] = [round(r.probabilities[label], 6) for r in results]
        if output_path:
            _write_table(frame, Path(output_path))
            click.echo(f"wrote {len(results)} rows to {output_path} (model: {predictor.model})", err=True)
            return
    for r in results:
        if as_json:
            click.echo(json.dumps({"text": r.text, "label": r.label, "probability": r.probability,
                                   "probabilities": r.probabilities}, ensure_ascii=False))
        else:
            click.echo(f"{r.label}\t{r.probability:.3f}\t{r.text}")
