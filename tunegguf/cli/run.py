"""`tunegguf run CONFIG` and `tunegguf config validate|show`: parse, call, print."""

from __future__ import annotations

import json

import click

from tunegguf.cli.common import Command, Group, UserError


@click.command("run", cls=Command)
@click.argument("config_path", metavar="CONFIG.yaml", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a setting, e.g. --set finetune.max_steps=60 (repeatable).")
@click.option("--run-dir", default=None, help="Write the run here instead of the config's run_dir.")
@click.option("--from", "from_stage", default=None, metavar="STAGE",
              help="Re-run from this stage on: data, finetune, export or evaluate.")
@click.option("--until", default=None, metavar="STAGE", help="Stop after this stage.")
def run_command(config_path: str, overrides: tuple[str, ...], run_dir: str | None, from_stage: str | None,
                until: str | None) -> None:
    """Data -> fine-tune -> export -> evaluate, from one YAML config, into a run directory.

    Finished stages are skipped when their settings did not change; a killed run continues
    where it stopped when started again with the same command.
    """
    from tunegguf.config.run import load_run_config
    from tunegguf.pipeline.run import run_pipeline

    flags = {"run_dir": ("--run-dir", run_dir)}
    config = load_run_config(config_path, list(overrides), flags=flags)
    result = run_pipeline(config, from_stage=from_stage, until=until, flags=flags)
    click.echo("")
    if result.report_html is None:
        click.echo(f"stopped after {until}; run directory: {result.run_dir}")
        return
    for name, verdict in result.verdicts.items():
        holds = verdict.get("holds") if isinstance(verdict, dict) else verdict
        reasons = verdict.get("reasons", []) if isinstance(verdict, dict) else []
        line = f"{name}: {'parity holds' if holds else 'parity fails'}"
        if reasons and not holds:
            line += " (" + "; ".join(map(str, reasons)) + ")"
        click.echo(line)
    click.echo(f"report: {result.report_html}")
    click.echo(f"summary: {result.report_md}")


@click.group("config", cls=Group)
def config_group() -> None:
    """Validate or show a run config."""


@config_group.command("validate")
@click.argument("config_path", metavar="CONFIG.yaml", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
def validate_command(config_path: str, overrides: tuple[str, ...]) -> None:
    """Check every key and value, and what the run would refuse later without loading a model
    (quant types, the model name, data files, target modules); print 'ok' or each problem."""
    from tunegguf.config.run import load_run_config
    from tunegguf.pipeline.checks import problems_before_start

    problems = problems_before_start(load_run_config(config_path, list(overrides)))
    for problem in problems[:-1]:
        click.echo(f"error: {problem}", err=True)
    if problems:
        raise UserError(problems[-1])
    click.echo(f"{config_path}: ok")


@config_group.command("show")
@click.argument("config_path", metavar="CONFIG.yaml", type=click.Path(dir_okay=False), required=False)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
@click.option("--json", "as_json", is_flag=True)
def show_command(config_path: str | None, overrides: tuple[str, ...], as_json: bool) -> None:
    """Print the resolved config (defaults < file < --set)."""
    import yaml

    from tunegguf.config.run import load_run_config
    from tunegguf.config.typed import to_dict

    data = to_dict(load_run_config(config_path, list(overrides)))
    click.echo(json.dumps(data, indent=2) if as_json else yaml.safe_dump(data, sort_keys=False))
