"""The `tunegguf` command: parse, call a stage's function, print. No logic lives here.

Each command lives in a module of this package and calls a stage's function; the commands
are imported lazily (click's LazyGroup pattern), so `tunegguf --help` does not import torch,
and a user mistake (TuneGGUFError) prints one line and exits 2.
"""

from __future__ import annotations

import importlib
import json
import sys

import click

from tunegguf import __version__
from tunegguf.cli.common import Group

LAZY_COMMANDS = {
    "run": ("tunegguf.cli.run", "run_command", "Data -> fine-tune -> export -> evaluate from one YAML config."),
    "data": ("tunegguf.cli.data", "data_group", "Inspect datasets."),
    "finetune": ("tunegguf.cli.finetune", "finetune_command", "LoRA/QLoRA fine-tune with the task metric in the loop."),
    "export": ("tunegguf.cli.export", "export_group", "Merge, convert to GGUF, quantize, verify."),
    "evaluate": ("tunegguf.cli.evaluate", "evaluate_command", "Parity report: the HF model vs each GGUF."),
    "predict": ("tunegguf.cli.predict", "predict_command", "Classify text with a GGUF or HF model."),
    "answer": ("tunegguf.cli.answer", "answer_command", "Answer prompts with a GGUF, greedy, stopping at end-of-turn."),
    "config": ("tunegguf.cli.run", "config_group", "Validate or show a run config."),
}


class TuneGGUFGroup(Group):
    """A group that loads subcommands on demand; TuneGGUFError is one line (see `Group`)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(LAZY_COMMANDS))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in LAZY_COMMANDS:
            module, attr, _ = LAZY_COMMANDS[name]
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Help text from the table, so listing commands imports nothing heavy.
        rows = [(name, LAZY_COMMANDS[name][2]) for name in sorted(LAZY_COMMANDS)]
        rows += [(name, cmd.get_short_help_str()) for name, cmd in sorted(self.commands.items())]
        with formatter.section("Commands"):
            formatter.write_dl(sorted(rows))


@click.group(cls=TuneGGUFGroup)
@click.version_option(__version__, prog_name="tunegguf")
def cli() -> None:
    """Fine-tune an LLM with LoRA (Unsloth), export quantized GGUF for llama.cpp, and prove
    with a parity report that the GGUF answers like the model you trained."""


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--reprobe", is_flag=True,
              help="Probe llama.cpp's fast CPU kernels again (ignore this host's stored verdict).")
def doctor(as_json: bool, reprobe: bool) -> None:
    """Versions, CUDA / bf16 / 4-bit availability, CPU flags, llama.cpp build and whether its
    fast CPU kernels are safe here, disk, RAM, HF token."""
    from tunegguf import doctor as doctor_module

    report = doctor_module.run(reprobe=reprobe)
    if as_json:
        click.echo(json.dumps({
            "ok": report.ok, "versions": report.versions, "hardware": report.hardware,
            "llama_cpp": report.llama_cpp, "kernels": report.kernels, "resources": report.resources,
            "problems": report.problems, "notes": report.notes,
        }, indent=2))
    else:
        from rich.console import Console
        from rich.table import Table

        console = Console()
        table = Table(title="tunegguf doctor", show_header=False)
        for section in (report.versions, report.hardware, report.llama_cpp, report.resources):
            for key, value in section.items():
                missing = "[red]missing[/red]" if section is report.versions else "-"
                table.add_row(key, missing if value is None else str(value))
        console.print(table)
        for note in report.notes:
            console.print(f"note: {note}")
        for problem in report.problems:
            console.print(f"[red]problem:[/red] {problem}")
        console.print("[green]ready[/green]" if report.ok else "[red]not ready[/red]")
    if not report.ok:
        sys.exit(1)


def main() -> None:
    from tunegguf.console import quiet_third_party

    quiet_third_party()  # before any command imports torch, unsloth or datasets
    cli(prog_name="tunegguf")


if __name__ == "__main__":
    main()
