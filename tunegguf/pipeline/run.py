"""`tunegguf run`: data -> fine-tune -> export -> evaluate into one run directory.

Each stage records a fingerprint of the settings it depends on (its own and its upstream
stages') in `stages.json`; a stage whose fingerprint and outputs are unchanged is skipped,
so re-running a killed run continues where it stopped, and changing only the evaluation
thresholds re-runs only the evaluation.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunegguf.config.run import RunConfig
from tunegguf.config.typed import to_dict, write_yaml
from tunegguf.console import Log, quiet_third_party, say
from tunegguf.errors import TuneGGUFError, closest
from tunegguf.io import locked_directory, write_json
from tunegguf.pipeline.checks import STAGES, check_before_start, stages_until
from tunegguf.pipeline.stagebook import StageBook

# Which config sections each stage's output depends on (upstream stages chain in too).
STAGE_INPUTS = {
    "data": ["data"],
    "finetune": ["model", "prompt", "finetune"],
    "export": ["export"],
    "evaluate": ["evaluate"],
}


@dataclass
class PipelineResult:
    run_dir: Path
    stages_run: list[str] = field(default_factory=list)
    stages_skipped: list[str] = field(default_factory=list)
    report_md: Path | None = None
    report_html: Path | None = None
    verdicts: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    adapter_dir: Path | None = None
    gguf_files: dict[str, Path] = field(default_factory=dict)


def stage_fingerprints(config: RunConfig) -> dict[str, str]:
    """Fingerprint per stage: its config sections plus the fingerprint of the stage before."""
    data = to_dict(config)
    out, previous = {}, ""
    for stage in STAGES:
        payload = json.dumps({k: data[k] for k in STAGE_INPUTS[stage]}, sort_keys=True) + previous
        previous = hashlib.sha256(payload.encode()).hexdigest()[:16]
        out[stage] = previous
    return out


def environment_record(config: RunConfig) -> dict[str, Any]:
    from tunegguf import doctor

    report = doctor.run()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": report.versions,
        "hardware": report.hardware,
        "llama_cpp": report.llama_cpp,
        "seed": {"data": config.data.seed, "finetune": config.finetune.seed, "evaluate": config.evaluate.seed},
        "hf_token_set": report.resources.get("hf_token_set"),
    }


def run_pipeline(config: RunConfig, *, from_stage: str | None = None, until: str | None = None,
                 log: Log = say, flags: dict[str, tuple[str, Any]] | None = None) -> PipelineResult:
    """Run every stage that is not already done for this config; return where things are.

    `until` stops after that stage (a notebook runs the chain one cell per stage). Every
    stage reports through `log`, its lines tagged with the stage's name. The run directory
    is locked meanwhile: a second run on it refuses, naming this one. `flags`: the command
    flags the config was loaded with, so a start-up problem names the flag that caused it.
    """
    quiet_third_party()
    for flag, value in (("--from", from_stage), ("--until", until)):
        if value is not None and value not in STAGES:
            raise TuneGGUFError(f"{flag} {value!r} is not a stage{closest(value, STAGES)}; stages: {', '.join(STAGES)}")
    check_before_start(config, stages_until(until), flags=flags)  # what would fail after the fine-tune fails now
    # Taking the lock also removes what a killed run was writing.
    with locked_directory(Path(config.run_dir)):
        return _run_stages(config, from_stage=from_stage, until=until, log=log)


def _run_stages(config: RunConfig, *, from_stage: str | None, until: str | None, log: Log) -> PipelineResult:
    from tunegguf import data as data_stage

    def stage_log(stage: str) -> Log:
        return lambda line: log(f"[{stage}] {line}")

    run_dir = Path(config.run_dir)
    write_yaml(run_dir / "config.yaml", to_dict(config))
    write_json(run_dir / "environment.json", environment_record(config))
    book = StageBook(run_dir)
    if from_stage:
        book.forget_from(from_stage)
    prints = stage_fingerprints(config)
    result = PipelineResult(run_dir=run_dir)

    def begin(stage: str) -> dict | None:
        previous = book.done(stage, prints[stage])
        if previous is not None:
            result.stages_skipped.append(stage)
            log(f"[{stage}] up to date, skipped (use --from {stage} to redo it)")
        else:
            log(f"[{stage}] running")
        return previous

    def finish(stage: str, started: float, produced: dict) -> None:
        seconds = time.time() - started
        book.record(stage, prints[stage], produced, seconds)
        result.stages_run.append(stage)
        result.seconds[stage] = round(seconds, 1)
        log(f"[{stage}] done in {seconds:.0f} s")

    # data: the frozen split every later stage reads.
    started = time.time()
    begin("data")
    prepared = data_stage.prepare(config.data, run_dir / "data")
    for warning in prepared.warnings:
        log(f"[data] WARNING {warning}")
    if book.done("data", prints["data"]) is None:
        finish("data", started, {"manifest": str(run_dir / "data" / "data_manifest.json"), "labels": prepared.labels})
    if until == "data":
        return result

    # finetune
    finetuned = begin("finetune")
    if finetuned is None:
        from tunegguf import finetune as finetune_stage

        started = time.time()
        tuned = finetune_stage.run(
            config.finetune, model=config.model, prompt=config.prompt,
            train=prepared.load("train"), validation=prepared.load("validation"), labels=prepared.labels,
            out_dir=run_dir / "finetune", data_fingerprint=_data_fingerprint(prepared),
            resume=True, overwrite=from_stage is not None and STAGES.index(from_stage) <= 1,
            class_weights=prepared.class_weights, log=stage_log("finetune"),
        )
        finetuned = {
            "adapter_dir": str(tuned.adapter_dir), "best_step": tuned.best_step, "best_metric": tuned.best_metric,
            "baseline": tuned.baseline, "final_metrics": tuned.final_metrics, "engine": tuned.engine,
            "history_path": str(tuned.history_path), "train_seconds": tuned.train_seconds, "steps": tuned.steps,
        }
        finish("finetune", started, finetuned)
    result.adapter_dir = Path(finetuned["adapter_dir"])
    if until == "finetune":
        return result

    # export
    exported = begin("export")
    if exported is None:
        from tunegguf import export as export_stage
        from tunegguf.evaluate.backends.kernels import cached_verdict

        started = time.time()
        test_rows = prepared.load(config.evaluate.split)
        done = export_stage.run(
            config.export, base_model=config.model.name, adapter_dir=Path(finetuned["adapter_dir"]),
            out_dir=run_dir / "export", prompt=config.prompt, labels=prepared.labels,
            sample=test_rows[0] if test_rows else None,
            # Only the training split feeds the importance matrix: nothing scored later leaks in.
            calibration=prepared.load("train") if config.export.imatrix_quants else None,
            extra_buffers=cached_verdict(),  # only a stored verdict: no probe before export
            log=stage_log("export"),
        )
        exported = {
            "merged_dir": str(done.merged_dir), "manifest": str(done.manifest_path),
            "files": {f.quant: str(f.path) for f in done.files},
            "failed": {f.quant: _failure_reason(f) for f in done.failed},
        }
        for quant, reason in exported["failed"].items():
            log(f"[export] WARNING {quant} failed verification and is not exported: {reason}")
        finish("export", started, exported)
    result.gguf_files = {name: Path(path) for name, path in exported["files"].items()}
    if until == "export":
        return result

    # evaluate
    evaluated = begin("evaluate")
    if evaluated is None:
        from tunegguf import evaluate as evaluate_stage

        started = time.time()
        from tunegguf.evaluate.manifest import manifest_diagnostics

        # evaluate.quants (applied by the evaluate stage) narrows which files are compared.
        files = {name: Path(path) for name, path in exported["files"].items()}
        examples = prepared.load(config.evaluate.split)
        gguf_dir = Path(exported["manifest"]).parent
        diagnostics = manifest_diagnostics(gguf_dir)
        extra = {
            "fine-tune": {k: finetuned[k] for k in ("engine", "steps", "best_step", "best_metric", "train_seconds")},
            "zero-shot baseline (validation)": _headline(finetuned.get("baseline")),
            "after fine-tuning (validation)": _headline(finetuned.get("final_metrics")),
        }
        report = evaluate_stage.run(
            config.evaluate, prompt=config.prompt, examples=examples, labels=prepared.labels,
            hf_model=Path(exported["merged_dir"]), gguf_files=files, out_dir=run_dir / "report",
            extra_sections=extra,
            # The chain base+adapter -> merged -> f16 -> quants shows which step lost accuracy.
            adapter_reference=(config.model.name, Path(finetuned["adapter_dir"])),
            modelfiles=diagnostics["modelfiles"], weight_parity=diagnostics["weight_parity"],
            checkable=bool((prepared.manifest or {}).get("answers_checkable", False)),
        )
        evaluated = {
            "report_json": str(report.report_json), "report_md": str(report.report_md),
            "report_html": str(report.report_html), "verdicts": to_dict(report.verdicts),
        }
        finish("evaluate", started, evaluated)

    result.report_md = Path(evaluated["report_md"])
    result.report_html = Path(evaluated["report_html"])
    result.verdicts = evaluated["verdicts"]
    return result


def _headline(metrics: dict | None) -> dict | None:
    """The few numbers of an in-loop evaluation worth a line in the report."""
    if not metrics:
        return None
    keep = ("step", "n", "accuracy", "macro_f1", "per_class_recall", "prediction_distribution")
    return {k: metrics[k] for k in keep if k in metrics}


def _data_fingerprint(prepared: Any) -> dict[str, Any]:
    manifest = prepared.manifest or {}
    splits = manifest.get("splits", {})
    return {name: {"sha256": info.get("sha256"), "rows": info.get("rows")} for name, info in splits.items()}


def _failure_reason(exported_file: Any) -> str:
    verify = exported_file.verify
    if verify is None:
        return "not verified"
    failed = verify.failures or [c for c in verify.checks if c.status != "pass"]
    return "; ".join(f"{c.name}: {c.detail}" for c in failed) or verify.summary()
