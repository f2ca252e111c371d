"""Plain tables (columns + rows of strings) shared by report.md and report.html.

Both renderers call the same functions, so the two reports cannot disagree on a number.
`generic_table` turns any extra section (fine-tune history, export manifest, weight
parity...) into a table without knowing its shape in advance.
"""

from __future__ import annotations

import json
from typing import Any

from tunegguf.evaluate.recommend import LadderRow, Recommendation

Table = tuple[list[str], list[list[str]]]


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6):
            return f"{value:.2e}"
        return f"{value:.{digits}g}"
    if isinstance(value, (dict, list)):
        text = json.dumps(value, ensure_ascii=False, default=str)
        return text if len(text) <= 120 else text[:117] + "..."
    return str(value)


def pct(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f}%"


def pct_ci(value: float | None, ci: list[float] | None) -> str:
    if value is None:
        return "–"
    return pct(value) if not ci else f"{pct(value)} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def megabytes(size: int | None) -> str:
    return "–" if size is None else f"{size / 1e6:.1f} MB"


def generic_table(value: Any) -> Table:
    """A table for any JSON-like value: records, a mapping of records, a mapping, a list."""
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        columns = _union_keys(value)
        return columns, [[fmt(row.get(c)) for c in columns] for row in value]
    if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
        columns = _union_keys(list(value.values()))
        return ["name"] + columns, [[str(k)] + [fmt(v.get(c)) for c in columns] for k, v in value.items()]
    if isinstance(value, dict):
        return ["key", "value"], [[str(k), fmt(v)] for k, v in value.items()]
    if isinstance(value, list):
        return ["value"], [[fmt(v)] for v in value]
    return ["value"], [[fmt(value)]]


def _union_keys(records: list[dict]) -> list[str]:
    columns: list[str] = []
    for record in records:
        for key in record:
            if key not in columns:
                columns.append(str(key))
    return columns


# ---- the report's own tables ----------------------------------------------------------


def summary_table(report: dict[str, Any]) -> Table:
    columns = ["model", "mode", "size", "accuracy [95% CI]", "macro-F1 [95% CI]", "ECE", "unparsed",
               "stopped at EOS", "agreement", "kappa", "mean KL", "top-1", "flips", "ex/s"]
    rows = []
    for name, model in report["models"].items():
        parity = report["parity"].get(name, {})
        nxt = parity.get("next_token") or {}
        if model["status"] != "ok":
            rows.append([name, "–", megabytes(model["size_bytes"]), f"failed: {model['error']}"] + ["–"] * 10)
            continue
        for mode, m in model["metrics"].items():
            ci = m.get("ci95") or {}
            stats = parity.get("modes", {}).get(mode, {})
            rows.append([
                name, mode, megabytes(model["size_bytes"]),
                pct_ci(m["accuracy"], ci.get("accuracy")), pct_ci(m["macro_f1"], ci.get("macro_f1")),
                fmt(m.get("ece"), 3), pct(m.get("unparsed_rate")), pct(m.get("stopped_at_eos_rate")),
                pct(stats.get("agreement")), fmt(stats.get("kappa"), 3),
                fmt(nxt.get("mean_kl")) if mode == "labels" else "–",
                pct(nxt.get("top1_agreement")) if mode == "labels" else "–",
                str(len(stats["flips"])) if stats else "–",
                fmt((model["timing"].get(mode) or {}).get("examples_per_s"), 3),
            ])
    return columns, rows


def recall_table(report: dict[str, Any]) -> Table:
    labels = report["labels"]
    rows = []
    for name, model in report["models"].items():
        for mode, m in (model.get("metrics") or {}).items():
            rows.append([name, mode] + [pct(m["per_class"][label]["recall"]) for label in labels])
    return ["model", "mode"] + [f"recall {label}" for label in labels], rows


def confusion_table(metrics: dict[str, Any]) -> Table:
    matrix = metrics["confusion_matrix"]
    columns = ["true \\ predicted"] + matrix["labels"]
    counts = matrix["rows_true_cols_pred"]
    rows = [[label] + [str(v) for v in row] for label, row in zip(matrix["labels"], counts)]
    return columns, rows


