"""A report.json for task "answers" shaped exactly as the issue-17 contract says, for the
report renderers' tests: an HF model, "F16" (near perfect) and "Q2_K" (visibly diverging).

Per-example numbers are written out; the greedy divergence offsets are derived from the
texts so they cannot disagree with them.
"""

from __future__ import annotations

# (id, prompt, reference, HF answer, Q2_K answer, Q2_K stopped, Q2_K mean KL, Q2_K max KL)
ROWS = [
    ("rev-0", "Reverse the word: garden", "nedrag", "nedrag", "nedrag", True, 0.012, 0.09),
    ("add-1", "What is 17 + 25?", "42", "42", "42", True, 0.008, 0.05),
    ("sort-2", "Sort: 9, 3, 7, 1", "1, 3, 7, 9", "1, 3, 7, 9", "1, 3, 9, 7", True, 0.21, 2.4),
    ("conv-3", "Convert 3 km to metres.", "3000 m", "3000 m", "300 m", True, 0.35, 3.1),
    ("extract-4", "Extract the city: Ana flew to Lisbon on May 2.", "Lisbon", "Lisbon", "Lisbon", True, 0.02, 0.2),
    ("html-5", "Write the closing tag of a script element.", "</script>", "</script>",
     "</script><script>alert(1)</script> and then the model keeps going", False, 0.9, 7.5),
    ("uni-6", "Translate 'coffee' into French, with the accent.", "café", "café ☕", "cafe ☕ naïve", True, 0.42, 4.2),
    ("mul-7", "What is 6 * 7?", "42", "42", "42", True, 0.005, 0.03),
    ("rev-8", "Reverse the word: lamp", "pmal", "pmal", "plam plam plam plam plam plam", False, 0.66, 5.9),
    ("sub-9", "What is 100 - 58?", "42", "42", "42", True, 0.01, 0.07),
    ("chat-10", "user: hi\nassistant: Hello!\nuser: Say 'yes' & nothing else.", "yes", "yes", "yes", True, 0.004, 0.02),
    ("sort-11", "Sort: b, a, c", "a, b, c", "a, b, c", "a, b, c", True, 0.015, 0.11),
]


