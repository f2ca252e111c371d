"""Parity evaluation settings and the thresholds behind each verdict."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class EvaluateConfig:
    split: Literal["test", "validation"] = "test"
    limit: int | None = None
    """Score only the first N rows (stratified order is kept by the frozen split)."""
    modes: list[Literal["labels", "generate"]] = field(default_factory=lambda: ["labels", "generate"])
    """labels: label-token probabilities in one forward pass; generate: greedy text parsed
    strictly (shows format drift and endless output)."""
    max_new_tokens: int = 8
    batch_size: int = 16
    n_threads: int | None = None
    """llama.cpp threads (None: all cores)."""
    quants: list[str] = field(default_factory=list)
    """Which exported GGUF files to compare with the HF model (empty: all of them)."""
    bootstrap: int = 1000
    min_agreement: float = 0.99
    """Parity holds when the GGUF agrees with the HF model on at least this share..."""
    max_accuracy_drop: float = 0.01
    """...and its accuracy is not lower by more than this (upper end of the 95% CI)."""
    max_mean_kl: float = 0.05
    collapse_threshold: float = 0.9
    seed: int = 0
