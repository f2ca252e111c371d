"""Plain tables (columns + rows of strings) shared by report.md and report.html.

Both renderers call the same functions, so the two reports cannot disagree on a number.
`generic_table` turns any extra section (fine-tune history, export manifest, weight
parity...) into a table without knowing its shape in advance.
"""

from __future__ import annotations

import json
from typing import Any

from tunegguf.evaluate.recommend import Recommendation

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
    """One row per adjacent pair of the export chain (adapter -> HF -> f16 -> quants)."""
    stages = report.get("stages") or {}
    top = stages.get("largest_loss") or {}
    largest = top.get("child")
    # No step lost accuracy: the row is only the largest divergence, not a loss.
    marker = " ← largest loss" if (top.get("accuracy_difference") or {}).get("value", 0) > 0 else " ← largest KL"
    rows = []
    for s in stages.get("steps", []):
        diff = s["accuracy_difference"]
        ci = diff.get("ci")
        diff_text = "–" if diff["value"] is None else (
            f"{100 * diff['value']:+.1f} pts" + (f" [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]" if ci else "")
        )
        step = s["step"] + (marker if s["child"] == largest else "")
        rows.append([step, f"{s['parent']} → {s['child']}", pct(s["agreement"]), pct(s["accuracy_parent"]),
                     pct(s["accuracy_child"]), diff_text, fmt(s["mean_kl"]), pct(s["top1_agreement"])])
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
    return ladder_table(Recommendation.from_dict(report.get("recommendation") or {}))
