"""Does a GGUF answer like the HF model? Paired statistics on the same rows, and the verdict.

Accuracy alone can match while the two models disagree on many rows (errors that cancel),
so parity is judged on the rows themselves: agreement, Cohen's kappa, McNemar's exact test
on the discordant pairs, a paired bootstrap interval of the accuracy difference, and the
full next-token distribution at the answer position (KL divergence, top-1 agreement), as
llama.cpp's `perplexity --kl-divergence` reports it.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from tunegguf.evaluate.config import EvaluateConfig
from tunegguf.evaluate.metrics import paired_accuracy_difference


def prediction_parity(
    y_true: Sequence[str], ref_pred: Sequence[str], pred: Sequence[str], weights: np.ndarray
) -> dict[str, Any]:
    """Agreement statistics of two prediction lists over the same rows (ref = HF)."""
    from scipy.stats import binomtest
    from sklearn.metrics import cohen_kappa_score

    ref = np.asarray(list(ref_pred), dtype=object)
    other = np.asarray(list(pred), dtype=object)
    truth = np.asarray(list(y_true), dtype=object)
    n = len(truth)
    if n == 0:
        return {"n": 0}
    agreement = float((ref == other).mean())
    if agreement == 1.0:
        kappa = 1.0  # sklearn gives 0/0 when both answer one class throughout
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            kappa = float(cohen_kappa_score(list(ref), list(other)))
        kappa = None if math.isnan(kappa) else kappa
    ref_right, other_right = ref == truth, other == truth
    # McNemar's exact test: under "same accuracy" the discordant pairs split 50/50.
    only_ref = int((ref_right & ~other_right).sum())
    only_other = int((~ref_right & other_right).sum())
    discordant = only_ref + only_other
    p_value = float(binomtest(only_ref, discordant, 0.5).pvalue) if discordant else 1.0
    return {
        "n": n,
        "agreement": agreement,
        "disagreements": int((ref != other).sum()),
        "kappa": kappa,
        "mcnemar": {"hf_right_gguf_wrong": only_ref, "hf_wrong_gguf_right": only_other, "p_value": p_value},
        "accuracy_difference": paired_accuracy_difference(y_true, ref_pred, pred, weights),
    }


def probability_parity(ref_probs: np.ndarray, probs: np.ndarray) -> dict[str, float | None]:
    """Mean and max |Δp| of the label probabilities (renormalized over the label set)."""
    if ref_probs.size == 0 or ref_probs.shape != probs.shape:
        return {"mean_abs_dp": None, "max_abs_dp": None}
    delta = np.abs(ref_probs.astype(np.float64) - probs.astype(np.float64))
    return {"mean_abs_dp": float(delta.mean()), "max_abs_dp": float(delta.max())}


class NextTokenDivergence:
    """KL(HF || GGUF) and top-1 agreement of the next-token distribution, one batch at a time.

    Only per-row numbers are kept, so memory does not grow with the vocabulary.
    """

    def __init__(self) -> None:
        self.kl: list[float] = []
        self.top1: list[bool] = []

    def update(self, ref_logprobs: np.ndarray, logprobs: np.ndarray) -> None:
        ref = ref_logprobs.astype(np.float64)
        other = logprobs.astype(np.float64)
        p = np.exp(ref)
        # 0 * log 0 is 0; masking first keeps -inf - -inf from turning into NaN.
        with np.errstate(invalid="ignore"):
            terms = np.where(p > 0, p * (ref - other), 0.0)
        # KL is never negative; float rounding on identical rows can give -1e-9.
        self.kl.extend(np.maximum(terms.sum(axis=1), 0.0).tolist())
        self.top1.extend((ref.argmax(axis=1) == other.argmax(axis=1)).tolist())

    def result(self) -> dict[str, Any]:
        if not self.kl:
            return {"mean_kl": None, "median_kl": None, "p99_kl": None, "max_kl": None, "top1_agreement": None}
        kl = np.asarray(self.kl)
        return {
            "mean_kl": float(kl.mean()),
            "median_kl": float(np.median(kl)),
            "p99_kl": float(np.percentile(kl, 99)),
            "max_kl": float(kl.max()),
            "top1_agreement": float(np.mean(self.top1)),
        }


def flipped_examples(
    ids: Sequence[str],
    y_true: Sequence[str],
    ref_pred: Sequence[str],
    pred: Sequence[str],
    labels: Sequence[str],
    ref_probs: np.ndarray | None = None,
    probs: np.ndarray | None = None,
    ref_text: Sequence[str] | None = None,
    text: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Rows where the two models answer differently, with both models' evidence."""
    rows = []
    for i, (a, b) in enumerate(zip(ref_pred, pred)):
        if a == b:
            continue
        row: dict[str, Any] = {"id": ids[i], "label": y_true[i], "hf": a, "gguf": b}
        if ref_probs is not None and probs is not None:
            row["hf_probs"] = {label: round(float(v), 6) for label, v in zip(labels, ref_probs[i])}
            row["gguf_probs"] = {label: round(float(v), 6) for label, v in zip(labels, probs[i])}
        if ref_text is not None and text is not None:
            row["hf_text"], row["gguf_text"] = ref_text[i], text[i]
        rows.append(row)
    return rows


