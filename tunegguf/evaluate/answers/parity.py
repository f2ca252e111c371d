"""Does a GGUF answer like the HF model? The per-GGUF answers block, its verdict, and
the stage table (adapter -> merged -> f16 -> quant) over answer tokens.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Sequence

import numpy as np

from tunegguf.evaluate.answers.metrics import greedy_comparison
from tunegguf.evaluate.config import EvaluateConfig


def answers_parity(
    ref: Any,
    other: Any,
    weights: np.ndarray,
    *,
    tokenizer: dict[str, Any],
    references: Sequence[str],
    checkable: bool,
) -> dict[str, Any]:
    """One GGUF's block of report.json "answers" (ref, other: AnswerScores; tokenizer:
    the classification report's tokenizer-parity block for its prompts)."""
    block: dict[str, Any] = {"file": other.file, "size_bytes": other.size_bytes, "error": other.error,
                             "tokenizer": tokenizer}
    if not other.ok:
        # Partial numbers of a model that failed half-way would read as a parity result.
        block["teacher_forced"], block["greedy"] = None, None
        return block
    if other.vocab_mismatch:
        block["teacher_forced"] = {"vocab_mismatch": other.vocab_mismatch}
    else:
        block["teacher_forced"] = other.teacher_forced.result(weights) if other.teacher_forced else None
    block["greedy"], _ = greedy_comparison(ref.generations, other.generations, weights,
                                           references=references, checkable=checkable)
    return block


def answers_verdict(block: dict[str, Any], config: EvaluateConfig) -> dict[str, Any]:
    """"parity holds" or "parity fails" with every reason, from one GGUF's answers block.

    Point estimates against evaluate.answers' thresholds (the intervals are in the report)."""
    t = config.answers
    reasons: list[str] = []
    if block.get("error"):
        reasons.append(f"could not run: {block['error']}")
    tokens = block.get("tokenizer") or {}
    if tokens.get("mismatched", 0):
        reasons.append(
            f"tokenizer: {tokens['mismatched']} of {tokens['n']} prompts tokenize differently from the HF tokenizer "
            f"(first: {tokens['first_mismatch']})"
        )
    tf = block.get("teacher_forced") or {}
    if tf.get("vocab_mismatch"):
        reasons.append(f"vocabulary size differs ({tf['vocab_mismatch']}); teacher-forced KL is not comparable")
    kl = tf.get("kl") or {}
    if kl.get("mean") is not None and kl["mean"] > t.max_mean_kl:
        reasons.append(f"mean KL {kl['mean']:.4g} > evaluate.answers.max_mean_kl {t.max_mean_kl}")
    if kl.get("p99") is not None and kl["p99"] > t.max_p99_kl:
        reasons.append(f"p99 KL {kl['p99']:.4g} > evaluate.answers.max_p99_kl {t.max_p99_kl}")
    same = (tf.get("same_top") or {}).get("rate")
    if same is not None and same < t.min_same_top:
        reasons.append(f"same top token {same:.1%} < evaluate.answers.min_same_top {t.min_same_top:.1%}")
    greedy = block.get("greedy") or {}
    if greedy.get("tolerated_rate") is not None and greedy["tolerated_rate"] < t.min_greedy_match:
        reasons.append(f"greedy answers match (top-5 tolerance) on {greedy['tolerated_rate']:.1%} of rows "
                       f"< evaluate.answers.min_greedy_match {t.min_greedy_match:.1%}")
    if greedy.get("stop_agreement") is not None and greedy["stop_agreement"] < t.min_stop_agreement:
        reasons.append(
            f"stops like HF on {greedy['stop_agreement']:.1%} of rows (HF stopped on {greedy['hf_stopped_rate']:.0%}, "
            f"GGUF on {greedy['gguf_stopped_rate']:.0%}) < evaluate.answers.min_stop_agreement "
            f"{t.min_stop_agreement:.1%}"
        )
    holds = not reasons
    summary = "parity holds" if holds else "parity fails: " + "; ".join(reasons)
    return {"holds": holds, "reasons": reasons, "summary": summary}


def answers_stage_table(
    scored: Sequence[Any],
    weights: np.ndarray,
    *,
    divergence: dict[str, dict[str, Any] | None] | None = None,
    references: Sequence[str] = (),
    checkable: bool = False,
) -> dict[str, Any]:
    """Adjacent-pair comparison of AnswerScores in chain order, in the shape of
    stages.stage_table (same step keys, mode "answers"): agreement = greedy answers
    identical; accuracy = exact match vs the reference (checkable sets only); mean_kl /
    top1_agreement over the answer tokens. The largest loss is the largest mean KL
    (answers may have no accuracy to lose), ties broken by lower agreement."""
    from tunegguf.evaluate.metrics import paired_accuracy_difference
    from tunegguf.evaluate.stages import StageStep, chain_steps
    from tunegguf.evaluate.answers.metrics import compare_greedy, exact_match

    divergence = divergence or {}
    steps: list[StageStep] = []
    for parent, child, name in chain_steps(scored):
        a, b = parent.generations, child.generations
        if not (parent.ok and child.ok and a and len(a) == len(b)):
            steps.append(StageStep(parent.name, child.name, name, "answers", None, None, None,
                                   {"value": None, "ci": None}, None, None))
            continue
        agreement = float(np.mean([compare_greedy(x, y).identical for x, y in zip(a, b)]))
        acc_a = acc_b = None
        diff: dict[str, Any] = {"value": None, "ci": None}
        if checkable and references:
            right_a = ["1" if exact_match(g.text, r) else "0" for g, r in zip(a, references)]
            right_b = ["1" if exact_match(g.text, r) else "0" for g, r in zip(b, references)]
            acc_a, acc_b = right_a.count("1") / len(right_a), right_b.count("1") / len(right_b)
            diff = paired_accuracy_difference(["1"] * len(right_a), right_a, right_b, weights)
        kl = divergence.get(child.name) or {}
        steps.append(StageStep(parent.name, child.name, name, "answers", agreement, acc_a, acc_b, diff,
                               kl.get("mean_kl"), kl.get("top1_agreement")))
    rows = [asdict(s) for s in steps]
    measured = [r for r in rows if r["mean_kl"] is not None]
    largest = max(measured, key=lambda r: (r["mean_kl"], -(r["agreement"] or 0.0))) if measured else None
    return {"mode": "answers", "steps": rows, "largest_loss": largest, "summary": _summary(largest)}


def _summary(largest: dict[str, Any] | None) -> str:
    if largest is None:
        return "No adjacent pair could be compared"
    text = (f"The largest divergence is at {largest['step']} ({largest['parent']} -> {largest['child']}): "
            f"mean KL {largest['mean_kl']:.3g} per answer token")
    if largest["agreement"] is not None:
        text += f", greedy answers identical on {100 * largest['agreement']:.1f}% of rows"
    return text


__all__ = ["answers_parity", "answers_stage_table", "answers_verdict"]
