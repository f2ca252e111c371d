"""Merge, convert and quantize settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class ExportConfig:
    outtype: Literal["f16", "bf16", "f32"] = "f16"
    """Type of the unquantized GGUF that the quants are made from."""
    quants: list[str] = field(default_factory=lambda: ["Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M"])
    """llama.cpp quant types by name (Q8_0, Q4_K_M, ...); the f16 file is always kept."""
    lora_gguf: bool = False
    """Also write the adapter alone as a GGUF LoRA for llama.cpp --lora."""
    modelfile: bool = True
    """Write an Ollama Modelfile next to each GGUF."""
    verify: bool = True
    """Check every file in a separate process (loads, tokenizer, template, stops at EOS)."""
    verify_max_tokens: int = 16
    """Token budget for the greedy completion that must end with EOS."""
    weight_parity: bool = True
    """Measure how much of the fine-tune (merged - base) each quantized file keeps."""
    erased_threshold: float = 0.5
    """A file keeping less than this share of the fine-tune delta is flagged as erasing it."""
