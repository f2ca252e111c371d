"""What an evaluation scores and returns, shared by the classification and answers tasks."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from tunegguf.data.example import Example
from tunegguf.evaluate.backends import Backend, BackendOptions, BackendSpec, ModelKind, open_backend

REFERENCE = "hf"
ADAPTER_NAME = "hf+adapter"
"""The name of the unmerged base + adapter model (ModelKind.HF_ADAPTER) in reports."""


@dataclass
class ModelSpec:
    """A model to score: how to open its backend, and what it is."""

    name: str
    kind: ModelKind
    """HF (the reference, scored first), GGUF, or HF_ADAPTER (the unmerged base + adapter,
    scored before HF for stage attribution only; no verdict)."""
    open: Callable[[], Backend]
    file: Path | None = None

    @classmethod
    def of(cls, spec: BackendSpec, options: BackendOptions) -> "ModelSpec":
        """The model `spec` names, opened by `open_backend` when it is scored."""
        return cls(spec.name, spec.kind, lambda: open_backend(spec, options), file=spec.file)


@dataclass
class EvaluateResult:
    out_dir: Path
    report_json: Path
    report_md: Path
    report_html: Path
    predictions: Path
    verdicts: dict[str, dict[str, Any]]
    """Per GGUF: holds (bool), reasons (list of str), summary (one line)."""
    metrics: dict[str, dict[str, Any]]
    """Per model, per mode ("labels", "generate"): the metrics in report.json."""
    warnings: list[str] = field(default_factory=list)

    @property
    def all_hold(self) -> bool:
        return bool(self.verdicts) and all(v["holds"] for v in self.verdicts.values())


def tokenizer_parity(examples: Sequence[Example], ref: Any, other: Any) -> dict[str, Any]:
    """Do the two models see the same token ids for the same prompt texts? (must be all)"""
    if not other.token_ids:
        return {}
    mismatched = [i for i, (a, b) in enumerate(zip(ref.token_ids, other.token_ids)) if a != b]
    first = None
    if mismatched:
        i = mismatched[0]
        a, b = ref.token_ids[i], other.token_ids[i]
        pos = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        first = {"id": examples[i].id, "position": pos, "hf": a[pos : pos + 5], "gguf": b[pos : pos + 5]}
    result: dict[str, Any] = {
        "n": len(ref.token_ids),
        "mismatched": len(mismatched),
        "mismatch_rate": len(mismatched) / max(len(ref.token_ids), 1),
        "mismatched_ids": [examples[i].id for i in mismatched],
        "first_mismatch": first,
    }
    if ref.label_token_ids and other.label_token_ids:
        result["hf_label_token_ids"] = ref.label_token_ids
        result["gguf_label_token_ids"] = other.label_token_ids
        result["label_token_ids_equal"] = ref.label_token_ids == other.label_token_ids
    return result
