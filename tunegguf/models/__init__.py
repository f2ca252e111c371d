"""Model names, the embedded default (SmolLM2-135M) and the tiny Llama 3.1 test model."""

from tunegguf.models.config import ModelConfig
from tunegguf.models.registry import ALIASES, DEFAULT_MODEL, ResolvedModel, resolve_model

__all__ = ["ALIASES", "DEFAULT_MODEL", "ModelConfig", "ResolvedModel", "resolve_model"]
