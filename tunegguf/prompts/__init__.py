"""Prompt rendering shared by training and both inference backends (byte-identical prompts)."""

from tunegguf.prompts.config import PromptConfig
from tunegguf.prompts.renderer import PromptRenderer, Rendered, Segment, TemplateTokens
from tunegguf.prompts.verbalizer import label_token_ids

__all__ = ["PromptConfig", "PromptRenderer", "Rendered", "Segment", "TemplateTokens", "label_token_ids"]
