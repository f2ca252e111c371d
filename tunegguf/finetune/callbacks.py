"""Trainer callbacks: tokens/s, a live bar, and the task metric with best-step tracking.

`MetricsCallback` scores the validation split every `eval_every` steps and at the end,
appends one JSON line per step and per evaluation to metrics.jsonl, keeps the best
adapter in best/, stops early, and snapshots its own state into every checkpoint so a
resumed run picks up the same best step and patience count.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from tunegguf.scoring.metrics import collapse_warning
from tunegguf.finetune.scoring import Evaluator
from tunegguf.io import append_jsonl, atomic_dir, read_json, write_json

STATE_FILE = "tunegguf_state.json"
BEST_SNAPSHOT = "tunegguf_best"


@dataclass
class LoopState:
    """What the metric loop must remember across a kill and --resume."""

    best_step: int | None = None
    best_metric: float | None = None
    best_metrics: dict[str, Any] | None = None
    bad_evals: int = 0
    """Evaluations in a row without improvement (for early stopping)."""
    train_seconds: float = 0.0
    """Wall time spent in the training loop, over all sessions."""
    baseline: dict[str, Any] | None = None
    last_eval: dict[str, Any] | None = None
    stopped_early: bool = False

    @classmethod
    def load(cls, path: Path) -> "LoopState":
        data = read_json(path)
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def metric_value(metrics: dict[str, Any], name: str) -> float | None:
    value = metrics.get("eval_loss" if name == "loss" else name)
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def improved(value: float, best: float | None, name: str) -> bool:
    if best is None:
        return True
    return value < best if name == "loss" else value > best


def make_callbacks(
    *,
    evaluator: Evaluator | None,
    metrics_path: Path,
    best_dir: Path,
    state: LoopState,
    metric_for_best: str,
    eval_every: int,
    patience: int,
    session_start_seconds: float,
    write: Callable[[str], None],
) -> list[Any]:
    """The three callbacks, in the order they must run: timer, bar, metrics."""
    from transformers import ProgressCallback, TrainerCallback

    base = TrainerCallback

    class StepTimer(base):
        """Seconds and non-padding tokens of each optimizer step (data loading excluded)."""

        def __init__(self) -> None:
            self.started = 0.0
            self.tokens_before = 0
            self.last: dict[str, float] = {}

        def on_step_begin(self, args, tr_state, control, **kwargs):
            self.started = time.perf_counter()
            self.tokens_before = tr_state.num_input_tokens_seen

        def on_step_end(self, args, tr_state, control, **kwargs):
            seconds = time.perf_counter() - self.started
            tokens = tr_state.num_input_tokens_seen - self.tokens_before
            self.last = {"step_seconds": seconds, "step_tokens": tokens,
                         "tokens_per_second": tokens / seconds if seconds > 0 else 0.0}

        def on_log(self, args, tr_state, control, logs=None, **kwargs):
            if logs is not None and "loss" in logs:
                logs.update(self.last)  # later callbacks (bar, metrics) read it from logs

    class Bar(ProgressCallback):
        """Trainer's tqdm bar (steps, ETA) with loss, lr and tokens/s as its postfix."""

        def on_log(self, args, tr_state, control, logs=None, **kwargs):
            if self.training_bar is None or not logs or "loss" not in logs:
                return
            self.training_bar.set_postfix(
                loss=f"{logs['loss']:.4f}", lr=f"{logs.get('learning_rate', 0):.2e}",
                tok_s=f"{logs.get('tokens_per_second', 0):.0f}", refresh=False,
            )

    class MetricsCallback(base):
        def __init__(self) -> None:
            self.session_started = time.perf_counter()

        def elapsed(self) -> float:
            return session_start_seconds + time.perf_counter() - self.session_started

        def on_log(self, args, tr_state, control, logs=None, model=None, **kwargs):
            if not logs or "loss" not in logs:
                return  # the end-of-training summary
            step = tr_state.global_step
            row = {
                "kind": "train", "step": step, "epoch": tr_state.epoch, "loss": logs["loss"],
                "lr": logs.get("learning_rate"), "grad_norm": logs.get("grad_norm"),
                "tokens_per_second": logs.get("tokens_per_second"), "step_seconds": logs.get("step_seconds"),
                "tokens_seen": tr_state.num_input_tokens_seen, "elapsed": round(self.elapsed(), 3),
            }
            append_jsonl(metrics_path, row)
            last = step >= tr_state.max_steps or control.should_training_stop
            due = evaluator is not None and (last or (eval_every > 0 and step % eval_every == 0))
            if due:
                self.evaluate(step, row, model, control)
            state.train_seconds = self.elapsed()

        def evaluate(self, step: int, train_row: dict[str, Any], model: Any, control: Any) -> None:
            result = evaluator.evaluate(model)
            row = {"kind": "eval", **{k: train_row[k] for k in ("step", "epoch", "loss", "lr")},
                   **{k: v for k, v in result.items() if k != "per_class"},
                   "tokens_per_second": train_row["tokens_per_second"], "elapsed": round(self.elapsed(), 3)}
            value = metric_value(result, metric_for_best)
            is_best = value is not None and improved(value, state.best_metric, metric_for_best)
            row["is_best"] = is_best
            append_jsonl(metrics_path, row)
            state.last_eval = row
            write(describe_eval(f"step {step}", row, metric_for_best, is_best))
            warning = collapse_warning(result, f"step {step}") if "per_class" in result else None
            if warning:
                write(warning)
            if is_best:
                state.best_step, state.best_metric, state.best_metrics, state.bad_evals = step, value, row, 0
                save_adapter(model, best_dir, {"step": step, "metric": metric_for_best, "value": value})
            else:
                state.bad_evals += 1
                if patience and state.bad_evals >= patience:
                    write(f"early stopping: {metric_for_best} did not improve for {patience} evaluations "
                          f"(best {state.best_metric:.4f} at step {state.best_step})")
                    state.stopped_early = True
                    control.should_training_stop = True

        def on_save(self, args, tr_state, control, **kwargs):
            # The Trainer has written checkpoint-N; the state file, written last, marks it whole.
            checkpoints = Path(args.output_dir)
            checkpoint = checkpoints / f"checkpoint-{tr_state.global_step}"
            if not checkpoint.is_dir():
                return
            state.train_seconds = self.elapsed()
            if best_dir.is_dir():
                # Beside the checkpoint, not in it: the Trainer would load an adapter found in a
                # checkpoint's sub-directory as a second adapter instead of the trained one.
                with atomic_dir(best_snapshot(checkpoint)) as tmp:
                    shutil.copytree(best_dir, tmp, dirs_exist_ok=True)
            write_json(checkpoint / STATE_FILE, asdict(state))
            for snapshot in checkpoints.glob(f"{BEST_SNAPSHOT}-*"):
                if not (checkpoints / snapshot.name.replace(BEST_SNAPSHOT, "checkpoint")).is_dir():
                    shutil.rmtree(snapshot, ignore_errors=True)  # its checkpoint was rotated away

    return [StepTimer(), Bar(), MetricsCallback()]


