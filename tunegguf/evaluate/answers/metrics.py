"""Statistics of free-text answers: pure numpy/scipy, no backends.

Teacher-forced: at every token of the reference answer, KL(HF || GGUF) over the full
vocabulary, same top-1, Δp of the reference token and NLL — the numbers
`llama-perplexity --kl-divergence` prints. Greedy: each model's own answer compared with
HF's (first divergence, vLLM's top-5 tolerance, stopping) and with the reference
(exact match, chrF, flips with McNemar's exact test).

Intervals resample ROWS, not tokens (tokens of one answer are not independent): every
statistic is a sum over rows, so `bootstrap_weights` (counts per row and resample) turns
each resample into a matrix product, shared by all models so comparisons stay paired.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from tunegguf.evaluate.backends.base import TokenGeneration

POSITION_BINS: tuple[tuple[int, int | None], ...] = (
    (0, 0), (1, 1), (2, 2), (3, 3), (4, 7), (8, 15), (16, 31), (32, 63), (64, None),
)
"""Answer-token positions, inclusive; the last bin is open. Fine at the start, where a
template or the first word goes wrong, coarse later, where few answers reach."""


# ---- one row, teacher-forced ------------------------------------------------------------


@dataclass
class PositionStats:
    """Per answer token of one row: [T] arrays."""

    kl: np.ndarray
    same_top: np.ndarray
    delta_p: np.ndarray
    """p_gguf − p_hf of the reference token."""
    nll_ref: np.ndarray
    nll: np.ndarray


def token_nll(logprobs: np.ndarray, answer_ids: Sequence[int]) -> np.ndarray:
    """−log p of each reference token: [T] float64 from a [T, vocab] log-prob block."""
    lp = np.asarray(logprobs)
    ids = np.asarray(list(answer_ids), dtype=np.int64)
    if len(ids) == 0:
        return np.zeros(0, dtype=np.float64)
    return -lp[np.arange(len(ids)), ids].astype(np.float64)


def position_stats(ref_logprobs: np.ndarray, logprobs: np.ndarray, answer_ids: Sequence[int]) -> PositionStats:
    """KL(ref || other), same top-1, Δp and both NLLs at every answer position (float64)."""
    ref = np.asarray(ref_logprobs, dtype=np.float64)
    other = np.asarray(logprobs, dtype=np.float64)
    if ref.shape != other.shape:
        raise ValueError(f"log-prob blocks differ in shape: {ref.shape} vs {other.shape}")
    if len(ref) == 0:
        empty = np.zeros(0, dtype=np.float64)
        return PositionStats(empty, np.zeros(0, dtype=bool), empty, empty, empty)
    p = np.exp(ref)
    # 0 * log 0 is 0; masking first keeps -inf - -inf from turning into NaN. A token the
    # reference gives mass and the other rules out (-inf) makes the KL infinite, as it is.
    with np.errstate(invalid="ignore"):
        kl = np.where(p > 0, p * (ref - other), 0.0).sum(axis=1)
    nll_ref, nll = token_nll(ref, answer_ids), token_nll(other, answer_ids)
    return PositionStats(
        kl=np.maximum(kl, 0.0),  # float rounding can give -1e-17 for identical rows
        same_top=ref.argmax(axis=1) == other.argmax(axis=1),
        delta_p=np.exp(-nll) - np.exp(-nll_ref),
        nll_ref=nll_ref,
        nll=nll,
    )


# ---- aggregation ------------------------------------------------------------------------


def percentiles(values: np.ndarray) -> dict[str, float | None]:
    """mean, median, p90, p99, max of a 1-D array (None when empty)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"mean": None, "median": None, "p90": None, "p99": None, "max": None}
    return {"mean": float(v.mean()), "median": float(np.median(v)), "p90": float(np.percentile(v, 90)),
            "p99": float(np.percentile(v, 99)), "max": float(v.max())}


def interval(samples: np.ndarray) -> list[float] | None:
    """Percentile 95% interval of bootstrap samples (NaN samples, from empty resamples, dropped)."""
    s = np.asarray(samples, dtype=np.float64)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return None
    low, high = np.percentile(s, [2.5, 97.5])
    return [float(low), float(high)]


