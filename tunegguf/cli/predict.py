"""`tunegguf predict`: strings, stdin lines, or a CSV/TSV/JSONL/JSON/Parquet file in; lines or a file out."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from tunegguf.cli.common import Command, comma_list


OUTPUT_TYPES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")


def _write_table(frame, path: Path) -> None:
    from tunegguf.io import atomic_path

    suffix = path.suffix.lower()
    with atomic_path(path) as tmp:
        if suffix in (".csv", ".tsv"):
            frame.to_csv(tmp, sep="," if suffix == ".csv" else "\t", index=False)
        elif suffix == ".parquet":
            frame.to_parquet(tmp, index=False)
        else:
            frame.to_json(tmp, orient="records", lines=suffix == ".jsonl", force_ascii=False)


@click.command("predict", cls=Command)
@click.argument("texts", nargs=-1)
@click.option("--run", "run_dir", type=click.Path(file_okay=False), help="A tunegguf run directory (prompt, labels, exported files).")
@click.option("--model", default=None, help="A quant name from the run (Q4_K_M, f16, ...), a .gguf file, or an HF checkpoint directory.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Without --run: the run config with the prompt settings.")
@click.option("--labels", default=None, help="Without --run: the labels in order, e.g. negative,positive.")
@click.option("--input", "input_path", type=click.Path(dir_okay=False), help="CSV, TSV, JSONL, JSON or Parquet file to classify (read as the data stage reads).")
@click.option("--output", "output_path", default=None,
              help="Write the texts with label and probability columns to this .csv, .tsv, .jsonl, .json or "
                   ".parquet file (from --input, TEXT arguments or stdin) instead of printing them.")
@click.option("--text-column", default="text", show_default=True)
@click.option("--batch-size", default=16, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per text.")
def predict_command(texts, run_dir, model, config_path, labels, input_path, output_path, text_column, batch_size, as_json):
    """Classify TEXTS (or stdin lines, or --input FILE) with the same prompt and scoring as the evaluator.

    \b
    tunegguf predict --run runs/demo "the battery died after a day"
    cat reviews.txt | tunegguf predict --run runs/demo --model f16
    tunegguf predict --run runs/demo --input reviews.csv --output scored.csv
    tunegguf predict --run runs/demo --output scored.jsonl "great" "awful"
    """
    import pandas as pd

    from tunegguf.config.run import load_run_config
    from tunegguf.data import load_rows
    from tunegguf.errors import TuneGGUFError
    from tunegguf.pipeline.predict import Predictor, predict, predictor_from_run

    output = Path(output_path) if output_path else None
    if output is not None and (output.is_dir() or output.suffix.lower() not in OUTPUT_TYPES):
        what = "is a directory" if output.is_dir() else f"has type '{output.suffix or '(none)'}'"
        raise TuneGGUFError(f"--output {output} {what}; give a {', '.join(OUTPUT_TYPES)} file")
    # The rows before the model: a bad input file is one line before anything loads.
    if input_path:
        rows, items = load_rows(input_path, text_column)
        frame = pd.DataFrame(rows)
    else:
        if texts and texts != ("-",):
            items = list(texts)
        elif not sys.stdin.isatty() or texts == ("-",):
            items = [line.rstrip("\n") for line in sys.stdin if line.strip()]
        else:
            items = []
        frame = pd.DataFrame({"text": items})
    if not items:
        raise TuneGGUFError("nothing to classify: give TEXT arguments, pipe lines on stdin, or use --input FILE")

    if run_dir:
        predictor = predictor_from_run(Path(run_dir), model)
    else:
        if not (model and labels):
            raise TuneGGUFError("give --run RUN_DIR, or --model with --labels (and --config for the prompt settings)")
        config = load_run_config(config_path)
        predictor = Predictor(model=Path(model), prompt=config.prompt, labels=comma_list(labels),
                              n_threads=config.evaluate.n_threads, n_ctx=config.evaluate.n_ctx,
                              config_path=Path(config_path) if config_path else None)

    results = predict(predictor, items, batch_size=batch_size)
    if output is not None:
        frame["label"] = [r.label for r in results]
        frame["probability"] = [round(r.probability, 6) for r in results]
        for label in predictor.labels:
            frame[f"p_{label}"] = [round(r.probabilities[label], 6) for r in results]
        _write_table(frame, output)
        click.echo(f"wrote {len(results)} rows to {output} (model: {predictor.model})", err=True)
        return
    for r in results:
        if as_json:
            click.echo(json.dumps({"text": r.text, "label": r.label, "probability": r.probability,
                                   "probabilities": r.probabilities}, ensure_ascii=False))
        else:
            click.echo(f"{r.label}\t{r.probability:.3f}\t{r.text}")
