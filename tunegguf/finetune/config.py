"""LoRA / QLoRA training settings, with the task metric in the loop."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class FinetuneConfig:
    engine: Literal["auto", "unsloth", "peft"] = "auto"
    """auto: Unsloth's FastLanguageModel, falling back to plain PEFT (with a warning) for a
    model Unsloth does not support. peft: plain Transformers + PEFT (the benchmark baseline)."""

    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    """0 lets Unsloth use its fast LoRA kernels."""
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )

    max_steps: int = 60
    """Optimizer steps; 0 means train for `epochs` instead."""
    epochs: float = 1.0
    learning_rate: float = 5e-4
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine"
    warmup_steps: int = 5
    weight_decay: float = 0.0
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    packing: bool = False
    """Packing mixes examples in one row; keep it off for classification."""
    gradient_checkpointing: Literal["unsloth", "true", "false"] = "unsloth"
    optimizer: Literal["auto", "adamw_torch", "adamw_8bit", "paged_adamw_8bit"] = "auto"
    """auto: 8-bit AdamW on a GPU, torch AdamW on the CPU."""
    seed: int = 3407

    eval_every: int = 20
    """Score the validation split by label probabilities every N steps (0: only at the end)."""
    eval_batch_size: int = 16
    metric_for_best: Literal["accuracy", "macro_f1", "loss"] = "macro_f1"
    early_stopping_patience: int = 0
    """Stop after this many evaluations without improvement of metric_for_best (0: never)."""
    save_every: int = 20
    """Checkpoint every N steps for --resume."""
    baseline: bool = True
    """Score the base model zero-shot on the validation split before training."""
    collapse_threshold: float = 0.9
    """Warn when one class takes more than this share of the predictions."""
    report_to: list[str] = field(default_factory=list)
    """Optional: tensorboard, wandb (when installed)."""
