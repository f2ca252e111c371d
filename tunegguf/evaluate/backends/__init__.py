"""Inference runtimes behind one small protocol: Transformers (`hf`), llama.cpp (`llamacpp`)
and running servers (`server`), all opened by `open_backend`."""

from tunegguf.evaluate.backends.base import TOP_K, Backend, Generation, TokenGeneration
from tunegguf.evaluate.backends.factory import BackendOptions, BackendSpec, ModelKind, open_backend

__all__ = [
    "TOP_K", "Backend", "BackendOptions", "BackendSpec", "Generation", "ModelKind", "TokenGeneration", "open_backend",
]
