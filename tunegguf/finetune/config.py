"""LoRA / QLoRA training settings, with the task metric in the loop."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

REPORT_TARGETS = ("tensorboard", "wandb")


@dataclass
class FinetuneConfig:
    engine: Literal["auto", "unsloth", "peft"] = "auto"
    """auto: Unsloth's FastLanguageModel, falling back to plain PEFT (with a warning) for a
    model Unsloth does not support. unsloth: Unsloth or a clear error. peft: plain
    Transformers + PEFT (the benchmark baseline)."""

    lora_r: int = 16
    """LoRA rank; 16 on all seven projections is 4.9 M trainable weights on SmolLM2-135M."""
    lora_alpha: int = 32
    """LoRA scale numerator (scale = alpha / r); 2 x r is the usual choice."""
    lora_dropout: float = 0.0
    """0 lets Unsloth use its fast LoRA kernels."""
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    """Module names that get a LoRA adapter; checked against the model's modules at load."""

    max_steps: int = 60
    """Optimizer steps; 0 means train for `epochs` instead."""
    epochs: float = 1.0
    """Passes over the training rows when max_steps is 0."""
    learning_rate: float = 5e-4
    """Peak learning rate; LoRA on a small model takes 5e-4 to 1e-3 (see NOTES.md)."""
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine"
    warmup_steps: int = 5
    """Linear warm-up steps before the schedule starts."""
    weight_decay: float = 0.0
    batch_size: int = 8
    """Rows per device per forward pass; lower it first on an out-of-memory error."""
    gradient_accumulation_steps: int = 1
    """Forward passes per optimizer step: batch_size x this is the effective batch."""
    packing: bool = False
    """Packing mixes examples in one row; keep it off for classification."""
    gradient_checkpointing: Literal["unsloth", "true", "false"] = "unsloth"
    """unsloth: Unsloth's offloaded checkpointing (plain recomputation on the CPU and in
    the PEFT engine); true: Transformers' checkpointing; false: keep activations (faster,
    more memory)."""
    optimizer: Literal["auto", "adamw_torch", "adamw_8bit", "paged_adamw_8bit"] = "auto"
    """auto: 8-bit AdamW on a GPU, torch AdamW on the CPU."""
    seed: int = 3407
    """Seeds the LoRA init and the data order, so --resume replays the same batches."""

    eval_every: int = 20
    """Score the validation split by label probabilities every N steps (0: only at the end)."""
    eval_batch_size: int = 16
    eval_limit: int | None = None
    """Score only the first N validation rows in the loop (the data stage keeps them
    stratified); None: all. Scoring 872 rows takes about 140 s on 2 CPU cores."""
    metric_for_best: Literal["accuracy", "macro_f1", "loss"] = "macro_f1"
    early_stopping_patience: int = 0
    """Stop after this many evaluations without improvement of metric_for_best (0: never)."""
    save_every: int = 20
    """Checkpoint every N steps for --resume (0: no checkpoints, so no resume)."""
    keep_checkpoints: int = 2
    """Checkpoints kept on disk; two, so a kill while writing one still leaves one whole."""
    baseline: bool = True
    """Score the base model zero-shot on the validation split before training."""
    collapse_threshold: float = 0.9
    """Warn when one class takes more than this share of the predictions."""
    report_to: list[str] = field(default_factory=list)
    """Optional: tensorboard, wandb (when installed)."""

    def __post_init__(self) -> None:
        # Messages name the setting as written in run.yaml, so the CLI error points at it.
        positive = {
            "lora_r": self.lora_r, "lora_alpha": self.lora_alpha, "batch_size": self.batch_size,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "eval_batch_size": self.eval_batch_size, "keep_checkpoints": self.keep_checkpoints,
        }
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"finetune.{name} must be at least 1, got {value}")
        not_negative = {
            "max_steps": self.max_steps, "warmup_steps": self.warmup_steps, "eval_every": self.eval_every,
            "save_every": self.save_every, "early_stopping_patience": self.early_stopping_patience,
            "weight_decay": self.weight_decay,
        }
        for name, value in not_negative.items():
            if value < 0:
                raise ValueError(f"finetune.{name} must not be negative, got {value}")
        if self.max_steps == 0 and self.epochs <= 0:
            raise ValueError("finetune.epochs must be above 0 when finetune.max_steps is 0")
        if self.learning_rate <= 0:
            raise ValueError(f"finetune.learning_rate must be above 0, got {self.learning_rate}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"finetune.lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if not self.target_modules:
            raise ValueError("finetune.target_modules is empty; name at least one module, e.g. q_proj")
        if self.eval_limit is not None and self.eval_limit < 1:
            raise ValueError(f"finetune.eval_limit must be at least 1 (or null for all rows), got {self.eval_limit}")
        if not 0 < self.collapse_threshold <= 1:
            raise ValueError(f"finetune.collapse_threshold must be in (0, 1], got {self.collapse_threshold}")
        unknown = [t for t in self.report_to if t not in REPORT_TARGETS]
        if unknown:
            raise ValueError(f"finetune.report_to: {unknown} not supported; use {list(REPORT_TARGETS)} or []")
