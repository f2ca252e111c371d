"""`tunegguf finetune`: prepare the data, fine-tune, print where the adapter is.

Parses and prints only; the work is `tunegguf.finetune.run`. Heavy imports stay inside
the function so `--help` is instant.
"""

from __future__ import annotations

from pathlib import Path

import click

from tunegguf.cli.common import Command


@click.command("finetune", cls=Command)
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Run config (YAML); defaults apply to anything it leaves out.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a setting, e.g. --set finetune.max_steps=100 (repeatable).")
@click.option("--run-dir", default=None,
              help="Where the run writes (default: run_dir from the config).")
@click.option("--resume", is_flag=True, default=False,
              help="Continue an unfinished fine-tune from its last checkpoint.")
@click.option("--overwrite", is_flag=True, default=False,
              help="Delete a previous fine-tune in the run directory and start over.")
def finetune_command(config_path: str | None, overrides: tuple[str, ...], run_dir: str | None,
                     resume: bool, overwrite: bool) -> None:
    """LoRA fine-tune with the task metric scored in the loop; keeps the best adapter."""
    from tunegguf.config.run import load_run_config
    from tunegguf.data import prepare
    from tunegguf.errors import TuneGGUFError
    from tunegguf.finetune import run
    from tunegguf.finetune.rundir import RunDir
    from tunegguf.io import locked_directory
    from tunegguf.pipeline.checks import check_before_start

    if resume and overwrite:
        raise TuneGGUFError("--resume continues the fine-tune in the run directory and --overwrite deletes it; "
                            "give one of them")
    flags = {"run_dir": ("--run-dir", run_dir)}
    config = load_run_config(config_path, list(overrides), flags=flags)
    check_before_start(config, ["data", "finetune"], flags=flags)
    with locked_directory(Path(config.run_dir), "--run-dir") as root:
        if resume and not RunDir(root / "finetune").started():
            click.echo(f"note: --resume: no fine-tune was started in {root / 'finetune'}, so there is nothing "
                       "to resume; starting from step 0", err=True)
        data = prepare(config.data, root / "data")
        manifest = data.manifest or {}
        result = run(
            config.finetune,
            model=config.model,
            prompt=config.prompt,
            train=data.load("train"),
            validation=data.load("validation"),
            labels=list(data.labels),
            out_dir=root / "finetune",
            data_fingerprint={"fingerprint": manifest.get("fingerprint"), "splits": manifest.get("splits")},
            resume=resume,
            overwrite=overwrite,
            class_weights=data.class_weights,
        )
    click.echo(format_result(result))


def format_result(result) -> str:
    """A few lines: where the adapter is, how it scored against the base model."""
    lines = [f"adapter: {result.adapter_dir}" + (" (reused: settings and data unchanged)" if result.skipped else "")]
    metrics = result.final_metrics or {}
    if "accuracy" in metrics:
        baseline = result.baseline or {}
        before = f" (zero-shot {baseline['accuracy']:.3f} / {baseline['macro_f1']:.3f})" if "accuracy" in baseline else ""
        lines.append(f"best step {result.best_step}: accuracy {metrics['accuracy']:.3f}, "
                     f"macro-F1 {metrics['macro_f1']:.3f}{before}")
    elif result.best_metric is not None:
        lines.append(f"best step {result.best_step}: {result.metric_for_best} {result.best_metric:.4f}")
    lines.append(f"{result.steps} steps with {result.engine} in {result.train_seconds:.0f} s; history: {result.history_path}")
    lines += [f"warning: {w}" for w in result.warnings]
    return "\n".join(lines)
