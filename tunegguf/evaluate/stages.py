"""Stage attribution: which export step lost accuracy.

The chain base+adapter (unmerged) -> merged HF -> f16 GGUF -> each quant is scored and
each ADJACENT pair compared, so a loss is pinned on "merge", "conversion" or
"quantization (Qx)" instead of on the GGUF as a whole.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from tunegguf.evaluate.backends import ModelKind
from tunegguf.evaluate.parity import NextTokenDivergence, prediction_parity

UNQUANTIZED = ("f32", "f16", "bf16")

def is_unquantized(name: str, file: str | Path | None = None) -> bool:
    """f16 / bf16 / f32 by the model's name or the file's stem suffix."""
    if name.lower() in UNQUANTIZED:
        return True
    stem = Path(file).stem.lower() if file else ""
    return any(re.search(rf"(^|[-_.]){t}$", stem) for t in UNQUANTIZED)


def stage_parents(models: Sequence[tuple[str, str, Any]]) -> dict[str, str]:
    """child -> the model it was made from, for (name, kind, file) in chain order.

    adapter -> merged HF (merge); HF -> the unquantized GGUF (conversion); that GGUF ->
    each quant (quantization). Without an unquantized GGUF the quants hang off the HF model.
    """
    parents: dict[str, str] = {}
    adapter = next((n for n, k, _ in models if k == ModelKind.HF_ADAPTER), None)
    hf = next((n for n, k, _ in models if k == ModelKind.HF), None)
    f16 = next((n for n, k, f in models if k == ModelKind.GGUF and is_unquantized(n, f)), None)
    for name, kind, _ in models:
        if kind == ModelKind.HF and adapter is not None:
            parents[name] = adapter
        elif kind == ModelKind.GGUF and hf is not None:
            parents[name] = hf if (name == f16 or f16 is None) else f16
    return parents


def step_name(parent_kind: str, child_name: str, child_file: Any = None) -> str:
    """What turned the parent into the child: "merge", "conversion", "quantization (Qx)"."""
    if parent_kind == ModelKind.HF_ADAPTER:
        return "merge"
    if parent_kind == ModelKind.HF:
        if is_unquantized(child_name, child_file):
            return "conversion"
        return f"conversion + quantization ({child_name})"
    return f"quantization ({child_name})"


class _Tee:
    """A Backend wrapper that hands each block of log-probs `verb` returns to `on_rows(start, rows)`.

    The scorer asks for the rows in order, so a running offset gives each block's first row:
    next_token_logprobs returns a batch of prompts (row = prompt), teacher_forced_logprobs
    a batch of answers (row = answer token, the offset counting tokens over all answers).
    Everything else passes through untouched.
    """

    def __init__(self, backend: Any, on_rows: Callable[[int, np.ndarray], None],
                 verb: str = "next_token_logprobs") -> None:
        self._backend, self._on_rows, self._offset, self._verb = backend, on_rows, 0, verb

    def __getattr__(self, item: str) -> Any:
        attr = getattr(self._backend, item)
        if item != self._verb:
            return attr

        def tee(*args: Any, **kwargs: Any) -> np.ndarray:
            rows = attr(*args, **kwargs)
            self._on_rows(self._offset, rows)
            self._offset += len(rows)
            return rows

        return tee


class StageDivergence:
    """KL(parent || child) of every adjacent pair, measured while the chain is scored.

    Models that are a parent keep their log-probs in a memory-mapped file under `scratch`
    until the run ends (the adapter, the merged HF model, the f16 GGUF: three at most).
    n: rows in all (prompts; answer tokens for verb="teacher_forced_logprobs").
    shared: name -> a function returning a store someone else writes for that model (the
    answers evaluation's HF reference), read instead of writing a second copy of it.
    """

    def __init__(self, scratch: Path, n: int, parents: dict[str, str],
                 reserve: Callable[[int], None] | None = None, *, verb: str = "next_token_logprobs",
                 shared: dict[str, Callable[[], Any]] | None = None) -> None:
        self.scratch, self.n, self.parents = Path(scratch), n, dict(parents)
        self._reserve = reserve
        self._verb = verb
        self._shared = dict(shared or {})
        self._stores: dict[str, Any] = {}
        self._divergence: dict[str, NextTokenDivergence] = {}
        self.mismatch: dict[str, str] = {}
        self.disk_bytes = 0
        """Bytes of the log-prob files this tracker wrote (kept after close, for the report)."""

    def wrap(self, name: str, open_backend: Callable[[], Any]) -> Callable[[], Any]:
        """An opener whose backend reports its log-probs to this tracker."""
        return lambda: _Tee(open_backend(), lambda start, rows: self._rows(name, start, rows), self._verb)

    def _rows(self, name: str, start: int, rows: np.ndarray) -> None:
        from tunegguf.evaluate.scoring import ReferenceLogprobs

        if len(rows) == 0:  # an empty answer: nothing to store or compare
            return
        if name in self.parents.values() and name not in self._shared:
            if name not in self._stores:
                if self._reserve is not None:
                    self._reserve(self.n * rows.shape[1] * 4)
                self._stores[name] = ReferenceLogprobs(self.scratch / f"stage-{len(self._stores)}.npy",
                                                       self.n, rows.shape[1])
                self.disk_bytes += self.n * rows.shape[1] * 4
            self._stores[name].write(start, rows)
        parent = self.parents.get(name)
        store = None
        if parent:
            store = self._shared[parent]() if parent in self._shared else self._stores.get(parent)
        if store is None:
            return
        if rows.shape[1] != store.vocab:
            self.mismatch[name] = f"{parent} {store.vocab} vs {name} {rows.shape[1]}"
            return
        self._divergence.setdefault(name, NextTokenDivergence()).update(store.read(start, start + len(rows)), rows)

    def result(self, name: str) -> dict[str, Any] | None:
        if name in self.mismatch:
            return {"vocab_mismatch": self.mismatch[name]}
        tracker = self._divergence.get(name)
        return tracker.result() if tracker else None

    def close(self) -> None:
        for store in self._stores.values():
            store.close()
        self._stores.clear()


@dataclass
class StageStep:
    parent: str
    child: str
    step: str
    mode: str
    agreement: float | None
    accuracy_parent: float | None
    accuracy_child: float | None
    accuracy_difference: dict[str, Any]
    """parent − child accuracy, {"value", "ci"} (paired bootstrap, 95%); positive = a loss."""
    mean_kl: float | None
    top1_agreement: float | None


def chain_steps(scored: Sequence[Any]) -> list[tuple[Any, Any, str]]:
    """(parent, child, step name) for every scored model (with name, kind, file) that was made
    from another one in the chain, in scoring order."""
    by_name = {s.name: s for s in scored}
    parents = stage_parents([(s.name, s.kind, s.file) for s in scored])
    return [(by_name[parents[child.name]], child, step_name(by_name[parents[child.name]].kind, child.name, child.file))
            for child in scored if child.name in parents]


def stage_table(
    scored: Sequence[Any],
    y_true: Sequence[str],
    weights: np.ndarray,
    *,
    mode: str = "labels",
    divergence: dict[str, dict[str, Any] | None] | None = None,
) -> dict[str, Any]:
    """Adjacent-pair comparison of scored models (ModelScores) in chain order.

    Returns {"mode", "steps": [StageStep as dict], "largest_loss": step dict or None,
    "summary": one line}. The largest loss is the largest Δaccuracy, ties broken by KL.
    """
    divergence = divergence or {}
    steps: list[StageStep] = []
    for parent, child, name in chain_steps(scored):
        a, b = parent.predictions(mode), child.predictions(mode)
        if not (parent.ok and child.ok and a and len(a) == len(b)):
            steps.append(StageStep(parent.name, child.name, name, mode, None, None, None,
                                   {"value": None, "ci": None}, None, None))
            continue
        stats = prediction_parity(y_true, a, b, weights)
        truth = np.asarray(list(y_true), dtype=object)
        kl = divergence.get(child.name) or {}
        steps.append(StageStep(
            parent.name, child.name, name, mode, stats["agreement"],
            float((np.asarray(a, dtype=object) == truth).mean()), float((np.asarray(b, dtype=object) == truth).mean()),
            stats["accuracy_difference"], kl.get("mean_kl"), kl.get("top1_agreement"),
        ))
    rows = [asdict(s) for s in steps]
    measured = [r for r in rows if r["accuracy_difference"]["value"] is not None]
    largest = None
    if measured:
        largest = max(measured, key=lambda r: (r["accuracy_difference"]["value"], r["mean_kl"] or 0.0))
    return {"mode": mode, "steps": rows, "largest_loss": largest, "summary": _stage_summary(largest)}


def _stage_summary(largest: dict[str, Any] | None) -> str:
    if largest is None:
        return "No adjacent pair could be compared"
    diff = largest["accuracy_difference"]["value"]
    kl = largest["mean_kl"]
    kl_text = f", mean KL {kl:.3g}" if kl is not None else ""
    if diff <= 0:
        return f"No step lost accuracy on this split (largest divergence: {largest['step']}{kl_text})"
    return (f"The largest loss is at {largest['step']} ({largest['parent']} -> {largest['child']}): "
            f"accuracy {100 * diff:+.1f} pts lower, agreement {100 * largest['agreement']:.1f}%{kl_text}")

