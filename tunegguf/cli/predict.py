"""`tunegguf predict`: strings, stdin lines, or a CSV/TSV/JSONL/JSON/Parquet file in; lines or a file out."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from tunegguf.cli.common import Command, comma_list


@click.command("predict", cls=Command)
@click.argument("texts", nargs=-1)
@click.option("--run", "run_dir", type=click.Path(file_okay=False), help="A tunegguf run directory (prompt, labels, exported files).")
@click.option("--model", default=None,
              help="A quant name from the run (Q4_K_M, f16, ...), a .gguf file, or an HF checkpoint directory. "
                   "Default with --run: the quant the run's last evaluation recommended, else Q4_K_M, else the "
                   "smallest exported file, else the merged checkpoint (the choice is printed on stderr).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Without --run: the run config with the prompt settings.")
@click.option("--labels", default=None, help="Without --run: the labels in order, e.g. negative,positive.")
@click.option("--input", "input_path", type=click.Path(),
              help="File to classify: CSV, TSV, JSONL and Parquet are streamed (any size, constant memory); "
                   "a JSON array or a datasets save_to_disk directory is read whole.")
@click.option("--output", "output_path", default=None,
              help="Write the rows with label, probability and p_<label> columns to this .csv, .tsv, .jsonl, .json "
                   "or .parquet file (from --input, TEXT arguments or stdin) instead of printing them. Written in "
                   "chunks under OUTPUT.partial/; rerunning a killed command resumes from the last complete chunk.")
@click.option("--restart", is_flag=True, help="Discard OUTPUT.partial/ left by an earlier run and start over.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1),
              help="llama.cpp processes scoring chunks side by side, sharing the cores (evaluate.n_threads, else "
                   "all of them, divided between them). An HF checkpoint takes 1.")
@click.option("--text-column", default="text", show_default=True)
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1),
              help="Prompts per forward pass (Transformers) / sequences per llama_decode (llama.cpp).")
@click.option("--chunk-rows", default=None, type=click.IntRange(min=1), hidden=True,
              help="Rows per chunk file (default 512, or $TUNEGGUF_PREDICT_CHUNK_ROWS).")
@click.option("--no-progress", is_flag=True, help="No progress bar on stderr.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per text.")
def predict_command(texts, run_dir, model, config_path, labels, input_path, output_path, restart, workers, text_column,
                    batch_size, chunk_rows, no_progress, as_json):
    """Classify TEXTS (or stdin lines, or --input FILE) with the same prompt and scoring as the evaluator.

    \b
    tunegguf predict --run runs/demo "the battery died after a day"
    cat reviews.txt | tunegguf predict --run runs/demo --model f16
    tunegguf predict --run runs/demo --input reviews.csv --output scored.csv
    tunegguf predict --run runs/demo --input big.parquet --output scored.parquet --workers 2
    tunegguf predict --run runs/demo --output scored.jsonl "great" "awful"

    TEXT arguments and stdin are held in memory; --input files are read chunk by chunk.
    """
    from tunegguf.config.run import load_run_config
    from tunegguf.data.stream import RowStream
    from tunegguf.errors import TuneGGUFError
    from tunegguf.pipeline.bulk import OUTPUT_TYPES, Texts, chunk_rows_default, score_chunks, write_predictions
    from tunegguf.pipeline.predict import Predictor, predictor_from_run

    output = Path(output_path) if output_path else None
    if output is not None and (output.is_dir() or output.suffix.lower() not in OUTPUT_TYPES):
        what = "is a directory" if output.is_dir() else f"has type '{output.suffix or '(none)'}'"
        raise TuneGGUFError(f"--output {output} {what}; give a {', '.join(OUTPUT_TYPES)} file")
    rows_per_chunk = chunk_rows or chunk_rows_default()
    # The input before the model: a bad file (type, encoding, header, text column, the first
    # chunk's rows) is one line before anything loads.
    if input_path:
        source = RowStream(input_path, text_column, rows_per_chunk)
    else:
        if texts and texts != ("-",):
            items = list(texts)
        elif not sys.stdin.isatty() or texts == ("-",):
            items = [line.rstrip("\n") for line in sys.stdin if line.strip()]
        else:
            items = []
        if not items:
            raise TuneGGUFError("nothing to classify: give TEXT arguments, pipe lines on stdin, or use --input FILE")
        source = Texts(items, rows_per_chunk)

    if run_dir:
        predictor = predictor_from_run(Path(run_dir), model)
    else:
        if not (model and labels):
            raise TuneGGUFError("give --run RUN_DIR, or --model with --labels (and --config for the prompt settings)")
        config = load_run_config(config_path)
        predictor = Predictor(model=Path(model), prompt=config.prompt, labels=comma_list(labels),
                              n_threads=config.evaluate.n_threads, n_ctx=config.evaluate.n_ctx,
                              config_path=Path(config_path) if config_path else None,
                              chosen_because=f"--model {model}", extra_buffers=config.evaluate.llama_extra_buffers)
    click.echo(f"model: {predictor.model} ({predictor.chosen_because or 'given'})", err=True)
    if workers > 1 and predictor.is_gguf:
        from tunegguf.pipeline.bulk import worker_threads

        click.echo(f"{workers} llama.cpp workers, {worker_threads(predictor, workers)} thread(s) each", err=True)

    if output is not None:
        result = write_predictions(predictor, source, output, workers=workers, batch_size=batch_size, restart=restart,
                                   text_column=text_column if input_path else None, progress=not no_progress,
                                   log=lambda line: click.echo(line, err=True))
        click.echo(f"wrote {result.rows} rows to {output} (model: {predictor.model})", err=True)
        return
    for chunk, scored in score_chunks(predictor, source.chunks(), workers=workers, batch_size=batch_size):
        for text, label, row in zip(chunk.texts, scored.labels, scored.probs):
            probs = {name: float(p) for name, p in zip(predictor.labels, row)}
            if as_json:
                click.echo(json.dumps({"text": text, "label": label, "probability": probs[label],
                                       "probabilities": probs}, ensure_ascii=False))
            else:
                click.echo(f"{label}\t{probs[label]:.3f}\t{text}")
