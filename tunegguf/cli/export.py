"""`tunegguf export run` and `tunegguf export verify`: parse, call the stage, print.

    tunegguf export run --base smollm2-135m --adapter runs/demo/adapter --out runs/demo/export --quants Q8_0,Q4_K_M
    tunegguf export verify runs/demo/export/gguf/model-Q4_K_M.gguf --hf runs/demo/export/merged \\
        --base smollm2-135m --merged runs/demo/export/merged

Heavy libraries are imported inside the commands, so `--help` is instant.
"""

from __future__ import annotations

from pathlib import Path

import click

from tunegguf.cli.common import Group, UserError, comma_list
from tunegguf.errors import TuneGGUFError


@click.group("export", cls=Group)
def export_group() -> None:
    """Merge, convert to GGUF, quantize, verify (subcommands: run, verify)."""


@export_group.command("run")
@click.option("--base", "base", default=None, help="Base model: alias, local HF directory or hub name (default: the config's model.name).")
@click.option("--adapter", type=click.Path(path_type=Path), default=None, help="LoRA adapter directory; without it the base is exported as is.")
@click.option("--out", "out", type=click.Path(path_type=Path), default=None, help="Output directory (default: <run_dir>/export).")
@click.option("--quants", default=None, help="Comma-separated quant types, e.g. Q8_0,Q4_K_M (overrides export.quants).")
@click.option("--labels", default=None, help="Comma-separated label words of a classifier: the checks use a classification prompt, the Modelfiles temperature 0.")
@click.option("--imatrix-quants", default=None, help="Comma-separated quant types also written with an importance matrix, e.g. Q4_K_M,Q4_0 (overrides export.imatrix_quants).")
@click.option("--imatrix-data", type=click.Path(path_type=Path), default=None, help="Training rows for the importance matrix: a prepared split such as runs/demo/data/train.jsonl.")
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None, help="Run config YAML.")
@click.option("--set", "overrides", multiple=True, help="KEY=VALUE override, e.g. export.verify_max_tokens=32.")
def run_command(base, adapter, out, quants, labels, imatrix_quants, imatrix_data, config_path, overrides) -> None:
    """Export a merged model to verified GGUF files (f16 + each quant), Modelfiles and a manifest."""
    from tunegguf.config.run import load_run_config
    from tunegguf.export.stage import run
    from tunegguf.io import locked_directory, require_output_dir
    from tunegguf.pipeline.checks import check_before_start

    flags = {
        "export.quants": ("--quants", comma_list(quants) if quants is not None else None),
        "export.imatrix_quants": ("--imatrix-quants", comma_list(imatrix_quants) if imatrix_quants is not None else None),
        "model.name": ("--base", base),
    }
    config = load_run_config(config_path, list(overrides), flags=flags)
    check_before_start(config, ["export"], flags=flags, run_dir=out is None)
    out = require_output_dir(out, "--out") if out is not None else Path(config.run_dir) / "export"
    label_list = comma_list(labels) if labels else None
    calibration = None
    if imatrix_data is not None:
        from tunegguf.data.prepare import load_split

        if imatrix_data.suffix != ".jsonl":
            raise TuneGGUFError(f"--imatrix-data {imatrix_data}: expected a prepared split (.jsonl, e.g. "
                                "runs/<name>/data/train.jsonl); run `tunegguf data prepare` on raw files first")
        calibration = load_split(imatrix_data)
    with locked_directory(out, "--out"):
        result = run(
            config.export, base_model=config.model.name, adapter_dir=adapter,
            out_dir=out, prompt=config.prompt, labels=label_list,
            calibration=calibration,
        )
    _print_result(result)
    if result.failed:
        raise UserError(f"{len(result.failed)} file(s) failed verification: "
                         + ", ".join(f.path.name for f in result.failed) + f"; see {result.manifest_path}")


