"""The fine-tune stage's directory: what is in it, whether it is finished, where to resume.

    out_dir/
      run.json            fingerprint of the settings and data this directory was made with
      metrics.jsonl       one line per step (kind=train), evaluation (eval) and baseline
      checkpoints/        Trainer checkpoints, each with tunegguf_state.json once whole,
                          and tunegguf_best-N: the copy of best/ taken with checkpoint-N
      best/               adapter of the best evaluation so far
      adapter/            the final adapter (= best), tokenizer, tunegguf_adapter.json
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from tunegguf.config.typed import to_dict
from tunegguf.data.example import Example
from tunegguf.finetune.callbacks import STATE_FILE
from tunegguf.io import read_json, read_jsonl, write_jsonl

ADAPTER_INFO = "tunegguf_adapter.json"
# Settings that change how fast or where a run reports, never what it learns.
NOT_FINGERPRINTED = {"eval_batch_size", "report_to", "keep_checkpoints"}


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def best(self) -> Path:
        return self.root / "best"

    @property
    def adapter(self) -> Path:
        return self.root / "adapter"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def run_info(self) -> Path:
        return self.root / "run.json"

    def finished(self) -> bool:
        return (self.adapter / ADAPTER_INFO).is_file()

    def started(self) -> bool:
        return self.metrics.is_file() or self.checkpoints.is_dir() or self.best.is_dir()

    def saved_fingerprint(self) -> str | None:
        if not self.run_info.is_file():
            return None
        return read_json(self.run_info).get("fingerprint")

    def latest_checkpoint(self) -> Path | None:
        """Newest checkpoint whose state file exists (a kill mid-save leaves it out)."""
        found = []
        for path in self.checkpoints.glob("checkpoint-*"):
            match = re.fullmatch(r"checkpoint-(\d+)", path.name)
            if match and (path / STATE_FILE).is_file():
                found.append((int(match.group(1)), path))
        return max(found)[1] if found else None

    def truncate_history(self, step: int) -> int:
        """Drop metrics rows after `step` (they are re-run on resume); return how many."""
        if not self.metrics.is_file():
            return 0
        rows = read_jsonl(self.metrics)
        kept = [r for r in rows if r.get("step", 0) <= step]
        if len(kept) != len(rows):
            write_jsonl(self.metrics, kept)
        return len(rows) - len(kept)


def examples_digest(examples: Sequence[Example]) -> str:
    digest = hashlib.sha256()
    for example in examples:
        digest.update(json.dumps(example.to_dict(), sort_keys=True, ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def fingerprint(
    *,
    config: Any,
    model: Any,
    prompt: Any,
    labels: Sequence[str],
    train: Sequence[Example],
    validation: Sequence[Example],
    data_fingerprint: dict | None,
) -> tuple[str, dict[str, Any]]:
    """Hash of everything that decides the trained adapter (and the data order on resume)."""
    finetune = {k: v for k, v in to_dict(config).items() if k not in NOT_FINGERPRINTED}
    parts = {
        "finetune": finetune,
        "model": to_dict(model),
        "prompt": to_dict(prompt),
        "labels": list(labels),
        # The rows themselves, so a caller's data_fingerprint cannot hide a change.
        "train": examples_digest(train),
        "validation": examples_digest(validation),
        "data_fingerprint": data_fingerprint,
    }
    text = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16], parts