def ratio_ci(weights: np.ndarray, numerator: np.ndarray, denominator: np.ndarray) -> list[float] | None:
    """95% interval of sum(num) / sum(den) with rows resampled by `weights` [R, n_rows]."""
    if weights.shape[0] == 0 or len(numerator) == 0:
        return None
    num = weights.astype(np.float64) @ np.asarray(numerator, dtype=np.float64)
    den = weights.astype(np.float64) @ np.asarray(denominator, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return interval(num / den)


def rate_ci(weights: np.ndarray, flags: Sequence[bool]) -> list[float] | None:
    """95% interval of the share of True rows."""
    x = np.asarray(list(flags), dtype=np.float64)
    return ratio_ci(weights, x, np.ones_like(x))


def position_bin(position: int) -> int:
    for i, (low, high) in enumerate(POSITION_BINS):
        if position >= low and (high is None or position <= high):
            return i
    raise ValueError(f"negative position {position}")


def _bin_edges(i: int, positions: np.ndarray) -> tuple[int, int]:
    low, high = POSITION_BINS[i]
    # The open bin's "to" is the last position seen in it, so every row is an int range.
    return low, int(high if high is not None else positions[positions >= low].max())


def kl_by_position(positions: np.ndarray, kl: np.ndarray) -> list[dict[str, Any]]:
    """KL per answer-position bin: [{"from", "to", "n", "mean", "p90"}] up to the last
    bin with tokens (answers are contiguous from position 0, so no bin before it is empty)."""
    positions, kl = np.asarray(positions), np.asarray(kl, dtype=np.float64)
    if positions.size == 0:
        return []
    bins = np.array([position_bin(int(p)) for p in positions])
    rows = []
    for i in range(int(bins.max()) + 1):
        mask = bins == i
        low, high = _bin_edges(i, positions) if mask.any() else (POSITION_BINS[i][0], POSITION_BINS[i][1] or 0)
        values = kl[mask]
        rows.append({"from": low, "to": high, "n": int(mask.sum()),
                     "mean": float(values.mean()) if values.size else None,
                     "p90": float(np.percentile(values, 90)) if values.size else None})
    return rows


def position_histogram(positions: Sequence[int]) -> list[dict[str, int]]:
    """Counts per position bin, [{"from", "to", "n"}], up to the last non-empty bin (zeros kept)."""
    p = np.asarray(list(positions), dtype=np.int64)
    if p.size == 0:
        return []
    bins = np.array([position_bin(int(x)) for x in p])
    rows = []
    for i in range(int(bins.max()) + 1):
        low, high = POSITION_BINS[i]
        n = int((bins == i).sum())
        rows.append({"from": low, "to": int(high if high is not None else p.max()), "n": n})
    return rows


@dataclass
class TeacherForcedStats:
    """One GGUF against the reference, row by row: per-token arrays (O(tokens), never
    × vocab) and per-row sums for the row bootstrap."""

    n_rows: int
    kl: list[np.ndarray] = field(default_factory=list)
    same_top: list[np.ndarray] = field(default_factory=list)
    delta_p: list[np.ndarray] = field(default_factory=list)
    nll_ref: list[np.ndarray] = field(default_factory=list)
    nll: list[np.ndarray] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)

    def add(self, row: int, stats: PositionStats) -> None:
        """Rows may come in any order; each once."""
        self.rows.append(row)
        self.kl.append(stats.kl)
        self.same_top.append(stats.same_top)
        self.delta_p.append(stats.delta_p)
        self.nll_ref.append(stats.nll_ref)
        self.nll.append(stats.nll)

    def row_mean_kl(self) -> list[float | None]:
        """Per row (in row order): mean KL over its answer tokens; None for an empty answer or a row not added."""
        out: list[float | None] = [None] * self.n_rows
        for row, kl in zip(self.rows, self.kl):
            out[row] = float(kl.mean()) if kl.size else None
        return out

    def row_max_kl(self) -> list[float | None]:
        out: list[float | None] = [None] * self.n_rows
        for row, kl in zip(self.rows, self.kl):
            out[row] = float(kl.max()) if kl.size else None
        return out

    def _row_sums(self, arrays: list[np.ndarray]) -> np.ndarray:
        out = np.zeros(self.n_rows, dtype=np.float64)
        for row, a in zip(self.rows, arrays):
            out[row] = float(np.sum(a, dtype=np.float64))
        return out

    def result(self, weights: np.ndarray) -> dict[str, Any]:
        """The report's "teacher_forced" block; `weights` from bootstrap_weights(n_rows, ...)."""
        cat = lambda arrays, dtype=np.float64: (np.concatenate(arrays).astype(dtype)  # noqa: E731
                                                 if arrays else np.zeros(0, dtype=dtype))
        kl, same, dp = cat(self.kl), cat(self.same_top, bool), cat(self.delta_p)
        nll_ref, nll = cat(self.nll_ref), cat(self.nll)
        positions = cat([np.arange(len(a)) for a in self.kl], np.int64)
        counts = np.zeros(self.n_rows, dtype=np.float64)
        for row, a in zip(self.rows, self.kl):
            counts[row] = len(a)
        n = int(kl.size)
        kl_block = percentiles(kl)
        kl_block["mean_ci"] = ratio_ci(weights, self._row_sums(self.kl), counts)
        hf_nll = float(nll_ref.mean()) if n else None
        gguf_nll = float(nll.mean()) if n else None
        with np.errstate(over="ignore"):
            ppl_hf = float(np.exp(hf_nll)) if n else None
            ppl_gguf = float(np.exp(gguf_nll)) if n else None
        # ppl_gguf / ppl_hf = exp(mean NLL difference): a ratio of sums over resampled rows.
        diff_ci = ratio_ci(weights, self._row_sums(self.nll) - self._row_sums(self.nll_ref), counts)
        if dp.size:
            p01, p05, p50, p95, p99 = np.percentile(dp, [1, 5, 50, 95, 99])
            delta = {"mean": float(dp.mean()), "rms": float(np.sqrt(np.mean(dp**2))), "p01": float(p01),
                     "p05": float(p05), "p50": float(p50), "p95": float(p95), "p99": float(p99)}
        else:
            delta = {k: None for k in ("mean", "rms", "p01", "p05", "p50", "p95", "p99")}
        return {
            "n_tokens": n,
            "kl": kl_block,
            "same_top": {"rate": float(same.mean()) if n else None,
                         "ci": ratio_ci(weights, self._row_sums(self.same_top), counts)},
            "delta_p": delta,
            "nll": {"hf": hf_nll, "gguf": gguf_nll},
            "perplexity": {"hf": ppl_hf, "gguf": ppl_gguf,
                           "ratio": float(np.exp(gguf_nll - hf_nll)) if n else None,
                           "ratio_ci": [float(np.exp(x)) for x in diff_ci] if diff_ci else None},
            "kl_by_position": kl_by_position(positions, kl),
        }


