"""`tunegguf evaluate`: parse flags, load the split, call `tunegguf.evaluate.run`, print verdicts.

Heavy imports (torch, transformers, llama_cpp) happen inside `run`, so `--help` is instant.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from tunegguf.cli.common import Command, comma_list, echo_table
from tunegguf.errors import TuneGGUFError
from tunegguf.evaluate.manifest import gguf_dir_files, manifest_diagnostics
from tunegguf.io import require_path


def parse_gguf_options(values: tuple[str, ...]) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for value in values:
        name, sep, file = value.partition("=")
        if not sep or not name.strip() or not file.strip():
            raise TuneGGUFError(f"--gguf {value!r}: expected NAME=FILE, e.g. --gguf Q8_0=out/model-Q8_0.gguf")
        if name.strip() in files:
            raise TuneGGUFError(f"--gguf names {name.strip()!r} twice")
        files[name.strip()] = Path(file.strip())
    return files


def echo_recommendation(report_json: Path) -> None:
    from tunegguf.evaluate.recommend import recommend
    from tunegguf.evaluate.report.tables import imatrix_table, ladder_table

    report = json.loads(Path(report_json).read_text(encoding="utf-8"))
    rec = recommend(report)
    echo_table(*ladder_table(rec))
    imatrix_columns, imatrix_rows = imatrix_table({**report, "recommendation": rec.to_dict()})
    if imatrix_rows:
        click.echo("\nimportance matrix (plain → imatrix):")
        echo_table(imatrix_columns, imatrix_rows)
    if rec.choice:
        click.secho(f"recommended: {rec.choice} — {rec.reason}", fg="green")
    else:
        click.secho(f"recommended: none — {rec.reason}", fg="red")


def headline(mode: str, m: dict[str, Any]) -> str:
    """One line of a model's own metrics: accuracy for labels, perplexity and chrF for answers."""
    if mode != "answers":
        return f"accuracy {m['accuracy']:.1%}, macro-F1 {m['macro_f1']:.3f}"
    parts = [f"perplexity {m['perplexity']:.3f}" if m.get("perplexity") is not None else None,
             f"exact {m['exact_match']:.1%}" if m.get("exact_match") is not None else None,
             f"chrF {m['chrf']:.1f}" if m.get("chrf") is not None else None,
             f"stopped {m['stopped_at_eos_rate']:.0%}" if m.get("stopped_at_eos_rate") is not None else None]
    return ", ".join(p for p in parts if p) or "scored"


def echo_result(result: Any) -> None:
    for name, verdict in result.verdicts.items():
        colour = "green" if verdict["holds"] else "red"
        click.secho(f"{name}: {verdict['summary']}", fg=colour)
    for warning in result.warnings:
        click.secho(warning, fg="yellow", err=True)
    for name, modes in result.metrics.items():
        for mode, m in modes.items():
            click.echo(f"{name} {mode}: {headline(mode, m)}")
    click.echo(f"reports: {result.report_md} {result.report_html} {result.report_json}")


@click.command("evaluate", cls=Command)
@click.option("--hf", "hf_model", default=None,
              help="HF checkpoint directory (merged, or the base of --adapter), alias or hub name "
                   "[default: model.name of the config].")
@click.option("--adapter", type=click.Path(path_type=Path), default=None,
              help="LoRA adapter directory to apply to --hf.")
@click.option("--gguf", "ggufs", multiple=True, metavar="NAME=FILE", help="A GGUF to compare (repeatable).")
@click.option("--gguf-dir", type=click.Path(path_type=Path), default=None,
              help="Export directory: files from manifest.json when present, else every *.gguf.")
@click.option("--data", type=click.Path(path_type=Path), required=True,
              help="Frozen split (.jsonl of examples), or a data file prepared with --config's data settings.")
@click.option("--labels", default=None, help="Class names in order, comma-separated, e.g. negative,positive.")
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
              help="run.yaml (model, prompt, evaluate settings).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. --set evaluate.bootstrap=200 (repeatable).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Where the reports go [default: <run_dir>/evaluate].")
