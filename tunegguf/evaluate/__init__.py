"""Parity evaluation: the HF model and each GGUF scored on the same split, with a report."""

from tunegguf.evaluate.config import EvaluateConfig
from tunegguf.evaluate.runner import EvaluateResult, ModelSpec, evaluate_backends, run

__all__ = ["EvaluateConfig", "EvaluateResult", "ModelSpec", "evaluate_backends", "run"]
