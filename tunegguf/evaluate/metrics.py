"""A model's metrics in the parity report: the shared classification metrics
(`tunegguf.scoring.metrics`) plus calibration (ECE) and seeded bootstrap intervals, which
say how much a difference between two models can be trusted.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from tunegguf.scoring.metrics import classification_metrics

# ---- calibration and uncertainty -------------------------------------------------------


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> dict[str, Any]:
    """ECE: the gap between confidence and accuracy, averaged over equal-width bins.

    `confidence` is the probability of the predicted label (renormalized over the label
    set), `correct` whether that prediction was right. The per-bin table is kept for the
    reliability diagram.
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    n = len(confidence)
    if n == 0:
        return {"ece": None, "bins": []}
    # Right-closed bins so a confidence of exactly 1.0 lands in the last one.
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    ece = 0.0
    table = []
    for b in range(bins):
        mask = index == b
        count = int(mask.sum())
        if count == 0:
            continue
        conf, acc = float(confidence[mask].mean()), float(correct[mask].mean())
        ece += count / n * abs(conf - acc)
        table.append({"low": b / bins, "high": (b + 1) / bins, "count": count, "confidence": conf, "accuracy": acc})
    return {"ece": float(ece), "bins": table}


def bootstrap_weights(n: int, resamples: int, seed: int) -> np.ndarray:
    """How often each row is drawn in each resample: [resamples, n] counts summing to n.

    Counts instead of index lists turn every resampled statistic into a matrix product,
    and sharing one draw across models makes the paired comparisons paired.
    """
    rng = np.random.default_rng(seed)
    if n == 0 or resamples == 0:
        return np.zeros((0, n), dtype=np.float32)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float32)


def _macro_f1_resampled(weights: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray, n_labels: int) -> np.ndarray:
    """Macro-F1 (over the real labels, zero when undefined) under each resample's weights."""
    f1 = np.zeros(weights.shape[0], dtype=np.float64)
    for c in range(n_labels):
        tp = weights @ ((y_true == c) & (y_pred == c)).astype(np.float32)
        fp = weights @ ((y_true != c) & (y_pred == c)).astype(np.float32)
        fn = weights @ ((y_true == c) & (y_pred != c)).astype(np.float32)
        denom = 2 * tp + fp + fn
        f1 += np.divide(2 * tp, denom, out=np.zeros_like(denom, dtype=np.float64), where=denom > 0)
    return f1 / n_labels


def _encode(values: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    # Anything outside the label set (UNPARSED) maps to -1: wrong for every class.
    index = {label: i for i, label in enumerate(labels)}
    return np.array([index.get(v, -1) for v in values], dtype=np.int64)


def _interval(samples: np.ndarray) -> list[float] | None:
    if samples.size == 0:
        return None
    low, high = np.percentile(samples, [2.5, 97.5])
    return [float(low), float(high)]


def bootstrap_ci(
    y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str], weights: np.ndarray
) -> dict[str, list[float] | None]:
    """Percentile 95% intervals of accuracy and macro-F1 over the given resample weights."""
    t, p = _encode(y_true, labels), _encode(y_pred, labels)
    n = len(t)
    if n == 0 or weights.shape[0] == 0:
        return {"accuracy": None, "macro_f1": None}
    accuracy = weights @ (t == p).astype(np.float32) / n
    return {"accuracy": _interval(accuracy), "macro_f1": _interval(_macro_f1_resampled(weights, t, p, len(labels)))}


def paired_accuracy_difference(
    y_true: Sequence[str], pred_a: Sequence[str], pred_b: Sequence[str], weights: np.ndarray
) -> dict[str, Any]:
    """acc(a) - acc(b) with a paired percentile 95% interval (same resamples for both)."""
    truth = np.asarray(list(y_true), dtype=object)
    a = (np.asarray(list(pred_a), dtype=object) == truth).astype(np.float32)
    b = (np.asarray(list(pred_b), dtype=object) == truth).astype(np.float32)
    n = len(truth)
    value = float((a - b).mean()) if n else None
    samples = weights @ (a - b) / n if n and weights.shape[0] else np.zeros(0)
    return {"value": value, "ci": _interval(samples)}


def model_metrics(
    y_true: Sequence[str],
    y_pred: Sequence[str],
    labels: Sequence[str],
    *,
    probs: np.ndarray | None = None,
    weights: np.ndarray | None = None,
    collapse_threshold: float = 0.9,
    ece_bins: int = 10,
) -> dict[str, Any]:
    """Everything reported for one model in one mode: classification metrics, 95% CIs,
    and (with label probabilities) the calibration error of the predicted label."""
    result = classification_metrics(y_true, y_pred, labels, collapse_threshold)
    if weights is not None:
        result["ci95"] = bootstrap_ci(y_true, y_pred, labels, weights)
    if probs is not None and len(y_true):
        confidence = np.asarray(probs).max(axis=1)
        correct = np.array([t == p for t, p in zip(y_true, y_pred)])
        calibration = expected_calibration_error(confidence, correct, ece_bins)
        result["ece"] = calibration["ece"]
        result["calibration_bins"] = calibration["bins"]
    return result