def _print_result(result) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"GGUF export -> {result.manifest_path.parent}")
    for column in ("file", "size", "checks", "kept", "verdict", "Modelfile"):
        table.add_column(column, overflow="fold")
    for item in result.files + result.failed:
        parity = item.weight_parity
        kept = f"{parity.kept:.1%}" if parity is not None and parity.kept is not None else "-"
        if item.verify is None:
            checks = "not verified"
        elif item.verify.passed:
            checks = f"all {len(item.verify.checks)} pass"
        else:
            checks = "FAIL " + ", ".join(c.name for c in item.verify.failures)
        table.add_row(
            item.path.name, f"{item.size / 1e6:.0f} MB", checks, kept,
            parity.verdict if parity is not None else "-", "yes" if item.modelfile else "-",
        )
    console.print(table)
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    notes = {n for item in result.files + result.failed if item.verify for n in item.verify.notes}
    for note in sorted(notes):
        console.print(f"note: {note}")
    for item in result.failed:
        for check in item.verify.failures:
            console.print(f"[red]{item.path.name}[/red] {check.name}: {check.detail}", highlight=False)
    console.print(f"manifest: {result.manifest_path}")


@export_group.command("verify")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--hf", "hf_dir", type=click.Path(path_type=Path), default=None, help="HF checkpoint the GGUF came from (tokenizer, template, EOS checks).")
@click.option("--base", default=None, help="Base model (alias or directory) for the weight parity; needs --merged.")
@click.option("--merged", type=click.Path(path_type=Path), default=None, help="Merged HF checkpoint for the weight parity; needs --base.")
@click.option("--prompt", "prompt_text", default=None, help="Rendered prompt to tokenize and complete (default: a short question in the chat template).")
@click.option("--max-tokens", type=int, default=16, show_default=True, help="Budget for the completion that must end with EOS.")
@click.option("--erased-threshold", type=float, default=0.5, show_default=True, help="Weight parity: below this share of the delta the fine-tune counts as erased.")
@click.option("--imatrix", type=click.Path(path_type=Path), default=None, help="Importance matrix (e.g. export/gguf/imatrix.gguf): the weight parity is also taken activation-weighted, and judged so.")
def verify_command(file, hf_dir, base, merged, prompt_text, max_tokens, erased_threshold, imatrix) -> None:
    """Check one GGUF in a separate process; with --base/--merged also its weight parity."""
    from tunegguf.export.verify import verify_gguf

    if (base is None) != (merged is None):
        raise UserError("--base and --merged go together: the weight parity compares the GGUF with both")
    result = verify_gguf(file, hf_dir=hf_dir, prompt_text=prompt_text, max_tokens=max_tokens)
    parity = None
    if base is not None and result.check("load").status == "pass":
        from tunegguf.export.weight_parity import weight_parity
        from tunegguf.export.stage import local_checkpoint

        parity = weight_parity(file, base_dir=local_checkpoint(base), merged_dir=merged,
                               erased_threshold=erased_threshold, progress=True, imatrix=imatrix)
    load = result.check("load")
    if load.status == "fail":  # a corrupt or truncated file: one line, no traceback
        click.echo(f"error: not a loadable GGUF: {load.detail}", err=True)
        raise click.exceptions.Exit(1)
    marks = {"pass": "[green]pass[/green]", "fail": "[red]FAIL[/red]", "skip": "[yellow]skip[/yellow]"}
    from rich.console import Console

    console = Console()
    for check in result.checks:
        console.print(f"{marks[check.status]} {check.name}: {check.detail}", highlight=False)
    for note in result.notes:
        console.print(f"note: {note}", highlight=False)
    if parity is not None:
        _print_parity(console, parity)
    if not result.ok:
        raise click.exceptions.Exit(1)


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _print_parity(console, parity) -> None:
    from rich.table import Table

    console.print(f"weight parity {parity.summary()}", highlight=False)
    table = Table(title="per layer")
    columns = ["layer", "kept", "rel. error", "delta SNR"] + (["kept, activation-weighted"] if parity.weighted else [])
    for column in columns:
        table.add_column(column)
    for row in parity.layers:
        cells = [row.layer, _fmt(row.kept, ".1%"), _fmt(row.rel_error, ".2e"), _fmt(row.delta_snr, ".2f")]
        table.add_row(*(cells + ([_fmt(row.kept_weighted, ".1%")] if parity.weighted else [])))
    console.print(table)
    for item in parity.not_checked:
        console.print(f"not checked: {item['tensor']} ({item['type']}): {item['reason']}", highlight=False)
    for warning in parity.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")
