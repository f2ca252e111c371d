"""LoRA / QLoRA fine-tuning through Unsloth (plain PEFT as fallback), metric in the loop."""

from tunegguf.finetune.config import FinetuneConfig
from tunegguf.finetune.stage import FinetuneResult, run

__all__ = ["FinetuneConfig", "FinetuneResult", "run"]