def best_snapshot(checkpoint: Path) -> Path:
    """Where the copy of best/ taken at a checkpoint lives: checkpoints/tunegguf_best-N."""
    return checkpoint.parent / checkpoint.name.replace("checkpoint", BEST_SNAPSHOT)


def save_adapter(model: Any, target: Path, info: dict[str, Any]) -> None:
    """The LoRA adapter alone (PEFT format), replaced atomically."""
    with atomic_dir(target) as tmp:
        model.save_pretrained(str(tmp))
        write_json(tmp / "best.json", info)


def describe_eval(where: str, row: dict[str, Any], metric_for_best: str, is_best: bool = False) -> str:
    parts = [where + ":"]
    if "accuracy" in row:
        parts.append(f"accuracy {row['accuracy']:.3f}  macro-F1 {row['macro_f1']:.3f}")
        recalls = ", ".join(f"{k} {v:.0%}" for k, v in row["per_class_recall"].items())
        parts.append(f"recall {recalls}")
    if "eval_loss" in row:
        parts.append(f"eval loss {row['eval_loss']:.4f}")
    parts.append(f"({row.get('n', 0)} rows, {row.get('eval_seconds', 0):.1f} s)")
    if is_best:
        parts.append(f"best {metric_for_best} so far")
    return "  ".join(parts)
