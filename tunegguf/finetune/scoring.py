"""The task metric in the training loop: validation rows scored by label-token log-probs.

One forward pass per prompt reads the log-probs of each label's first token at the answer
position; the argmax is the prediction. That is the same scoring the parity report uses,
so the best checkpoint is picked on the number that gets reported. Instruction data (no
labels) is scored by the mean loss on its answer tokens instead.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Sequence

from tunegguf.console import Log, say
from tunegguf.data.example import Example
from tunegguf.scoring.metrics import classification_metrics
from tunegguf.finetune.rows import build_rows
from tunegguf.prompts import PromptRenderer, label_token_ids


@dataclass
class Evaluator:
    """Everything needed to score one model on the validation rows, prepared once."""

    tokenizer: Any
    labels: list[str]
    prompts: list[str]
    y_true: list[str]
    label_ids: list[int]
    """First token of each label's word after the prompt, in label order."""
    loss_rows: list[dict[str, list[int]]]
    """Tokenized prompt + answer rows, for the validation loss (empty when not needed)."""
    batch_size: int
    collapse_threshold: float

    @property
    def classifies(self) -> bool:
        return bool(self.labels) and bool(self.prompts)

    def evaluate(self, model: Any) -> dict[str, Any]:
        """Accuracy, macro-F1, per-class recall, prediction distribution (and eval_loss)."""
        started = time.perf_counter()
        out: dict[str, Any] = {}
        if self.classifies:
            predictions = predict_labels(model, self.tokenizer, self.prompts, self.label_ids, self.labels, self.batch_size)
            metrics = classification_metrics(self.y_true, predictions, self.labels, self.collapse_threshold)
            out.update(
                n=metrics["n"],
                accuracy=metrics["accuracy"],
                macro_f1=metrics["macro_f1"],
                per_class_recall={k: v["recall"] for k, v in metrics["per_class"].items()},
                prediction_distribution=metrics["prediction_distribution"],
                collapsed=metrics["collapsed"],
                majority_prediction=metrics["majority_prediction"],
                per_class=metrics["per_class"],
            )
        if self.loss_rows:
            out["eval_loss"] = answer_loss(model, self.tokenizer, self.loss_rows, self.batch_size)
            out.setdefault("n", len(self.loss_rows))
        out["eval_seconds"] = round(time.perf_counter() - started, 3)
        return out


def make_evaluator(
    tokenizer: Any,
    renderer: PromptRenderer,
    examples: Sequence[Example],
    labels: Sequence[str],
    *,
    batch_size: int,
    max_seq_length: int,
    collapse_threshold: float,
    need_loss: bool,
    log: Log = say,
) -> Evaluator:
    """Render the validation rows once; find the label token ids on the first prompt."""
    classify = [e for e in examples if e.is_classification and e.label is not None]
    prompts = [renderer.render(e).prompt for e in classify] if labels else []
    label_ids: list[int] = []
    if prompts:
        # Every prompt ends with the same template tail, so the ids found after one hold for all.
        encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
        label_ids = label_token_ids(encode, prompts[0], renderer.words)
    loss_rows = []
    if need_loss and examples:
        built = build_rows(tokenizer, renderer, examples, max_seq_length, "validation")
        loss_rows = built.rows
        for note in built.notes:
            log(f"note: {note}")
    return Evaluator(
        tokenizer=tokenizer,
        labels=list(labels),
        prompts=prompts,
        y_true=[e.label for e in classify] if prompts else [],
        label_ids=label_ids,
        loss_rows=loss_rows,
        batch_size=batch_size,
        collapse_threshold=collapse_threshold,
    )


def predict_labels(
    model: Any, tokenizer: Any, prompts: Sequence[str], label_ids: Sequence[int], labels: Sequence[str], batch_size: int
) -> list[str]:
    """Argmax over the labels' first-token log-probs at each prompt's answer position."""
    from tunegguf.scoring.logprobs import last_position_logprobs

    scores = last_position_logprobs(model, tokenizer, prompts, batch_size=batch_size, keep_ids=label_ids)
    return [labels[i] for i in scores.argmax(axis=1)]


def answer_loss(model: Any, tokenizer: Any, rows: Sequence[dict[str, list[int]]], batch_size: int) -> float:
    """Mean negative log-likelihood per answer token (prompt tokens carry no loss)."""
    import torch

    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            width = max(len(r["input_ids"]) for r in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            labels = torch.full((len(batch), width), -100, dtype=torch.long)
            for i, row in enumerate(batch):
                n = len(row["input_ids"])
                ids[i, :n] = torch.tensor(row["input_ids"])
                attention[i, :n] = 1
                mask = torch.tensor(row["completion_mask"], dtype=torch.bool)
                labels[i, :n] = torch.where(mask, ids[i, :n], torch.tensor(-100))
            logits = model(input_ids=ids.to(device), attention_mask=attention.to(device)).logits.float()
            # Position t predicts token t+1.
            shift_logits, shift_labels = logits[:, :-1], labels[:, 1:].to(device)
            loss = torch.nn.functional.cross_entropy(
                shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
                ignore_index=-100, reduction="sum",
            )
            total += float(loss)
            count += int((shift_labels != -100).sum())
    if was_training:
        model.train()
    return total / count if count else math.nan