def parity_table(report: dict[str, Any]) -> Table:
    columns = ["GGUF", "mode", "agreement", "kappa", "McNemar p (HF right/GGUF right)", "HF acc − GGUF acc [95% CI]",
               "mean |Δp|", "max |Δp|", "token-id mismatches"]
    rows = []
    for name, block in report["parity"].items():
        probs = block.get("label_probs") or {}
        tokens = block.get("tokenizer") or {}
        mismatch = f"{tokens['mismatched']}/{tokens['n']}" if tokens else "–"
        for mode, s in block.get("modes", {}).items():
            diff = s["accuracy_difference"]
            ci = diff.get("ci")
            diff_text = "–" if diff["value"] is None else (
                f"{100 * diff['value']:+.1f} pts" + (f" [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]" if ci else "")
            )
            mc = s["mcnemar"]
            rows.append([
                name, mode, pct(s["agreement"]), fmt(s["kappa"], 3),
                f"{fmt(mc['p_value'], 3)} ({mc['hf_right_gguf_wrong']}/{mc['hf_wrong_gguf_right']})", diff_text,
                fmt(probs.get("mean_abs_dp")) if mode == "labels" else "–",
                fmt(probs.get("max_abs_dp")) if mode == "labels" else "–", mismatch,
            ])
        if not block.get("modes"):
            rows.append([name, "–", "–", "–", "–", "–", "–", "–", mismatch])
    return columns, rows


def speed_table(report: dict[str, Any]) -> Table:
    rows = []
    for name, model in report["models"].items():
        load = (model.get("info") or {}).get("load_seconds")
        for mode, t in model["timing"].items():
            rows.append([name, mode, fmt(t.get("examples_per_s"), 3), fmt(t.get("latency_ms"), 4), fmt(load, 3)])
    return ["model", "mode", "examples/s", "latency ms/example", "load s"], rows


def flips_table(flips: list[dict[str, Any]], labels: list[str], limit: int) -> Table:
    columns = ["id", "label", "HF", "GGUF"]
    with_probs = any("hf_probs" in f for f in flips)
    with_text = any("hf_text" in f for f in flips)
    if with_probs:
        columns += [f"HF p({labels[-1]})", f"GGUF p({labels[-1]})", "KL"]
    if with_text:
        columns += ["HF text", "GGUF text"]
    rows = []
    for f in flips[:limit]:
        row = [str(f["id"]), f["label"], f["hf"], f["gguf"]]
        if with_probs:
            row += [fmt(f["hf_probs"][labels[-1]], 3), fmt(f["gguf_probs"][labels[-1]], 3), fmt(f.get("kl"))]
        if with_text:
            row += [repr(f.get("hf_text", "")), repr(f.get("gguf_text", ""))]
        rows.append(row)
    return columns, rows


def _tabular(value: Any) -> bool:
    return (isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)) or (
        isinstance(value, dict) and bool(value) and all(isinstance(v, dict) for v in value.values())
    )


def section_tables(value: Any) -> list[tuple[str | None, Table]]:
    """An extra section as one or more tables: a mapping that mixes plain settings with
    records (e.g. {"best_step": 60, "history": [...]}) gets a key/value table for the
    plain items and one table per group of records."""
    if isinstance(value, dict) and not _tabular(value) and any(_tabular(v) for v in value.values()):
        plain = {k: v for k, v in value.items() if not _tabular(v)}
        tables: list[tuple[str | None, Table]] = [(None, generic_table(plain))] if plain else []
        tables += [(str(k), generic_table(v)) for k, v in value.items() if _tabular(v)]
        return tables
    return [(None, generic_table(value))]


# ---- diagnostics ------------------------------------------------------------------------


def stages_table(report: dict[str, Any]) -> Table:
    """One row per adjacent pair of the export chain (adapter -> HF -> f16 -> quants).

    For answers the same columns hold greedy agreement, exact match vs the reference and KL
    over every answer token; a key a step could not measure shows as "–"."""
    stages = report.get("stages") or {}
    top = stages.get("largest_loss") or {}
    largest = top.get("child")
    # No step lost accuracy: the row is only the largest divergence, not a loss.
    marker = " ← largest loss" if ((top.get("accuracy_difference") or {}).get("value") or 0) > 0 else " ← largest KL"
    rows = []
    for s in stages.get("steps", []):
        diff = s.get("accuracy_difference") or {}
        ci = diff.get("ci")
        diff_text = "–" if diff.get("value") is None else (
            f"{100 * diff['value']:+.1f} pts" + (f" [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]" if ci else "")
        )
        step = s["step"] + (marker if s["child"] == largest else "")
        rows.append([step, f"{s['parent']} → {s['child']}", pct(s.get("agreement")), pct(s.get("accuracy_parent")),
                     pct(s.get("accuracy_child")), diff_text, fmt(s.get("mean_kl")), pct(s.get("top1_agreement"))])
    if is_answers(report):
        return ["step", "pair", "greedy agreement", "exact before", "exact after", "exact lost [95% CI]",
                "mean KL (answer tokens)", "same top"], rows
    return ["step", "pair", "agreement", "accuracy before", "accuracy after", "accuracy lost [95% CI]",
            "mean KL (next token)", "top-1"], rows


