"""The fine-tune stage: LoRA on the rendered examples, the task metric in the loop.

`run` loads the base model (Unsloth, or plain PEFT), scores it zero-shot, trains with TRL's
SFTTrainer on the answer tokens only, scores the validation split every `eval_every` steps,
keeps the best adapter, and writes it as the stage's output. A finished directory is
returned as is when its settings and data match (stage skipping) and refused otherwise
unless `overwrite`; an unfinished one continues from its last checkpoint with `resume`.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from tunegguf.console import Log, quiet_third_party, say
from tunegguf.data.example import Example
from tunegguf.errors import TuneGGUFError
from tunegguf.finetune.callbacks import (
    STATE_FILE,
    LoopState,
    best_snapshot,
    describe_eval,
    make_callbacks,
    save_adapter,
)
from tunegguf.finetune.config import FinetuneConfig
from tunegguf.finetune.rundir import ADAPTER_INFO, RunDir, fingerprint
from tunegguf.io import append_jsonl, atomic_dir, read_json, require_free_disk, write_json
from tunegguf.models import ModelConfig
from tunegguf.prompts import PromptConfig


@dataclass
class FinetuneResult:
    adapter_dir: Path
    """The final adapter (= the best evaluation's), PEFT format, tokenizer and
    tunegguf_adapter.json beside it."""
    best_step: int | None
    best_metric: float | None
    """Value of finetune.metric_for_best at best_step (None without validation rows)."""
    baseline: dict | None
    """Zero-shot metrics of the base model on the same validation rows."""
    final_metrics: dict
    """Metrics of the returned adapter (the best evaluation's row of metrics.jsonl)."""
    history_path: Path
    engine: str
    """"unsloth" or "peft"."""
    train_seconds: float
    """Wall time in the training loop (in-loop evaluations included), over all resumes."""
    steps: int
    """Optimizer steps run."""
    metric_for_best: str = "macro_f1"
    stopped_early: bool = False
    skipped: bool = False
    """True when a finished run with the same settings and data was returned as is."""
    warnings: list[str] = field(default_factory=list)


def _note(notes: list[str], message: str, log: Log) -> None:
    log(f"note: {message}")
    notes.append(message)


def _prepare_dir(rd: RunDir, fp: str, *, resume: bool, overwrite: bool) -> FinetuneResult | None:
    """Apply the finished / unfinished rules; return the saved result when skipping."""
    if overwrite and rd.root.exists():
        shutil.rmtree(rd.root)
        return None
    if rd.finished():
        if rd.saved_fingerprint() == fp:
            return load_result(rd)
        raise TuneGGUFError(
            f"{rd.root} holds a finished fine-tune made with other settings or data; "
            "pass --overwrite to replace it, or choose another --run-dir"
        )
    if not rd.started():
        return None
    if not resume:
        raise TuneGGUFError(
            f"{rd.root} holds an unfinished fine-tune; pass --resume to continue it from its last "
            "checkpoint, or --overwrite to start over"
        )
    saved = rd.saved_fingerprint()
    if saved is not None and saved != fp:
        raise TuneGGUFError(
            f"cannot resume {rd.root}: its settings or data differ from this run's, so the batches would "
            "not replay; restore them, or pass --overwrite to start over"
        )
    return None


def load_result(rd: RunDir) -> FinetuneResult:
    info = read_json(rd.adapter / ADAPTER_INFO)
    saved = dict(info["result"])
    saved.update(adapter_dir=rd.adapter, history_path=rd.metrics, skipped=True)
    return FinetuneResult(**{k: v for k, v in saved.items() if k in FinetuneResult.__dataclass_fields__})


def _restore(rd: RunDir, resume: bool, notes: list[str], log: Log) -> tuple[Path | None, LoopState]:
    """Checkpoint to resume from and the metric loop's state at that step."""
    checkpoint = rd.latest_checkpoint() if resume else None
    if checkpoint is None:
        if resume and rd.started():
            _note(notes, f"{rd.root}: no whole checkpoint yet, starting from step 0", log)
        for path in (rd.metrics, rd.best, rd.checkpoints):
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        return None, LoopState()
    state = LoopState.load(checkpoint / STATE_FILE)
    step = int(checkpoint.name.rsplit("-", 1)[1])
    snapshot = best_snapshot(checkpoint)
    if snapshot.is_dir():
        with atomic_dir(rd.best) as tmp:
            shutil.copytree(snapshot, tmp, dirs_exist_ok=True)
    elif rd.best.exists():
        shutil.rmtree(rd.best)  # saved after the checkpoint: not part of the state we resume
    dropped = rd.truncate_history(step)
    append_jsonl(rd.metrics, {"kind": "resume", "step": step, "dropped_rows": dropped, "checkpoint": checkpoint.name})
    log(f"resuming from {checkpoint.name} (best so far: step {state.best_step})")
    return checkpoint, state


def run(
    config: FinetuneConfig,
    *,
    model: ModelConfig,
    prompt: PromptConfig,
    train: Sequence[Example],
    validation: Sequence[Example],
    labels: list[str],
    out_dir: Path,
    data_fingerprint: dict | None = None,
    resume: bool = False,
    overwrite: bool = False,
    class_weights: dict[str, float] | None = None,
    log: Log = say,
) -> FinetuneResult:
    """Fine-tune a LoRA adapter; return where the best one is and how it scored.

    `log` gets one line per event (loading, the zero-shot baseline, each evaluation, notes);
    the training steps show as a progress bar.
    """
    quiet_third_party()
    rd = RunDir(Path(out_dir))
    labels = list(labels)
    notes: list[str] = []
    if not train:
        raise TuneGGUFError("no training rows: the train split is empty")
    classify = any(e.is_classification for e in train)
    if classify and not labels:
        raise TuneGGUFError("classification rows but no labels given; set data.labels or check data.label_column")
    fp, parts = fingerprint(config=config, model=model, prompt=prompt, labels=labels, train=train,
                            validation=validation, data_fingerprint=data_fingerprint)
    skipped = _prepare_dir(rd, fp, resume=resume, overwrite=overwrite)
    if skipped is not None:
        log(f"fine-tune already finished in {rd.root} with these settings and data; reusing {rd.adapter}")
        return skipped

    metric_for_best = config.metric_for_best
    if metric_for_best != "loss" and not (classify and labels):
        _note(notes, f"finetune.metric_for_best {metric_for_best} needs labelled rows; using the validation loss", log)
        metric_for_best = "loss"
    if class_weights:
        _note(notes, "class weights are not applied by the fine-tune (TRL's SFT loss has no per-row weight); "
                     "use data.balance undersample or oversample to even out the classes", log)
    if not validation:
        _note(notes, "no validation rows: nothing is scored in the loop and the last step's adapter is kept", log)

    from tunegguf.finetune.loading import (
        describe_oom, import_unsloth_first, library_versions, load_for_training, resolve_precision,
    )

    precision = resolve_precision(model)  # refuses 4-bit without CUDA before any loading
    import_unsloth_first(config.engine)  # before resolving the model, which may import transformers
    from tunegguf.models import resolve_model

    resolved = resolve_model(model.name)
    rd.root.mkdir(parents=True, exist_ok=True)
    write_json(rd.run_info, {"fingerprint": fp, "settings": parts})

    import torch

    try:
        loaded = load_for_training(config, model, resolved, precision, log)
    except torch.OutOfMemoryError:
        raise describe_oom(config, model, "loading the model") from None
    for note in loaded.notes:
        _note(notes, note, log)
    trainable = sum(p.numel() for p in loaded.model.parameters() if p.requires_grad)
    # Adapter + two optimizer moments per checkpoint, plus best/, snapshots and the final copy.
    require_free_disk(rd.root, trainable * 4 * (4 * config.keep_checkpoints + 3), "fine-tune checkpoints")
    log(f"fine-tuning {resolved.name} with {loaded.engine} on {precision.device} ({precision.dtype}"
           f"{', 4-bit' if precision.load_in_4bit else ''}): {trainable:,} trainable LoRA weights")

    from tunegguf.finetune.rows import build_rows
    from tunegguf.finetune.scoring import make_evaluator
    from tunegguf.prompts import PromptRenderer, TemplateTokens

    tokenizer = loaded.tokenizer
    renderer = PromptRenderer(prompt, TemplateTokens.from_hf_tokenizer(tokenizer), labels)
    rows = build_rows(tokenizer, renderer, train, model.max_seq_length)
    for note in rows.notes:
        _note(notes, note, log)
    scored = list(validation[: config.eval_limit] if config.eval_limit else validation)
    evaluator = None
    if scored:
        evaluator = make_evaluator(
            tokenizer, renderer, scored, labels if classify else [], batch_size=config.eval_batch_size,
            max_seq_length=model.max_seq_length, collapse_threshold=config.collapse_threshold,
            need_loss=metric_for_best == "loss", log=log,
        )

    checkpoint, state = _restore(rd, resume, notes, log)
    if config.baseline and evaluator is not None and state.baseline is None:
        # The LoRA B matrices start at zero, so the wrapped model is still the base model.
        result = evaluator.evaluate(loaded.model)
        row = {"kind": "baseline", "step": 0, "loss": None, "lr": None,
               **{k: v for k, v in result.items() if k != "per_class"}, "elapsed": 0.0}
        append_jsonl(rd.metrics, row)
        state.baseline = row
        log(describe_eval("zero-shot baseline", row, metric_for_best))
        from tunegguf.scoring.metrics import collapse_warning

        warning = collapse_warning(result, "baseline") if "per_class" in result else None
        if warning:
            log(warning)

    from datasets import Dataset
    from transformers import ProgressCallback

    from tunegguf.finetune.trainer import make_trainer, sft_config

    trainer = make_trainer(loaded, sft_config(config, model, precision, rd.checkpoints), Dataset.from_list(rows.rows))
    trainer.remove_callback(ProgressCallback)
    for callback in make_callbacks(
        evaluator=evaluator, metrics_path=rd.metrics, best_dir=rd.best, state=state,
        metric_for_best=metric_for_best, eval_every=config.eval_every, patience=config.early_stopping_patience,
        session_start_seconds=state.train_seconds, write=log,
    ):
        trainer.add_callback(callback)
    try:
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except torch.OutOfMemoryError:
        raise describe_oom(config, model, "training") from None
    steps = trainer.state.global_step
    if state.best_step is None:
        # No validation rows (or no usable metric): the last step's adapter is the output.
        save_adapter(loaded.model, rd.best, {"step": steps, "metric": None, "value": None})
        state.best_step, state.best_metrics = steps, state.last_eval or {}

    result = FinetuneResult(
        adapter_dir=rd.adapter,
        best_step=state.best_step,
        best_metric=state.best_metric,
        baseline=state.baseline,
        final_metrics=dict(state.best_metrics or {}),
        history_path=rd.metrics,
        engine=loaded.engine,
        train_seconds=round(state.train_seconds, 3),
        steps=steps,
        metric_for_best=metric_for_best,
        stopped_early=state.stopped_early,
        warnings=notes,
    )
    info = {
        "base_model": {"name": resolved.name, "path": resolved.path, "source": resolved.source_info()},
        "engine": loaded.engine,
        "precision": asdict(precision),
        "trainable_parameters": trainable,
        "labels": labels,
        "label_words": renderer.words,
        "fingerprint": fp,
        "data_fingerprint": data_fingerprint,
        "config": parts,
        "library_versions": library_versions(loaded.engine),
        "train_rows": len(rows.rows),
        "dropped_too_long": rows.dropped_too_long,
        "result": {k: v for k, v in asdict(result).items() if k not in ("adapter_dir", "history_path")},
    }
    with atomic_dir(rd.adapter) as tmp:
        shutil.copytree(rd.best, tmp, dirs_exist_ok=True)
        tokenizer.save_pretrained(str(tmp))
        write_json(tmp / ADAPTER_INFO, info)
    # Finished: the checkpoints only served --resume, and each holds optimizer state.
    shutil.rmtree(rd.checkpoints, ignore_errors=True)
    log(f"adapter (best step {result.best_step}) -> {rd.adapter}")
    return result
