"""TRL's SFTTrainer set up from a FinetuneConfig: response-only loss on pre-tokenized rows.

The rows carry `completion_mask`; TRL folds it into labels only with
`completion_only_loss=True` (with a pre-tokenized dataset its auto setting is off, which
would silently train on the prompt too). Evaluation is ours (callbacks.py), not TRL's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunegguf.finetune.config import FinetuneConfig
from tunegguf.finetune.loading import Precision
from tunegguf.models import ModelConfig


def optimizer_name(config: FinetuneConfig, precision: Precision) -> str:
    """auto: 8-bit AdamW on CUDA (bitsandbytes), torch AdamW elsewhere."""
    if config.optimizer != "auto":
        return config.optimizer
    return "adamw_8bit" if precision.device == "cuda" else "adamw_torch"


def sft_config(
    config: FinetuneConfig, model_cfg: ModelConfig, precision: Precision, checkpoints_dir: Path
) -> Any:
    from trl import SFTConfig

    return SFTConfig(
        output_dir=str(checkpoints_dir),
        max_steps=config.max_steps if config.max_steps > 0 else -1,
        num_train_epochs=config.epochs,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        optim=optimizer_name(config, precision),
        seed=config.seed,
        data_seed=config.seed,
        # Autocast follows the weights' dtype; float32 on the CPU (TRL would default to bf16).
        bf16=precision.dtype == "bfloat16",
        fp16=precision.dtype == "float16",
        use_cpu=precision.device == "cpu",
        packing=config.packing,
        max_length=model_cfg.max_seq_length,
        completion_only_loss=True,
        logging_steps=1,
        save_strategy="steps" if config.save_every > 0 else "no",
        save_steps=max(config.save_every, 1),
        save_total_limit=config.keep_checkpoints,
        eval_strategy="no",
        report_to=list(config.report_to) or "none",
        include_num_input_tokens_seen="non_padding",
        # Unsloth / the loader already set checkpointing on the model (see loading.py).
        gradient_checkpointing=False,
        dataloader_pin_memory=precision.device == "cuda",
        disable_tqdm=False,
    )


def make_trainer(loaded: Any, args: Any, train_dataset: Any) -> Any:
    """An SFTTrainer (Unsloth's patched class when Unsloth was imported first)."""
    import trl
    from transformers import Trainer

    base = trl.SFTTrainer  # looked up now: Unsloth's CPU backend swaps the class on import
    # TRL 1.x scores the answer positions through a Triton LM-head kernel that has no CPU
    # driver; Unsloth reroutes it on the CPU, plain PEFT needs the same computation here.
    own_loss = loaded.engine == "peft" and loaded.precision.device not in ("cuda", "xpu")
    fast_head = plain_head(loaded.model)

    class TuneGGUFTrainer(base):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if own_loss and not return_outputs:
                if fast_head:
                    return answer_positions_loss(model, inputs, num_items_in_batch)
                inputs["use_cache"] = False  # soft-capped heads: the model's own loss
                return Trainer.compute_loss(self, model, inputs, num_items_in_batch=num_items_in_batch)
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)

    return TuneGGUFTrainer(
        model=loaded.model, args=args, train_dataset=train_dataset, processing_class=loaded.tokenizer
    )


def answer_positions_loss(model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
    """Causal-LM loss with the LM head applied only where a label is set (the answer tokens).

    Equal to the model's own loss (labels shifted by one, mean over labelled tokens, or sum
    over `num_items_in_batch` under gradient accumulation) without the [batch, seq, vocab]
    logits; the head is most of the compute for a small model with a large vocabulary.
    """
    import torch

    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = getattr(causal_lm, causal_lm.base_model_prefix)
    hidden = backbone(
        input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"), use_cache=False
    ).last_hidden_state
    shift_labels = inputs["labels"][:, 1:]
    keep = shift_labels != -100
    head = causal_lm.get_output_embeddings()
    logits = head(hidden[:, :-1][keep]).float()
    total = torch.nn.functional.cross_entropy(logits, shift_labels[keep], reduction="sum")
    denominator = num_items_in_batch if num_items_in_batch is not None else keep.sum()
    return total / torch.as_tensor(denominator, device=total.device).clamp(min=1)


def plain_head(model: Any) -> bool:
    """True when logits are exactly lm_head(hidden): no soft-cap or scale to re-apply."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    for name in ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier"):
        if getattr(config, name, None) not in (None, 1, 1.0):
            return False
    return True