def template_checks_table(report: dict[str, Any]) -> Table:
    checks = report.get("template_checks") or {}
    rows = [[c["name"], {True: "pass", False: "FAIL", None: "not checked"}[c["passed"]], c["detail"]]
            for c in checks.get("checks", [])]
    if checks.get("error"):
        rows.append(["template_checks", "not checked", checks["error"]])
    return ["check", "result", "detail"], rows


def weight_parity_table(report: dict[str, Any]) -> Table:
    """Per GGUF: how much of the fine-tune (merged - base) survives in the quantized weights.
    With an importance matrix, also activation-weighted (the share the verdict was judged on)."""
    blocks = {name: block for name, block in (report.get("weight_parity") or {}).items() if block}
    with_weighted = any(block.get("weighted") for block in blocks.values())
    rows = []
    for name, block in blocks.items():
        not_checked = block.get("not_checked") or []
        weighted = block.get("weighted") or {}
        row = [name, fmt(block.get("kept"))] + ([fmt(weighted.get("kept"))] if with_weighted else [])
        row += [fmt(block.get("rel_error")), fmt(block.get("delta_snr"))]
        row += [fmt(weighted.get("delta_snr"))] if with_weighted else []
        rows.append(row + [str(block.get("verdict", "–")), str(len(not_checked)) if not_checked else "0"])
    columns = ["GGUF", "fine-tune delta kept"] + (["kept, activation-weighted"] if with_weighted else [])
    columns += ["relative error", "delta SNR"] + (["delta SNR, activation-weighted"] if with_weighted else [])
    return columns + ["verdict", "tensors not checked"], rows


def _judged_kept(block: dict[str, Any]) -> Any:
    """The share of the fine-tune a weight-parity verdict was judged on (activation-weighted when taken)."""
    weighted = block.get("weighted") or {}
    return weighted.get("kept") if weighted.get("kept") is not None else block.get("kept")


def imatrix_table(report: dict[str, Any]) -> Table:
    """Each quant made both plainly and with the importance matrix, side by side
    ("plain → imatrix"), from the recommendation's ladder rows and the weight parity."""
    from tunegguf.export.imatrix import SUFFIX, plain_quant

    ladder = {r["quant"]: r for r in (report.get("recommendation") or {}).get("rows", [])}
    weight = report.get("weight_parity") or {}

    def pair(a: str, b: str) -> str:
        return f"{a} → {b}"

    def diff(r: dict[str, Any]) -> str:
        return "–" if r.get("accuracy_difference") is None else f"{100 * r['accuracy_difference']:+.1f} pts"

    def verdict(r: dict[str, Any]) -> str:
        return "holds" if r.get("eligible") else "fails"

    rows = []
    for name, imat in ladder.items():
        plain = ladder.get(plain_quant(name)) if name.endswith(SUFFIX) else None
        if plain is None:
            continue
        kept = [_judged_kept(weight.get(n) or {}) for n in (plain["quant"], name)]
        ratio = (plain["mean_kl"] / imat["mean_kl"]) if plain.get("mean_kl") and imat.get("mean_kl") else None
        rows.append([
            plain["quant"], pair(pct(plain.get("agreement")), pct(imat.get("agreement"))),
            pair(diff(plain), diff(imat)), pair(fmt(plain.get("mean_kl")), fmt(imat.get("mean_kl"))),
            "–" if ratio is None else f"{ratio:.2f}×", pair(fmt(kept[0]), fmt(kept[1])),
            pair(verdict(plain), verdict(imat)),
        ])
    return ["quant", "agreement", "HF acc − GGUF acc", "mean KL", "KL plain / imatrix",
            "fine-tune delta kept (as judged)", "verdict"], rows


