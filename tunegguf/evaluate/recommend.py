"""Which GGUF to ship: the smallest file whose parity verdict holds, with the rows behind it.

Works on report.json's content alone, so `tunegguf evaluate --recommend` and any later
reader reach the same answer. A file whose weight parity (from the export manifest)
says the fine-tune was erased is never recommended, whatever its label agreement.
The recommendation is data; report/tables.py (ladder_table) renders it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from tunegguf.evaluate.answers.parity import answers_verdict
from tunegguf.evaluate.config import EvaluateConfig
from tunegguf.evaluate.parity import verdict
from tunegguf.export.weight_parity import stored_erased


@dataclass
class LadderRow:
    quant: str
    size_bytes: int | None
    agreement: float | None
    accuracy_difference: float | None
    accuracy_difference_ci: list[float] | None
    """HF − GGUF accuracy and its paired-bootstrap 95% interval."""
    mean_kl: float | None
    holds: bool
    erased: bool | None
    """True: weight parity says the fine-tune is erased; None: no weight-parity data."""
    eligible: bool
    reasons: list[str] = field(default_factory=list)


@dataclass
class Recommendation:
    choice: str | None
    """The GGUF name to ship, or None when no file qualifies."""
    reason: str
    rows: list[LadderRow]
    mode: str

    def to_dict(self) -> dict[str, Any]:
        return {"choice": self.choice, "reason": self.reason, "mode": self.mode, "rows": [asdict(r) for r in self.rows]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Recommendation":
        """report.json's "recommendation" back; a missing key takes the default (an empty table)."""
        rows = [LadderRow(**r) for r in data.get("rows", [])]
        return cls(data.get("choice"), data.get("reason", ""), rows, data.get("mode", "labels"))


def recommend(report: dict[str, Any], thresholds: EvaluateConfig | dict[str, Any] | None = None) -> Recommendation:
    """The smallest GGUF that holds parity (re-judged with `thresholds` when given) and
    does not erase the fine-tune; ties in size go to the lower mean KL.

    Classification reports are judged on their "parity" blocks; answers reports
    (report["task"] == "answers") on their "answers" blocks, agreement there being the
    share of greedy answers that match HF's (top-5 tolerance)."""
    if isinstance(thresholds, dict):
        thresholds = EvaluateConfig(**{k: v for k, v in thresholds.items() if k in EvaluateConfig.__dataclass_fields__})
    answers = report.get("task") == "answers"
    mode = "answers" if answers else report.get("primary_mode", "labels")
    weight = report.get("weight_parity") or {}
    rows: list[LadderRow] = []
    for name, block in (report.get("answers" if answers else "parity") or {}).items():
        if answers:
            judged = answers_verdict(block, thresholds) if thresholds is not None else report["verdicts"][name]
            greedy = block.get("greedy") or {}
            reference = greedy.get("vs_reference") or {}
            hf_exact, gguf_exact = reference.get("hf_exact"), reference.get("gguf_exact")
            agreement = greedy.get("tolerated_rate")
            diff = {"value": hf_exact - gguf_exact if hf_exact is not None and gguf_exact is not None else None}
            mean_kl = ((block.get("teacher_forced") or {}).get("kl") or {}).get("mean")
        else:
            judged = verdict(block, thresholds) if thresholds is not None else report["verdicts"][name]
            stats = (block.get("modes") or {}).get(mode) or {}
            agreement, diff = stats.get("agreement"), stats.get("accuracy_difference") or {}
            mean_kl = (block.get("next_token") or {}).get("mean_kl")
        erased = stored_erased(weight[name]) if weight.get(name) else None
        reasons = list(judged["reasons"])
        if erased:
            reasons.append("weight parity: the fine-tune is largely erased in this file")
        rows.append(LadderRow(
            quant=name, size_bytes=block.get("size_bytes"), agreement=agreement,
            accuracy_difference=diff.get("value"), accuracy_difference_ci=diff.get("ci"),
            mean_kl=mean_kl, holds=bool(judged["holds"]), erased=erased,
            eligible=bool(judged["holds"]) and not erased, reasons=reasons,
        ))
    big = float("inf")
    rows.sort(key=lambda r: (r.size_bytes if r.size_bytes is not None else big, r.mean_kl if r.mean_kl is not None else big))
    eligible = [r for r in rows if r.eligible]
    if not rows:
        return Recommendation(None, "no GGUF files were compared", rows, mode)
    if not eligible:
        return Recommendation(None, "no GGUF holds parity; ship none of them (see each file's reasons)", rows, mode)
    best = eligible[0]
    smaller = [r for r in rows if r.size_bytes is not None and best.size_bytes is not None and r.size_bytes < best.size_bytes]
    why = f"{best.quant} is the smallest file whose parity holds"
    if best.agreement is not None:
        # For answers the agreement is the greedy match (identical, or within the top-5 rule).
        why += f" ({'greedy match' if mode == 'answers' else 'agreement'} {best.agreement:.1%}"
        why += f", mean KL {best.mean_kl:.3g})" if best.mean_kl is not None else ")"
    if smaller:
        why += "; smaller files fail: " + ", ".join(f"{r.quant} ({r.reasons[0] if r.reasons else 'fails'})" for r in smaller)
    return Recommendation(best.quant, why, rows, mode)
