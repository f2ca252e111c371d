"""Prompt settings: the format, the wording, and the words the model answers with."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

PromptFormat = Literal["chat_template", "chatml", "llama3", "alpaca"]


@dataclass
class PromptConfig:
    format: PromptFormat = "chat_template"
    """chat_template: the model's own template (from its tokenizer, or the GGUF);
    chatml / llama3: those templates written out; alpaca: instruction/input/response text."""

    system_prompt: str | None = None
    """System message for chat formats. None keeps the template's default (SmolLM2's
    template then adds its own); "" forces an empty one where the template allows."""

    instruction: str = "Classify the text as one of: {labels}. Answer with the label only."
    """Task instruction for classification rows; {labels} lists the allowed answers."""

    input_prefix: str = "Text: "
    """Put before the example's text (chat formats put it under the instruction)."""

    verbalizers: dict[str, str] = field(default_factory=dict)
    """Label -> the word the model answers with (default: the label itself). The first
    tokens of the words must differ, so one forward pass scores every label."""
