"""The answers statistics on hand-computed cases (no backends, no models)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tunegguf.evaluate.answers.metrics import (
    TeacherForcedStats,
    chrf,
    compare_greedy,
    divergence_char,
    exact_match,
    greedy_comparison,
    kl_by_position,
    mcnemar,
    percentiles,
    position_bin,
    position_histogram,
    position_stats,
    ratio_ci,
    step_tokens,
)
from tunegguf.evaluate.backends.base import TokenGeneration
from tunegguf.evaluate.metrics import bootstrap_weights

LN2 = math.log(2)


def lp(*rows):
    return np.log(np.asarray(rows, dtype=np.float64))


def test_kl_same_top_delta_p_nll_on_a_three_token_vocab():
    ref = lp([0.5, 0.25, 0.25], [0.2, 0.3, 0.5])
    other = lp([0.25, 0.5, 0.25], [0.2, 0.3, 0.5])
    stats = position_stats(ref, other, [0, 2])
    # KL = 0.5 ln(0.5/0.25) + 0.25 ln(0.25/0.5) + 0.25 ln 1 = 0.25 ln 2; the second row is identical.
    assert stats.kl == pytest.approx([0.25 * LN2, 0.0], abs=1e-12)
    assert stats.same_top.tolist() == [False, True]
    assert stats.delta_p == pytest.approx([0.25 - 0.5, 0.0], abs=1e-12)
    assert stats.nll_ref == pytest.approx([LN2, -math.log(0.5)])
    assert stats.nll == pytest.approx([math.log(4), -math.log(0.5)])


def test_kl_ignores_tokens_the_reference_rules_out_and_is_infinite_for_the_reverse():
    ref = np.array([[0.0, -np.inf, -np.inf]])
    assert position_stats(ref, lp([0.5, 0.25, 0.25]), [0]).kl[0] == pytest.approx(LN2)
    assert math.isinf(position_stats(lp([0.5, 0.25, 0.25]), ref, [0]).kl[0])


def test_kl_is_computed_in_float64_from_float32_blocks():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 50))
    ref = (logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))).astype(np.float32)
    stats = position_stats(ref, ref.copy(), [1, 2, 3, 4])
    assert stats.kl.dtype == np.float64 and np.all(stats.kl == 0.0)


def test_percentiles():
    out = percentiles(np.arange(101, dtype=float))
    assert out == {"mean": 50.0, "median": 50.0, "p90": 90.0, "p99": 99.0, "max": 100.0}
    assert percentiles(np.zeros(0))["mean"] is None


def test_position_bins_and_kl_by_position():
    assert [position_bin(p) for p in (0, 1, 2, 3, 4, 7, 8, 15, 16, 31, 32, 63, 64, 500)] == \
        [0, 1, 2, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8]
    # Two rows: 3 tokens and 6 tokens.
    positions = np.array([0, 1, 2, 0, 1, 2, 3, 4, 5])
    kl = np.array([1.0, 2.0, 3.0, 3.0, 4.0, 5.0, 6.0, 7.0, 9.0])
    table = kl_by_position(positions, kl)
    assert [(r["from"], r["to"], r["n"]) for r in table] == [(0, 0, 2), (1, 1, 2), (2, 2, 2), (3, 3, 1), (4, 7, 2)]
    assert [r["mean"] for r in table] == [2.0, 3.0, 4.0, 6.0, 8.0]
    # The open bin's "to" is the last position seen in it.
    assert kl_by_position(np.array([0, 70]), np.array([0.0, 1.0]))[-1] == {"from": 64, "to": 70, "n": 1,
                                                                        "mean": 1.0, "p90": 1.0}


def test_position_histogram_keeps_empty_bins_before_the_last():
    assert position_histogram([0, 0, 9]) == [
        {"from": 0, "to": 0, "n": 2}, {"from": 1, "to": 1, "n": 0}, {"from": 2, "to": 2, "n": 0},
        {"from": 3, "to": 3, "n": 0}, {"from": 4, "to": 7, "n": 0}, {"from": 8, "to": 15, "n": 1}]
    assert position_histogram([]) == []


def test_teacher_forced_means_weight_tokens_and_intervals_resample_rows():
    ref = lp([0.5, 0.25, 0.25])
    far = lp([0.25, 0.5, 0.25])
    tracker = TeacherForcedStats(2)
    # Row 0: one token, KL 0.25 ln 2; row 1: three identical tokens, KL 0.
    tracker.add(1, position_stats(np.repeat(ref, 3, axis=0), np.repeat(ref, 3, axis=0), [0, 0, 0]))
    tracker.add(0, position_stats(ref, far, [0]))
    weights = bootstrap_weights(2, 200, 0)
    out = tracker.result(weights)
    assert out["n_tokens"] == 4
    assert out["kl"]["mean"] == pytest.approx(0.25 * LN2 / 4)
    assert out["kl"]["max"] == pytest.approx(0.25 * LN2)
    assert out["same_top"]["rate"] == pytest.approx(0.75)
    # Resampling rows: a resample of row 1 twice has KL 0, of row 0 twice 0.25 ln 2.
    lo, hi = out["kl"]["mean_ci"]
    assert lo == pytest.approx(0.0) and hi == pytest.approx(0.25 * LN2)
    # NLL per token: HF (4 ln 2)/4; GGUF (ln 4 + 3 ln 2)/4, ratio exp(ln 2 / 4).
    assert out["nll"]["hf"] == pytest.approx(LN2)
    assert out["perplexity"]["ratio"] == pytest.approx(math.exp(LN2 / 4))
    assert out["perplexity"]["ratio_ci"][0] == pytest.approx(1.0)
    assert out["perplexity"]["ratio_ci"][1] == pytest.approx(2.0)
    assert out["delta_p"]["mean"] == pytest.approx(-0.25 / 4)
    assert out["delta_p"]["rms"] == pytest.approx(math.sqrt(0.0625 / 4))
    assert tracker.row_mean_kl() == pytest.approx([0.25 * LN2, 0.0])
    assert [r["n"] for r in out["kl_by_position"]] == [2, 1, 1]


def test_ratio_ci_is_none_without_resamples():
    assert ratio_ci(np.zeros((0, 3)), np.ones(3), np.ones(3)) is None


def gen(ids, stopped, tops, text=""):
    return TokenGeneration(ids=list(ids), stopped=stopped, top_ids=[list(t) for t in tops], text=text)


def test_identical_answers():
    a = gen([5, 6], True, [[5, 1], [6, 1], [9, 1]])
    pair = compare_greedy(a, gen([5, 6], True, [[5, 1], [6, 1], [9, 1]]))
    assert (pair.identical, pair.first_divergence, pair.tolerated) == (True, None, True)


def test_first_mismatch_within_each_others_top_k_is_tolerated():
    hf = gen([5, 6, 7], False, [[5, 2], [6, 8], [7, 1]])
    near = gen([5, 8, 3], False, [[5, 2], [8, 6], [3, 1]])
    pair = compare_greedy(hf, near)
    assert (pair.identical, pair.first_divergence, pair.tolerated) == (False, 1, True)
    # One-sided: the GGUF's token is in HF's top-k, but HF's is not in the GGUF's.
    one_sided = gen([5, 8, 3], False, [[5, 2], [8, 4], [3, 1]])
    assert compare_greedy(hf, one_sided).tolerated is False


def test_the_stop_is_a_step_whose_token_is_the_top_ranked_id():
    # HF stops after 2 tokens (its stop id 0 ranks first at step 2); the GGUF goes on with 9.
    hf = gen([5, 6], True, [[5], [6], [0, 9]])
    assert step_tokens(hf) == [5, 6, 0]
    goes_on = gen([5, 6, 9], False, [[5], [6], [9, 0]])
    pair = compare_greedy(hf, goes_on)
    assert (pair.first_divergence, pair.tolerated) == (2, True)
    never = gen([5, 6, 9], False, [[5], [6], [9, 3]])
    assert compare_greedy(hf, never).tolerated is False
    # A sequence cut by the budget has no token at the step where the other stops.
    cut = gen([5, 6], False, [[5], [6]])
    pair = compare_greedy(hf, cut)
    assert (pair.identical, pair.first_divergence, pair.tolerated) == (False, 2, False)


def test_greedy_comparison_block():
    hf = [gen([1, 2], True, [[1], [2], [0]], "a b"), gen([1], True, [[1], [0]], "a"),
          gen([3, 3], False, [[3], [3]], "c c"), gen([4], True, [[4], [0]], "d")]
    gg = [gen([1, 2], True, [[1], [2], [0]], "a b"), gen([1, 5], False, [[1], [5, 0]], "a e"),
          gen([3, 3], False, [[3], [3]], "c c"), gen([7], True, [[7, 4], [0]], "g")]
    block, pairs = greedy_comparison(hf, gg, bootstrap_weights(4, 100, 0), references=["a b", "a", "c c", "g"],
                                     checkable=True)
    assert block["identical_rate"] == 0.5
    assert block["tolerated_rate"] == 0.5  # row 2's stop-vs-5 and row 4's 4-vs-7 are not mutual top-k
    assert block["first_divergence"]["n_diverged"] == 2 and block["first_divergence"]["median"] == 0.5
    assert block["stop_agreement"] == 0.75
    assert block["hf_stopped_rate"] == 0.75 and block["gguf_stopped_rate"] == 0.5
    assert block["length_ratio"] == pytest.approx(7 / 6)  # GGUF tokens over HF tokens
    ref = block["vs_reference"]
    assert ref["hf_exact"] == 0.75 and ref["gguf_exact"] == 0.75
    assert ref["flips"] == {"hf_only": 1, "gguf_only": 1, "mcnemar_p": 1.0}
    assert ref["hf_chrf"] == pytest.approx((100 + 100 + 100 + chrf("d", "g")) / 4)
    assert len(pairs) == 4
    unchecked, _ = greedy_comparison(hf, gg, bootstrap_weights(4, 0, 0), references=["x"] * 4)
    assert unchecked["vs_reference"]["hf_exact"] is None and unchecked["vs_reference"]["flips"] is None
    assert unchecked["identical_ci"] is None


def test_exact_match_strips_whitespace_only():
    assert exact_match("  42\n", "42")
    assert not exact_match("42.", "42")


def test_chrf_is_sacrebleus_sentence_score():
    from sacrebleu.metrics import CHRF

    assert chrf("the cat sat", "the cat sat") == 100.0
    assert chrf("the cat", "the cat sat") == pytest.approx(CHRF().sentence_score("the cat", ["the cat sat"]).score)
    assert chrf("", "") == 100.0 and chrf("", "x") == 0.0


def test_mcnemar_exact_binomial():
    from scipy.stats import binomtest

    out = mcnemar([True] * 6 + [False] * 4, [False] * 5 + [True] + [False] * 4)
    assert out["hf_only"] == 5 and out["gguf_only"] == 0
    assert out["mcnemar_p"] == pytest.approx(binomtest(5, 5, 0.5).pvalue) == pytest.approx(0.0625)
    assert mcnemar([True, False], [True, False])["mcnemar_p"] == 1.0


def test_divergence_char_counts_shared_characters():
    assert divergence_char("Hello wor", "Hello world") == 9
    # A prefix decoded with a broken multi-byte character only counts what matches.
    assert divergence_char("caf\ufffd", "café au lait") == 3
