"""LoRA / QLoRA fine-tuning through Unsloth (plain PEFT as fallback), metric in the loop."""