@click.option("--limit", type=int, default=None, help="Score only the first N rows.")
@click.option("--check", is_flag=True, default=False, help="Exit with status 1 when any GGUF fails parity.")
@click.option("--recommend", "show_recommendation", is_flag=True, default=False,
              help="Print the smallest GGUF whose parity holds (and never one that erases the fine-tune).")
@click.option("--stages", is_flag=True, default=False,
              help="Also score base + adapter unmerged (base and adapter from --gguf-dir's manifest) so the "
                   "report names the step that lost accuracy: merge, conversion or quantization.")
@click.option("--server", "servers", multiple=True, metavar="NAME=URL",
              help="A running OpenAI-compatible llama.cpp server to score like a GGUF, e.g. "
                   "deployed=http://127.0.0.1:8080 (repeatable).")
def evaluate_command(hf_model, adapter, ggufs, gguf_dir, data, labels, config_path, overrides, out_dir, limit,
                     check, show_recommendation, stages, servers) -> None:
    """Score the HF model and each GGUF on the same rows; write report.md/.html/.json."""
    result = _evaluate(hf_model, adapter, ggufs, gguf_dir, data, labels, config_path, overrides, out_dir, limit,
                       stages, servers)
    echo_result(result)
    if show_recommendation:
        echo_recommendation(result.report_json)
    if check and not result.all_hold:
        raise SystemExit(1)


def _evaluate(hf_model, adapter, ggufs, gguf_dir, data, labels, config_path, overrides, out_dir, limit,
              stages=False, servers=()):
    from tunegguf.config.run import load_run_config
    from tunegguf.evaluate.inputs import answers_checkable, load_examples, split_file_of
    from tunegguf.evaluate.runner import run
    from tunegguf.io import require_output_dir

    # Paths are checked here, not by click: one `error:` line that says what is wrong and what to give.
    require_path(data, "--data", kind="file", fix="give the split to score, e.g. runs/demo/data/test.jsonl")
    if gguf_dir:
        require_path(gguf_dir, "--gguf-dir", kind="directory", fix=f"to compare one file, give --gguf NAME={gguf_dir}")
    if adapter:
        require_path(adapter, "--adapter", kind="directory", fix="give the LoRA adapter directory (with adapter_config.json)")
    config = load_run_config(config_path, list(overrides), flags={"evaluate.limit": ("--limit", limit)})
    out_dir = require_output_dir(out_dir, "--out") if out_dir else require_output_dir(config.run_dir, "run_dir") / "evaluate"
    gguf_files = gguf_dir_files(gguf_dir) if gguf_dir else {}
    extras = manifest_diagnostics(gguf_dir) if gguf_dir else {"modelfiles": {}, "weight_parity": {}, "adapter_reference": None}
    if stages and extras["adapter_reference"] is None:
        raise TuneGGUFError("--stages needs --gguf-dir with an export manifest.json naming base_dir and adapter_dir")
    for name, path in parse_gguf_options(ggufs).items():
        gguf_files[name] = path
    examples, found_labels = load_examples(data, config.data, config.evaluate.split, out_dir)
    if labels:
        label_list = comma_list(labels)
    else:
        label_list = found_labels or list(config.data.labels) or sorted({e.label for e in examples if e.label})
    if not gguf_files and not servers:
        click.secho("note: no --gguf or --gguf-dir given; only the HF model is scored", fg="yellow", err=True)
    return run(
        config.evaluate,
        prompt=config.prompt,
        examples=examples,
        labels=label_list,
        hf_model=hf_model or config.model.name,
        adapter_dir=adapter,
        gguf_files=gguf_files,
        out_dir=out_dir,
        adapter_reference=extras["adapter_reference"] if stages else None,
        modelfiles=extras["modelfiles"],
        weight_parity=extras["weight_parity"] or None,
        servers=_parse_servers(servers),
        checkable=answers_checkable(split_file_of(data, out_dir, config.evaluate.split)),
    )


def _parse_servers(values: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for value in values or ():
        name, sep, url = value.partition("=")
        if not sep or not name.strip() or not url.strip().startswith(("http://", "https://")):
            raise TuneGGUFError(f"--server {value!r}: expected NAME=URL, e.g. deployed=http://127.0.0.1:8080")
        out[name.strip()] = url.strip()
    return out