# ---- greedy -----------------------------------------------------------------------------


def step_tokens(gen: TokenGeneration) -> list[int | None]:
    """The token chosen at each step, the stop token included: ids, then (when stopped)
    the top-ranked id of the last step, which greedy decoding picked to end. None when a
    backend stopped without ranking that step (it cannot then be checked)."""
    steps: list[int | None] = list(gen.ids)
    if gen.stopped:
        last = gen.top_ids[len(gen.ids)] if len(gen.top_ids) > len(gen.ids) else []
        steps.append(int(last[0]) if last else None)
    return steps


@dataclass
class GreedyPair:
    identical: bool
    first_divergence: int | None
    """Step index of the first difference (the stop counting as a step); None when identical."""
    tolerated: bool
    """Identical, or at the first difference each model's token is in the other's top-k."""


def compare_greedy(hf: TokenGeneration, other: TokenGeneration) -> GreedyPair:
    """HF's greedy answer against another model's, on the same prompt ids.

    The stop is a step like any token: if HF ends after 3 tokens and the GGUF writes a 4th,
    they first differ at step 3, where HF's token is its stop token (top_ids[3][0]) and
    the GGUF's is the 4th; the step is tolerated when the GGUF's 4th token is in HF's
    top_ids[3] and HF's stop token is in the GGUF's top_ids[3] (a near-tie between
    "stop" and "go on"). A sequence that ends without a stop (the budget, or a backend
    that ran out of context) has no token at that step: not tolerated.
    """
    if hf.ids == other.ids and hf.stopped == other.stopped:
        return GreedyPair(True, None, True)
    a, b = step_tokens(hf), step_tokens(other)
    k = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    if k >= len(a) or k >= len(b) or a[k] is None or b[k] is None:
        return GreedyPair(False, k, False)
    a_top = hf.top_ids[k] if k < len(hf.top_ids) else []
    b_top = other.top_ids[k] if k < len(other.top_ids) else []
    return GreedyPair(False, k, b[k] in a_top and a[k] in b_top)


def normalize_answer(text: str) -> str:
    """What exact match compares: the text with surrounding whitespace stripped."""
    return text.strip()


def exact_match(text: str, reference: str) -> bool:
    return normalize_answer(text) == normalize_answer(reference)


# The report asks for the same (answer, reference) pair several times (each model's metrics,
# HF's side of every GGUF's comparison, the per-example view): score each pair once.
@functools.lru_cache(maxsize=65536)
def chrf(text: str, reference: str) -> float:
    """Sentence chrF (sacrebleu's defaults, 0-100) of an answer against the reference.
    Two empty answers score 100 (sacrebleu gives 0: nothing to match, but nothing differs)."""
    hyp, ref = normalize_answer(text), normalize_answer(reference)
    if not hyp and not ref:
        return 100.0
    return float(_chrf_metric().sentence_score(hyp, [ref]).score)


@functools.lru_cache(maxsize=1)
def _chrf_metric() -> Any:
    from sacrebleu.metrics import CHRF

    return CHRF()