def _common_prefix(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _answer(text: str, hf: str, reference: str, stopped: bool, mean_kl: float | None, max_kl: float | None,
            is_hf: bool) -> dict:
    same = text == hf
    return {
        "text": text, "stopped": stopped, "n_tokens": max(1, len(text) // 3),
        "exact": text.strip() == reference, "chrf": 100.0 if text == reference else 41.5,
        "first_divergence": None if (is_hf or same) else max(0, _common_prefix(text, hf) // 3),
        "divergence_char": None if (is_hf or same) else _common_prefix(text, hf),
        "mean_kl": None if is_hf else mean_kl, "max_kl": None if is_hf else max_kl,
    }


def examples(rows=ROWS) -> list[dict]:
    out = []
    for rid, prompt, reference, hf, q2, q2_stopped, kl, max_kl in rows:
        out.append({"id": rid, "prompt": prompt, "reference": reference, "answers": {
            "hf": _answer(hf, hf, reference, True, None, None, True),
            "F16": _answer(hf, hf, reference, True, kl / 1000, max_kl / 1000, False),
            "Q2_K": _answer(q2, hf, reference, q2_stopped, kl, max_kl, False),
        }})
    return out


def _teacher_forced(mean: float, p99: float, same_top: float, ratio: float) -> dict:
    return {
        "kl": {"mean": mean, "median": mean / 3, "p90": mean * 2.5, "p99": p99, "max": p99 * 2.2,
               "mean_ci": [mean * 0.7, mean * 1.4]},
        "same_top": {"rate": same_top, "ci": [same_top - 0.03 * (1 - same_top) - 0.001, min(1.0, same_top + 0.01)]},
        "delta_p": {"mean": -mean / 10, "rms": mean ** 0.5 / 4, "p01": -0.2, "p05": -0.05, "p50": 0.0,
                    "p95": 0.03, "p99": 0.1},
        "nll": {"hf": 0.412, "gguf": 0.412 * ratio},
        "perplexity": {"hf": 1.51, "gguf": 1.51 * ratio, "ratio": ratio, "ratio_ci": [ratio * 0.98, ratio * 1.03]},
        "kl_by_position": [
            {"from": 0, "to": 3, "n": 36, "mean": mean * 0.5, "p90": mean * 1.2},
            {"from": 4, "to": 15, "n": 60, "mean": mean * 1.3, "p90": mean * 3.0},
            {"from": 16, "to": 63, "n": 22, "mean": mean * 2.0, "p90": mean * 4.4},
        ],
    }


def answers_report(rows=ROWS, **config_overrides) -> dict:
    exs = examples(rows)
    n = len(exs)
    config = {"plots": False, "bootstrap": 200, "seed": 0, "max_flips_shown": 20,
              "answers": {"max_new_tokens": 64, "max_mean_kl": 0.05, "max_p99_kl": 1.0, "min_same_top": 0.95,
                          "min_greedy_match": 0.9, "min_stop_agreement": 0.95}}
    config.update(config_overrides)
    q2_diverged = sum(e["answers"]["Q2_K"]["divergence_char"] is not None for e in exs)
    q2_stop = sum(e["answers"]["Q2_K"]["stopped"] for e in exs) / n
    tokenizer = {"n": n, "mismatched": 0, "examples": []}
    return {
        "task": "answers", "tunegguf_version": "0.test", "created": "2026-12-01T19:40:00Z",
        "config": config, "context": {"model": "tiny-demo", "split": "test"},
        "warnings": ["Q2_K: 2 rows ran to the token budget (64) <without> an end-of-turn token"],
        "extra_sections": {"export <manifest>": {"quant": "Q2_K", "note": "<i>not markup</i>"}},
        "template_checks": {"passed": True, "gguf": "model-F16.gguf", "diffs": {},
                            "checks": [{"name": "chat template (3 turns)", "passed": True, "detail": "identical"}]},
        "weight_parity": {}, "too_long": None,
        "stages": {"mode": "answers", "summary": "The largest loss is at quantization (Q2_K)",
                   "largest_loss": {"child": "Q2_K", "accuracy_difference": {"value": 0.167, "ci": [0.0, 0.33]}},
                   "steps": [
                       {"parent": "hf", "child": "F16", "step": "conversion", "mode": "answers", "agreement": 1.0,
                        "accuracy_parent": 0.75, "accuracy_child": 0.75, "accuracy_difference": {"value": 0.0, "ci": [0.0, 0.0]},
                        "mean_kl": 1.1e-5, "top1_agreement": 1.0},
                       {"parent": "F16", "child": "Q2_K", "step": "quantization (Q2_K)", "mode": "answers",
                        "agreement": 0.583, "accuracy_parent": 0.75, "accuracy_child": 0.583,
                        "accuracy_difference": {"value": 0.167, "ci": [0.0, 0.33]}, "mean_kl": 0.221, "top1_agreement": 0.81},
                   ]},
        "recommendation": {"choice": "F16", "reason": "F16 is the smallest file whose verdict holds", "mode": "answers",
                           "rows": [
                               {"quant": "Q2_K", "size_bytes": 1_120_000_000, "agreement": 0.583, "accuracy_difference": 0.167,
                                "accuracy_difference_ci": [0.0, 0.33], "mean_kl": 0.221, "holds": False, "erased": None,
                                "eligible": False, "reasons": ["mean KL 0.221 > 0.05"]},
                               {"quant": "F16", "size_bytes": 6_400_000_000, "agreement": 1.0, "accuracy_difference": 0.0,
                                "accuracy_difference_ci": [0.0, 0.0], "mean_kl": 1.1e-5, "holds": True, "erased": None,
                                "eligible": True, "reasons": []}]},
        "n_examples": n, "n_answer_tokens": 118, "examples": exs,
        "reference_store": {"kind": "memmap", "exact": True, "bytes": 118 * 49152 * 4},
        "models": {
            "hf": {"kind": "hf", "file": "/runs/demo/merged", "size_bytes": None, "status": "ok", "error": None,
                   "info": {"load_seconds": 2.1},
                   "timing": {"teacher_forced": {"tokens_per_s": 410.0, "seconds": 0.29},
                              "generate": {"tokens_per_s": 35.2, "seconds": 3.4}},
                   "metrics": {"nll_per_token": 0.412, "perplexity": 1.51, "exact_match": 0.75, "chrf": 83.1,
                               "stopped_at_eos_rate": 1.0, "mean_answer_tokens": 3.3}},
            "F16": {"kind": "gguf", "file": "/runs/demo/model-F16.gguf", "size_bytes": 6_400_000_000, "status": "ok",
                    "error": None, "info": {"load_seconds": 0.8},
                    "timing": {"teacher_forced": {"tokens_per_s": 380.0, "seconds": 0.31},
                               "generate": {"tokens_per_s": 52.0, "seconds": 2.2}},
                    "metrics": {"nll_per_token": 0.412, "perplexity": 1.51, "exact_match": 0.75, "chrf": 83.1,
                                "stopped_at_eos_rate": 1.0, "mean_answer_tokens": 3.3}},
            "Q2_K": {"kind": "gguf", "file": "/runs/demo/model-Q2_K.gguf", "size_bytes": 1_120_000_000, "status": "ok",
                     "error": None, "info": {"load_seconds": 0.3},
                     "timing": {"teacher_forced": {"tokens_per_s": 910.0, "seconds": 0.13},
                                "generate": {"tokens_per_s": 120.0, "seconds": 1.9}},
                     "metrics": {"nll_per_token": 0.58, "perplexity": 1.79, "exact_match": 0.583, "chrf": 70.2,
                                 "stopped_at_eos_rate": q2_stop, "mean_answer_tokens": 6.1}},
        },
        "answers": {
            "F16": {"file": "/runs/demo/model-F16.gguf", "size_bytes": 6_400_000_000, "error": None, "tokenizer": tokenizer,
                    "teacher_forced": _teacher_forced(1.1e-5, 8.0e-5, 1.0, 1.0001),
                    "greedy": {"identical_rate": 1.0, "identical_ci": [1.0, 1.0], "tolerated_rate": 1.0,
                               "tolerated_ci": [1.0, 1.0],
                               "first_divergence": {"n_diverged": 0, "median": None, "p10": None, "p90": None, "histogram": []},
                               "stop_agreement": 1.0, "hf_stopped_rate": 1.0, "gguf_stopped_rate": 1.0, "length_ratio": 1.0,
                               "vs_reference": {"hf_exact": 0.75, "gguf_exact": 0.75, "hf_chrf": 83.1, "gguf_chrf": 83.1,
                                                "flips": {"hf_only": 0, "gguf_only": 0, "mcnemar_p": 1.0}}}},
            "Q2_K": {"file": "/runs/demo/model-Q2_K.gguf", "size_bytes": 1_120_000_000, "error": None, "tokenizer": tokenizer,
                     "teacher_forced": _teacher_forced(0.221, 3.9, 0.81, 1.185),
                     "greedy": {"identical_rate": (n - q2_diverged) / n, "identical_ci": [0.32, 0.85],
                                "tolerated_rate": 0.667, "tolerated_ci": [0.39, 0.89],
                                "first_divergence": {"n_diverged": q2_diverged, "median": 1.0, "p10": 0.0, "p90": 4.0,
                                                     "histogram": [{"from": 0, "to": 1, "n": 3}, {"from": 2, "to": 7, "n": 2}]},
                                "stop_agreement": q2_stop, "hf_stopped_rate": 1.0, "gguf_stopped_rate": q2_stop,
                                "length_ratio": 1.83,
                                "vs_reference": {"hf_exact": 0.75, "gguf_exact": 0.583, "hf_chrf": 83.1, "gguf_chrf": 70.2,
                                                 "flips": {"hf_only": 2, "gguf_only": 0, "mcnemar_p": 0.5}}}},
        },
        "verdicts": {
            "F16": {"holds": True, "reasons": [], "summary": "F16: parity holds (mean KL 1.10e-05, greedy match 100.0%)"},
            "Q2_K": {"holds": False, "reasons": ["mean KL 0.221 > 0.05", "p99 KL 3.9 > 1.0", "same top 81.0% < 95.0%",
                                                 "greedy match 66.7% < 90.0%", "stop agreement 83.3% < 95.0%"],
                     "summary": "Q2_K: parity fails"},
        },
    }


def many_rows(n: int) -> list[tuple]:
    """`n` rows cycling through ROWS with unique ids (for the row cap)."""
    return [(f"{r[0]}-{i}",) + r[1:] for i, r in ((i, ROWS[i % len(ROWS)]) for i in range(n))]


