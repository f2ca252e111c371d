"""Inference runtimes behind one small protocol: Transformers (`hf`) and llama.cpp (`llamacpp`)."""

from tunegguf.evaluate.backends.base import Backend, Generation

__all__ = ["Backend", "Generation"]
