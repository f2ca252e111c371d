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
    imatrix_quants: list[str] = field(default_factory=list)
    """Quants also written with an importance matrix collected from the training prompts
    (model-<QUANT>-imat.gguf, named <QUANT>-imat in the report), so the quant ladder shows
    each with and without it. It matters from about 4 bits down; IQ* types require one."""
    imatrix_rows: int = 512
    """Training rows (prompt + answer, as fine-tuning saw them) run through the merged
    model to collect the importance matrix."""
    imatrix_file: str | None = None
    """An existing GGUF importance matrix (e.g. from llama-imatrix) to use instead of collecting one."""
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
    threads: int | None = None
    """CPU threads for llama.cpp while quantizing and verifying (None: llama.cpp's default
    for quantizing, up to 4 for the checks)."""

    def __post_init__(self) -> None:
        if self.verify_max_tokens < 1:
            raise ValueError("export.verify_max_tokens must be at least 1")
        if not 0.0 <= self.erased_threshold <= 1.0:
            raise ValueError("export.erased_threshold must be between 0 and 1 (a share of the fine-tune delta)")
        if self.imatrix_rows < 1:
            raise ValueError("export.imatrix_rows must be at least 1")
        if self.threads is not None and self.threads < 1:
            raise ValueError("export.threads must be at least 1 (or null for the default)")