def ladder_table(rec: Recommendation) -> Table:
    """The recommendation's rows for report.md / the CLI, smallest file first."""
    columns = ["quant", "size", "agreement", "HF acc − GGUF acc [95% CI]", "mean KL", "weight parity", "verdict"]
    rows = []
    for r in rec.rows:
        diff = "–" if r.accuracy_difference is None else f"{100 * r.accuracy_difference:+.1f} pts"
        if r.accuracy_difference_ci:
            lo, hi = r.accuracy_difference_ci
            diff += f" [{100 * lo:+.1f}, {100 * hi:+.1f}]"
        erased = "–" if r.erased is None else ("fine-tune erased" if r.erased else "fine-tune kept")
        mark = "**recommended**" if r.quant == rec.choice else ("holds" if r.eligible else "fails")
        rows.append([r.quant, megabytes(r.size_bytes), pct(r.agreement), diff, fmt(r.mean_kl), erased, mark])
    return columns, rows


def recommendation_table(report: dict[str, Any]) -> Table:
    rec = dict(report.get("recommendation") or {})
    # Keys the ladder row does not know (an answers recommendation may carry more) are
    # left to report.json instead of failing the whole report.
    known = set(LadderRow.__dataclass_fields__)
    rec["rows"] = [{k: r.get(k) for k in known if k != "reasons"} | {"reasons": r.get("reasons") or []}
                   for r in rec.get("rows", [])]
    return ladder_table(Recommendation.from_dict(rec))


# ---- answers (free-text generation): report["task"] == "answers" --------------------------


def is_answers(report: dict[str, Any]) -> bool:
    """Reports written before the task seam have no "task": they are classification reports."""
    return report.get("task", "classification") == "answers"


def answers_thresholds(cfg: dict[str, Any]) -> dict[str, Any]:
    """The answers thresholds, nested (config["answers"]) or flat (config["answer_*"])."""
    nested = cfg.get("answers")
    if isinstance(nested, dict):
        return nested
    return {k[len("answer_"):]: v for k, v in cfg.items() if k.startswith("answer_")}


def reference_names(report: dict[str, Any]) -> list[str]:
    """The models the GGUFs are compared with and judged against the reference (HF, adapter)."""
    return [name for name, m in report["models"].items() if m.get("kind") != "gguf" and name not in report["answers"]]


def _ratio_ci(value: Any, ci: list[float] | None) -> str:
    # Four decimals, not significant digits: an f16 file's 1.0001 must not print as "1".
    if value is None:
        return "–"
    return f"{value:.4f}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")


def _kl_ci(kl: dict[str, Any]) -> str:
    ci = kl.get("mean_ci")
    return "–" if kl.get("mean") is None else fmt(kl["mean"]) + (f" [{fmt(ci[0])}, {fmt(ci[1])}]" if ci else "")


ANSWERS_COLUMNS = ["model", "size", "mean KL [95% CI]", "p99 KL", "max KL", "same top", "Δp RMS",
                   "PPL ratio [95% CI]", "greedy identical", "greedy tolerated", "median first divergence",
                   "stop agreement", "length ratio", "exact vs reference", "chrF", "flips HF/GGUF (McNemar p)",
                   "token-id mismatches"]


