"""Which model to start from and how to load it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class ModelConfig:
    name: str = "smollm2-135m"
    """An alias (smollm2-135m, tiny-llama3), a local HF checkpoint directory, or a hub name
    such as unsloth/Meta-Llama-3.1-8B-Instruct-bnb-4bit (gated models need HF_TOKEN)."""

    max_seq_length: int = 512
    """Longest prompt + answer in tokens; longer training rows are dropped with a warning."""

    load_in_4bit: bool | None = None
    """None: 4-bit QLoRA on a CUDA GPU, 16-bit elsewhere. True without a GPU is refused."""

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """auto: bf16 where the GPU supports it, fp16 on a T4, float32 on the CPU."""

    def __post_init__(self) -> None:
        if self.max_seq_length < 16:
            raise ValueError("model.max_seq_length must be at least 16")
