"""LoRA adapter directories: what the fine-tune saves, export merges and evaluate loads."""

from __future__ import annotations

from pathlib import Path

from tunegguf.errors import TuneGGUFError
from tunegguf.io import require_path

ADAPTER_CONFIG = "adapter_config.json"


def require_adapter_dir(adapter_dir: str | Path) -> Path:
    """`adapter_dir` as a Path; a one-line error unless it holds an adapter_config.json."""
    adapter_dir = require_path(adapter_dir, "LoRA adapter directory", kind="directory",
                               fix=f"give the directory the fine-tune saved the adapter in (it holds {ADAPTER_CONFIG})")
    if not (adapter_dir / ADAPTER_CONFIG).is_file():
        raise TuneGGUFError(f"{adapter_dir} is not a LoRA adapter directory (no {ADAPTER_CONFIG})")
    return adapter_dir