def answers_table(report: dict[str, Any]) -> Table:
    """One row per GGUF (HF's own rows first, with only the reference metrics: a GGUF is
    compared with it, so its KL and greedy columns would be zero by definition)."""
    rows = []
    for name in reference_names(report):
        model = report["models"][name]
        m = model.get("metrics") or {}
        if model.get("status") != "ok":
            rows.append([name, megabytes(model.get("size_bytes")), f"failed: {model.get('error')}"] + ["–"] * 14)
            continue
        rows.append([name, megabytes(model.get("size_bytes"))] + ["–"] * 5 + [f"PPL {fmt(m.get('perplexity'))}"]
                    + ["–"] * 3 + [f"stopped {pct(m.get('stopped_at_eos_rate'))}", "–",
                                   pct(m.get("exact_match")), fmt(m.get("chrf"), 3), "–", "–"])
    for name, block in report["answers"].items():
        model = report["models"].get(name) or {}
        size = megabytes(block.get("size_bytes", model.get("size_bytes")))
        if block.get("error") or model.get("status") == "failed":
            rows.append([name, size, f"failed: {block.get('error') or model.get('error')}"] + ["–"] * 14)
            continue
        tf, greedy = block.get("teacher_forced") or {}, block.get("greedy") or {}
        kl, top, dp, ppl = tf.get("kl") or {}, tf.get("same_top") or {}, tf.get("delta_p") or {}, tf.get("perplexity") or {}
        first = greedy.get("first_divergence") or {}
        ref = greedy.get("vs_reference") or {}
        flips = ref.get("flips") or {}
        tokens = block.get("tokenizer") or {}
        diverged = first.get("n_diverged")
        if diverged == 0:
            median = "none diverged"
        else:
            median = "–" if first.get("median") is None else f"token {fmt(first['median'], 3)}"
            median += f" ({diverged} rows)" if diverged is not None else ""
        rows.append([
            name, size, _kl_ci(kl), fmt(kl.get("p99")), fmt(kl.get("max")), pct_ci(top.get("rate"), top.get("ci")),
            fmt(dp.get("rms")), _ratio_ci(ppl.get("ratio"), ppl.get("ratio_ci")),
            pct_ci(greedy.get("identical_rate"), greedy.get("identical_ci")),
            pct_ci(greedy.get("tolerated_rate"), greedy.get("tolerated_ci")), median,
            pct(greedy.get("stop_agreement")),
            "–" if greedy.get("length_ratio") is None else f"{greedy['length_ratio']:.3f}",
            pct(ref.get("gguf_exact")), fmt(ref.get("gguf_chrf"), 3),
            "–" if not flips else f"{flips.get('hf_only', 0)}/{flips.get('gguf_only', 0)} "
                                  f"(p {fmt(flips.get('mcnemar_p'), 3)})",
            f"{tokens['mismatched']}/{tokens['n']}" if tokens.get("n") is not None else "–",
        ])
    return ANSWERS_COLUMNS, rows


def kl_by_position_table(report: dict[str, Any]) -> Table:
    """Mean (p90) KL per band of answer-token positions, one column per GGUF: where they diverge."""
    names = [n for n, b in report["answers"].items() if ((b.get("teacher_forced") or {}).get("kl_by_position"))]
    bands: dict[tuple[int, int], dict[str, dict[str, Any]]] = {}
    for name in names:
        for band in report["answers"][name]["teacher_forced"]["kl_by_position"]:
            bands.setdefault((band["from"], band["to"]), {})[name] = band
    rows = []
    for (lo, hi), by_name in sorted(bands.items()):
        n = next(iter(by_name.values())).get("n")
        cells = [f"{fmt(b.get('mean'))} ({fmt(b.get('p90'))})" if b else "–" for b in (by_name.get(x) for x in names)]
        rows.append([f"{lo}–{hi}", str(n)] + cells)
    return ["answer tokens", "tokens"] + [f"{n} mean (p90)" for n in names], rows


def first_divergence_table(report: dict[str, Any]) -> Table:
    """Rows whose greedy answer first departs from HF's in each band of token positions."""
    names = [n for n, b in report["answers"].items() if ((b.get("greedy") or {}).get("first_divergence") or {}).get("histogram")]
    bins: dict[tuple[int, int], dict[str, int]] = {}
    for name in names:
        for b in report["answers"][name]["greedy"]["first_divergence"]["histogram"]:
            bins.setdefault((b["from"], b["to"]), {})[name] = b["n"]
    rows = [[f"{lo}–{hi}"] + [str(counts.get(n, 0)) for n in names] for (lo, hi), counts in sorted(bins.items())]
    return ["first divergent token"] + names, rows


def answers_speed_table(report: dict[str, Any]) -> Table:
    """Timing per model and phase (teacher forcing, generation), whatever the timer recorded."""
    records = []
    for name, model in report["models"].items():
        load = (model.get("info") or {}).get("load_seconds")
        for phase, t in (model.get("timing") or {}).items():
            records.append({"model": name, "phase": phase, **(t or {}), "load s": load})
    if not records:
        return ["model", "phase"], []
    columns = _union_keys(records)
    columns.append(columns.pop(columns.index("load s")))
    return columns, [[fmt(r.get(c), 4) for c in columns] for r in records]
