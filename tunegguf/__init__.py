"""tunegguf: LoRA fine-tune -> quantized GGUF -> parity report."""

__version__ = "0.1.0"
