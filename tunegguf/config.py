"""The whole run in one config: model, data, prompt and the settings of each stage."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunegguf.configuration import apply_overrides, from_dict, read_yaml, to_dict
from tunegguf.data.config import DataConfig
from tunegguf.evaluate.config import EvaluateConfig
from tunegguf.export.config import ExportConfig
from tunegguf.finetune.config import FinetuneConfig
from tunegguf.models.config import ModelConfig
from tunegguf.prompts.config import PromptConfig


@dataclass
class RunConfig:
    run_dir: str = "runs/demo"
    """Everything the run writes goes here; re-running resumes or skips finished stages."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)


def load_run_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Defaults < YAML file < `--set key=value` overrides."""
    data: dict[str, Any] = read_yaml(path) if path else {}
    apply_overrides(data, list(overrides or []))
    return from_dict(RunConfig, data)


def run_config_dict(config: RunConfig) -> dict[str, Any]:
    return to_dict(config)
