"""Metric and parity statistics checked against hand computations and scipy/sklearn."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest, entropy
from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score

from tunegguf.evaluate.config import EvaluateConfig
from tunegguf.evaluate.metrics import (
    _macro_f1_resampled,
    _encode,
    bootstrap_ci,
    bootstrap_weights,
    expected_calibration_error,
    model_metrics,
    paired_accuracy_difference,
)
from tunegguf.evaluate.parity import (
    NextTokenDivergence,
    flipped_examples,
    prediction_parity,
    probability_parity,
    verdict,
)
from tunegguf.prompts.verbalizer import UNPARSED

LABELS = ["negative", "positive"]


def test_ece_matches_hand_computation():
    # Bin (0.8, 0.9]: confidence 0.9, accuracy 0.5 -> gap 0.4 on half the rows.
    # Bin (0.5, 0.6]: confidence 0.6, accuracy 1.0 -> gap 0.4 on the other half.
    result = expected_calibration_error(np.array([0.9, 0.9, 0.6, 0.6]), np.array([1, 0, 1, 1]), bins=10)
    assert result["ece"] == pytest.approx(0.4)
    assert [b["count"] for b in result["bins"]] == [2, 2]
    perfect = expected_calibration_error(np.array([1.0, 1.0]), np.array([1, 1]))
    assert perfect["ece"] == pytest.approx(0.0)
    assert perfect["bins"][0]["high"] == pytest.approx(1.0)  # 1.0 lands in the last bin


def test_bootstrap_is_reproducible_and_brackets_the_estimate():
    rng = np.random.default_rng(1)
    y_true = [LABELS[i] for i in rng.integers(0, 2, 200)]
    y_pred = [t if rng.random() < 0.8 else LABELS[1 - LABELS.index(t)] for t in y_true]
    a = bootstrap_ci(y_true, y_pred, LABELS, bootstrap_weights(200, 500, seed=3))
    b = bootstrap_ci(y_true, y_pred, LABELS, bootstrap_weights(200, 500, seed=3))
    c = bootstrap_ci(y_true, y_pred, LABELS, bootstrap_weights(200, 500, seed=4))
    assert a == b
    assert a != c
    accuracy = accuracy_score(y_true, y_pred)
    assert a["accuracy"][0] < accuracy < a["accuracy"][1]
    assert 0.02 < a["accuracy"][1] - a["accuracy"][0] < 0.2
    assert bootstrap_weights(200, 500, seed=3).sum(axis=1).tolist() == [200.0] * 500


def test_vectorized_macro_f1_equals_sklearn_including_unparsed():
    rng = np.random.default_rng(0)
    pool = LABELS + [UNPARSED]
    y_true = [LABELS[i] for i in rng.integers(0, 2, 60)]
    y_pred = [pool[i] for i in rng.integers(0, 3, 60)]
    counts = rng.multinomial(60, np.full(60, 1 / 60), size=5).astype(np.float32)
    got = _macro_f1_resampled(counts, _encode(y_true, LABELS), _encode(y_pred, LABELS), len(LABELS))
    for row, value in zip(counts, got):
        rows = np.repeat(np.arange(60), row.astype(int))
        expected = f1_score([y_true[i] for i in rows], [y_pred[i] for i in rows], labels=LABELS,
                            average="macro", zero_division=0)
        assert value == pytest.approx(expected, abs=1e-6)


def test_model_metrics_adds_ci_and_ece():
    y_true = ["negative", "positive", "positive", "negative"]
    y_pred = ["negative", "positive", "negative", "negative"]
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3]])
    m = model_metrics(y_true, y_pred, LABELS, probs=probs, weights=bootstrap_weights(4, 50, 0))
    assert m["accuracy"] == 0.75
    assert set(m["ci95"]) == {"accuracy", "macro_f1"}
    assert 0 <= m["ece"] <= 1
    assert m["per_class"]["positive"]["recall"] == 0.5


def test_prediction_parity_agreement_kappa_mcnemar():
    y_true = ["positive"] * 10 + ["negative"] * 10
    hf = list(y_true)
    gguf = list(y_true)
    for i in range(5):  # rows 0-4 and 10: HF right, GGUF wrong
        gguf[i] = "negative"
    gguf[10] = "positive"
    hf[11] = "positive"  # row 11: HF wrong, GGUF right
    stats = prediction_parity(y_true, hf, gguf, bootstrap_weights(20, 200, 0))
    assert stats["agreement"] == pytest.approx(1 - 7 / 20)
    assert stats["kappa"] == pytest.approx(cohen_kappa_score(hf, gguf))
    mc = stats["mcnemar"]
    assert (mc["hf_right_gguf_wrong"], mc["hf_wrong_gguf_right"]) == (6, 1)
    assert mc["p_value"] == pytest.approx(binomtest(6, 7, 0.5).pvalue)
    diff = stats["accuracy_difference"]
    assert diff["value"] == pytest.approx(accuracy_score(y_true, hf) - accuracy_score(y_true, gguf))
    assert diff["ci"][0] <= diff["value"] <= diff["ci"][1]


def test_identical_constant_predictions_have_kappa_one():
    stats = prediction_parity(["a", "b"], ["a", "a"], ["a", "a"], bootstrap_weights(2, 10, 0))
    assert stats["kappa"] == 1.0
    assert stats["mcnemar"]["p_value"] == 1.0


def test_paired_difference_is_zero_for_identical_models():
    y = ["a", "b", "a", "b"]
    diff = paired_accuracy_difference(y, ["a", "a", "a", "a"], ["a", "a", "a", "a"], bootstrap_weights(4, 100, 0))
    assert diff["value"] == 0.0 and diff["ci"] == [0.0, 0.0]


def test_kl_and_top1_match_scipy():
    rng = np.random.default_rng(5)
    logits_a, logits_b = rng.normal(size=(6, 50)), rng.normal(size=(6, 50))
    lp_a = logits_a - np.log(np.exp(logits_a).sum(1, keepdims=True))
    lp_b = logits_b - np.log(np.exp(logits_b).sum(1, keepdims=True))
    div = NextTokenDivergence()
    div.update(lp_a[:4], lp_b[:4])  # streamed in two batches
    div.update(lp_a[4:], lp_b[4:])
    expected = [entropy(np.exp(a), np.exp(b)) for a, b in zip(lp_a, lp_b)]
    assert div.kl == pytest.approx(expected, rel=1e-6)
    result = div.result()
    assert result["mean_kl"] == pytest.approx(np.mean(expected), rel=1e-6)
    assert result["top1_agreement"] == pytest.approx(np.mean(lp_a.argmax(1) == lp_b.argmax(1)))
    same = NextTokenDivergence()
    same.update(lp_a, lp_a)
    assert same.result()["mean_kl"] == pytest.approx(0.0, abs=1e-12)
    assert same.result()["top1_agreement"] == 1.0


def test_kl_ignores_zero_probability_tokens():
    ref = np.array([[np.log(0.5), np.log(0.5), -np.inf]])
    other = np.array([[np.log(0.25), np.log(0.75), -np.inf]])
    div = NextTokenDivergence()
    div.update(ref, other)
    assert np.isfinite(div.kl[0])
    assert div.kl[0] == pytest.approx(entropy([0.5, 0.5], [0.25, 0.75]))


def test_probability_parity_and_flips():
    ref = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8]])
    other = np.array([[0.8, 0.2], [0.6, 0.4], [0.2, 0.8]])
    pp = probability_parity(ref, other)
    assert pp["mean_abs_dp"] == pytest.approx((0.1 * 2 + 0.2 * 2) / 6)
    assert pp["max_abs_dp"] == pytest.approx(0.2)
    flips = flipped_examples(["a", "b", "c"], ["negative", "positive", "positive"],
                             ["negative", "positive", "positive"], ["negative", "negative", "positive"],
                             LABELS, ref, other)
    assert [f["id"] for f in flips] == ["b"]
    assert flips[0]["hf_probs"] == {"negative": 0.4, "positive": 0.6}
    assert flips[0]["gguf"] == "negative"


def _parity_block(agreement=1.0, ci_upper=0.0, kl=0.001, mismatched=0, unparsed=0.0):
    modes = {
        "labels": {"n": 100, "agreement": agreement, "accuracy_difference": {"value": 0.0, "ci": [-0.01, ci_upper]}},
        "generate": {"n": 100, "agreement": 1.0, "accuracy_difference": {"value": 0.0, "ci": [0.0, 0.0]},
                     "gguf_unparsed_rate": unparsed},
    }
    tokenizer = {"n": 100, "mismatched": mismatched, "first_mismatch": {"id": "r1"} if mismatched else None,
                 "label_token_ids_equal": True}
    return {"error": None, "tokenizer": tokenizer, "next_token": {"mean_kl": kl}, "modes": modes}


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({}, None),
        ({"agreement": 0.95}, "agreement 95.0% < min_agreement"),
        ({"ci_upper": 0.03}, "accuracy may drop by up to 3.0%"),
        ({"kl": 0.2}, "mean KL 0.2000 > max_mean_kl"),
        ({"mismatched": 3}, "3 of 100 prompts tokenize differently"),
        ({"unparsed": 1.0}, "100% of answers unparseable"),
    ],
)
def test_verdict_thresholds(changes, reason):
    v = verdict(_parity_block(**changes), EvaluateConfig())
    if reason is None:
        assert v["holds"] and v["reasons"] == [] and v["summary"] == "parity holds"
    else:
        assert not v["holds"]
        assert len(v["reasons"]) == 1 and reason in v["reasons"][0]
        assert v["summary"].startswith("parity fails")


def test_verdict_uses_config_thresholds():
    block = _parity_block(agreement=0.95, kl=0.08)
    assert verdict(block, EvaluateConfig(min_agreement=0.9, max_mean_kl=0.1))["holds"]
    assert not verdict({"error": "boom", "tokenizer": {}, "modes": {}}, EvaluateConfig())["holds"]
