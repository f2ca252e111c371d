"""Classification metrics that cannot hide a collapsed model.

Accuracy alone let an 8B model that always said "positive" look good (86.8% with 0%
negative recall), so every summary carries per-class recall, the confusion matrix and the
prediction distribution, and flags a majority collapse. Shared by the fine-tune loop
(checkpoint choice) and the parity report.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

from tunegguf.prompts.verbalizer import UNPARSED


def classification_metrics(
    y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str], collapse_threshold: float = 0.9
) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1, confusion matrix, distribution."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    labels = list(labels)
    n = len(y_true)
    if n == 0:
        return {"n": 0}
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    matrix_labels = labels + ([UNPARSED] if UNPARSED in set(y_pred) else [])
    counts = Counter(y_pred)
    distribution = {label: counts.get(label, 0) / n for label in matrix_labels}
    majority_label, majority_share = max(distribution.items(), key=lambda kv: kv[1])
    true_counts = Counter(y_true)
    true_majority = max(true_counts.values()) / n
    # A collapse is a model answering one class far more often than the data warrants.
    collapsed = majority_share > collapse_threshold and true_majority <= collapse_threshold
    return {
        "n": n,
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "per_class": {
            label: {
                "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s),
            }
            for label, p, r, f, s in zip(labels, precision, recall, f1, support)
        },
        "confusion_matrix": {
            "labels": matrix_labels,
            "rows_true_cols_pred": confusion_matrix(y_true, y_pred, labels=matrix_labels).tolist(),
        },
        "prediction_distribution": distribution,
        "unparsed_rate": distribution.get(UNPARSED, 0.0),
        "majority_prediction": {"label": majority_label, "share": majority_share},
        "collapsed": bool(collapsed),
    }


def collapse_warning(metrics: dict[str, Any], where: str) -> str | None:
    """A loud one-line warning when predictions collapse onto one class."""
    if not metrics.get("collapsed"):
        return None
    major = metrics["majority_prediction"]
    recalls = ", ".join(f"{k} {v['recall']:.0%}" for k, v in metrics["per_class"].items())
    return (
        f"WARNING {where}: the model answers '{major['label']}' for {major['share']:.0%} of the rows "
        f"(majority collapse); per-class recall: {recalls}"
    )
