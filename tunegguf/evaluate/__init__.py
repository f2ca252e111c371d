"""Parity evaluation: the HF model and each GGUF scored on the same split, with a report."""