def mcnemar(hf_right: Sequence[bool], other_right: Sequence[bool]) -> dict[str, Any]:
    """Flips between two models on the same rows and McNemar's exact test (the discordant
    pairs split 50/50 under "same accuracy"); p = 1.0 when no row flips."""
    from scipy.stats import binomtest

    a = np.asarray(list(hf_right), dtype=bool)
    b = np.asarray(list(other_right), dtype=bool)
    hf_only, other_only = int((a & ~b).sum()), int((~a & b).sum())
    discordant = hf_only + other_only
    p = float(binomtest(hf_only, discordant, 0.5).pvalue) if discordant else 1.0
    return {"hf_only": hf_only, "gguf_only": other_only, "mcnemar_p": p}


def divergence_char(prefix_text: str, text: str) -> int:
    """Where in `text` the answers part: the length of the common prefix of `text` and the
    decoded common token prefix. The decoded prefix is not always a prefix of the full
    decoding (a multi-byte character cut between tokens, a tokenizer's space handling), so
    the shared characters are counted rather than the prefix's length trusted."""
    return len(os.path.commonprefix([prefix_text, text]))


def greedy_comparison(
    hf: Sequence[TokenGeneration],
    other: Sequence[TokenGeneration],
    weights: np.ndarray,
    *,
    references: Sequence[str] | None = None,
    checkable: bool = False,
) -> tuple[dict[str, Any], list[GreedyPair]]:
    """The report's "greedy" block for one GGUF, and the per-row comparisons.

    references: the reference answers (chrF always; exact match and flips only when
    `checkable`, i.e. the set's answers can be checked exactly; else they are None)."""
    pairs = [compare_greedy(a, b) for a, b in zip(hf, other)]
    n = len(pairs)
    identical = [p.identical for p in pairs]
    tolerated = [p.tolerated for p in pairs]
    diverged = [p.first_divergence for p in pairs if p.first_divergence is not None]
    stops = [a.stopped == b.stopped for a, b in zip(hf, other)]
    hf_len = sum(len(a.ids) for a in hf)
    other_len = sum(len(b.ids) for b in other)
    first: dict[str, Any] = {"n_diverged": len(diverged), "median": None, "p10": None, "p90": None,
                             "histogram": position_histogram(diverged)}
    if diverged:
        d = np.asarray(diverged, dtype=np.float64)
        first.update(median=float(np.median(d)), p10=float(np.percentile(d, 10)), p90=float(np.percentile(d, 90)))
    mean = lambda flags: float(np.mean(flags)) if n else None  # noqa: E731
    block: dict[str, Any] = {
        "n": n,
        "identical_rate": mean(identical), "identical_ci": rate_ci(weights, identical),
        "tolerated_rate": mean(tolerated), "tolerated_ci": rate_ci(weights, tolerated),
        "first_divergence": first,
        "stop_agreement": mean(stops),
        "hf_stopped_rate": mean([a.stopped for a in hf]),
        "gguf_stopped_rate": mean([b.stopped for b in other]),
        # Total over total: rows with an empty HF answer do not divide by zero.
        "length_ratio": other_len / hf_len if hf_len else None,
    }
    if references is not None:
        block["vs_reference"] = vs_reference([a.text for a in hf], [b.text for b in other], references, checkable)
    return block, pairs


def vs_reference(hf_texts: Sequence[str], texts: Sequence[str], references: Sequence[str],
                 checkable: bool) -> dict[str, Any]:
    """Both models against the reference: exact-match rates and flips (checkable sets only), chrF means."""
    hf_chrf = [chrf(t, r) for t, r in zip(hf_texts, references)]
    chrfs = [chrf(t, r) for t, r in zip(texts, references)]
    out: dict[str, Any] = {
        "hf_exact": None, "gguf_exact": None,
        "hf_chrf": float(np.mean(hf_chrf)) if hf_chrf else None,
        "gguf_chrf": float(np.mean(chrfs)) if chrfs else None,
        "flips": None,
    }
    if checkable and references:
        hf_right = [exact_match(t, r) for t, r in zip(hf_texts, references)]
        right = [exact_match(t, r) for t, r in zip(texts, references)]
        out.update(hf_exact=float(np.mean(hf_right)), gguf_exact=float(np.mean(right)),
                   flips=mcnemar(hf_right, right))
    return out


__all__ = [
    "POSITION_BINS", "GreedyPair", "PositionStats", "TeacherForcedStats", "chrf", "compare_greedy",
    "divergence_char", "exact_match", "greedy_comparison", "interval", "kl_by_position", "mcnemar",
    "normalize_answer", "percentiles", "position_bin", "position_histogram", "position_stats", "rate_ci",
    "ratio_ci", "step_tokens", "token_nll", "vs_reference",
]
