"""The whole run in one config: model, data, prompt and the settings of each stage."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunegguf.config.typed import apply_overrides, from_dict, read_yaml, set_setting
from tunegguf.data.config import DataConfig
from tunegguf.errors import TuneGGUFError
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


def load_run_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    flags: dict[str, tuple[str, Any]] | None = None,
) -> RunConfig:
    """Defaults < YAML file < `--set key=value` overrides < a command's own flags.

    `flags` maps a dotted setting to (flag name, value), e.g. {"export.quants": ("--quants",
    ["Q8_0"])}; a None value means the flag was not given. Flags are applied to the plain
    dict before validation, so a flag goes through exactly the checks its YAML key does.
    """
    data: dict[str, Any] = read_yaml(path) if path else {}
    apply_overrides(data, list(overrides or []))
    given = {key: flag for key, (flag, value) in (flags or {}).items() if value is not None}
    for key, (flag, value) in (flags or {}).items():
        if value is not None:
            set_setting(data, key.split("."), value, flag)
    try:
        return from_dict(RunConfig, data)
    except TuneGGUFError as exc:
        # Name the flag the user typed when its value is the one refused.
        flag = next((flag for key, flag in given.items() if str(exc).startswith(key)), None)
        if flag is None:
            raise
        raise TuneGGUFError(f"{flag}: {exc}") from None