def verdict(parity: dict[str, Any], config: EvaluateConfig) -> dict[str, Any]:
    """"parity holds" or "parity fails" with every reason, from one GGUF's parity block."""
    reasons: list[str] = []
    if parity.get("error"):
        reasons.append(f"could not run: {parity['error']}")
    tokens = parity.get("tokenizer", {})
    if tokens.get("mismatched", 0):
        reasons.append(
            f"tokenizer: {tokens['mismatched']} of {tokens['n']} prompts tokenize differently from the HF tokenizer "
            f"(first: {tokens['first_mismatch']})"
        )
    if tokens.get("label_token_ids_equal") is False:
        reasons.append(
            f"label tokens differ: HF {tokens['hf_label_token_ids']} vs GGUF {tokens['gguf_label_token_ids']}"
        )
    nxt = parity.get("next_token") or {}
    if nxt.get("vocab_mismatch"):
        reasons.append(f"vocabulary size differs ({nxt['vocab_mismatch']}); next-token KL is not comparable")
    elif nxt.get("mean_kl") is not None and nxt["mean_kl"] > config.max_mean_kl:
        reasons.append(f"mean KL {nxt['mean_kl']:.4f} > max_mean_kl {config.max_mean_kl}")
    for mode, stats in parity.get("modes", {}).items():
        if not stats.get("n"):
            continue
        if stats["agreement"] < config.min_agreement:
            reasons.append(f"{mode}: agreement {stats['agreement']:.1%} < min_agreement {config.min_agreement:.1%}")
        diff = stats["accuracy_difference"]
        drop = diff["ci"][1] if diff.get("ci") else diff["value"]
        if drop is not None and drop > config.max_accuracy_drop:
            reasons.append(
                f"{mode}: accuracy may drop by up to {drop:.1%} (95% CI upper) > max_accuracy_drop "
                f"{config.max_accuracy_drop:.1%}"
            )
        unparsed = stats.get("gguf_unparsed_rate")
        if mode == "generate" and unparsed is not None and unparsed > config.max_unparsed_rate:
            hf_rate = stats.get("hf_unparsed_rate")
            hf_note = f" (HF: {hf_rate:.0%})" if hf_rate is not None else ""
            reasons.append(
                f"generate: {unparsed:.0%} of answers unparseable{hf_note} > max_unparsed_rate "
                f"{config.max_unparsed_rate:.0%}"
            )
    holds = not reasons
    summary = "parity holds" if holds else "parity fails: " + "; ".join(reasons)
    return {"holds": holds, "reasons": reasons, "summary": summary}
