"""report.html: one self-contained file (inline CSS, inline PNGs) from a jinja2 template."""

from __future__ import annotations

from importlib import resources
from typing import Any

from tunegguf.evaluate.report.markdown import (
    answers_head,
    answers_thresholds_line,
    answers_verdict_line,
    template_checks_head,
    verdict_line,
)
from tunegguf.evaluate.report.plots import all_plots, answers_plots
from tunegguf.evaluate.report.tables import (
    confusion_table,
    flips_table,
    imatrix_table,
    parity_table,
    pct,
    recall_table,
    recommendation_table,
    stages_table,
    template_checks_table,
    weight_parity_table,
    section_tables,
    speed_table,
    summary_table,
    answers_speed_table,
    answers_table,
    first_divergence_table,
    fmt,
    is_answers,
    kl_by_position_table,
    reference_names,
)

EXAMPLES_SHOWN = 300
"""Rows of the side-by-side view: a few hundred stay responsive in a browser; report.json has all."""


def _template_text(name: str) -> str:
    return resources.files("tunegguf.evaluate.report").joinpath(f"templates/{name}").read_text("utf-8")


def _template(name: str) -> Any:
    import jinja2

    # Autoescape: ids, prompts, generated text and extra sections are data, never markup.
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env.from_string(_template_text(name))


def render_html(report: dict[str, Any], predictions: list[dict[str, Any]]) -> str:
    import json

    if is_answers(report):
        return render_answers_html(report, predictions)
    template = _template("report.html.j2")
    limit = report["config"]["max_flips_shown"]
    confusions = [
        (f"{name} ({mode})", confusion_table(m))
        for name, model in report["models"].items()
        for mode, m in (model.get("metrics") or {}).items()
    ]
    flips = [
        (name, mode, stats, flips_table(stats["flips"], report["labels"], limit))
        for name, block in report["parity"].items()
        for mode, stats in block.get("modes", {}).items()
    ]
    verdicts = [
        (name, v["holds"], verdict_line(name, report).lstrip("- ").replace("**", ""))
        for name, v in report["verdicts"].items()
    ]
    return template.render(
        report=report,
        cfg=report["config"],
        pct=pct,
        verdicts=verdicts,
        summary=summary_table(report),
        parity=parity_table(report),
        recall=recall_table(report),
        confusions=confusions,
        flips=flips,
        limit=limit,
        speed=speed_table(report),
        plots=all_plots(report, predictions) if report["config"].get("plots", True) else [],
        config_json=json.dumps({"evaluate": report["config"], "context": report["context"]}, indent=2, default=str),
        **_diagnostics(report),
    )


# ---- answers ------------------------------------------------------------------------------


def _diagnostics(report: dict[str, Any]) -> dict[str, Any]:
    """The sections both tasks' templates share, as plain values (StrictUndefined would turn a key missing
    from a section that could not run into a crash)."""
    stages = report.get("stages") or {}
    recommendation = report.get("recommendation") or {}
    return dict(
        stage_summary=stages.get("summary") or "",
        stage_mode=stages.get("mode") or report.get("primary_mode"),
        stage_rows=stages_table(report),
        checks=template_checks_head(report),
        check_rows=template_checks_table(report),
        recommendation={"choice": recommendation.get("choice"), "reason": recommendation.get("reason") or ""},
        recommendation_rows=recommendation_table(report),
        imatrix_rows=imatrix_table(report),
        weight_rows=weight_parity_table(report),
        extra=[(title, section_tables(value)) for title, value in report["extra_sections"].items()],
    )


def _num(value: Any) -> str:
    """A data-* attribute the page's script sorts on; empty = not measured (sorted last)."""
    return "" if value is None else repr(float(value))


def _cell(name: str, answer: dict[str, Any] | None, reference: bool) -> dict[str, Any]:
    if answer is None:
        return {"name": name, "missing": True}
    text = answer.get("text") or ""
    cut = answer.get("divergence_char")
    cut = None if (reference or cut is None) else max(0, min(int(cut), len(text)))
    return {
        "name": name, "missing": False, "reference": reference,
        "head": text if cut is None else text[:cut], "tail": "" if cut is None else text[cut:],
        # The text is a prefix of HF's (it stopped early): mark where HF went on.
        "ends_early": cut is not None and cut == len(text),
        "stopped": answer.get("stopped"), "n_tokens": answer.get("n_tokens"), "exact": answer.get("exact"),
        "chrf": fmt(answer.get("chrf"), 3), "mean_kl": fmt(answer.get("mean_kl"), 3), "max_kl": fmt(answer.get("max_kl"), 3),
        "first_divergence": answer.get("first_divergence"),
    }


def example_rows(report: dict[str, Any], limit: int = EXAMPLES_SHOWN) -> dict[str, Any]:
    """The side-by-side view: columns (reference models, then each GGUF) and at most `limit`
    rows. When rows must be hidden, the ones shown are those that differ from HF, worst mean
    KL first, so the cap hides the uninteresting agreeing rows; they keep their split order."""
    examples = report.get("examples") or []
    refs = [n for n in reference_names(report) if any(n in e["answers"] for e in examples)]
    ggufs = [n for n in report["answers"] if any(n in e["answers"] for e in examples)]
    hf = refs[0] if refs else None
    rows = []
    for idx, e in enumerate(examples):
        answers = e.get("answers") or {}
        hf_text = (answers.get(hf) or {}).get("text") if hf else None
        gg = [answers.get(n) or {} for n in ggufs]
        kls = [a.get("mean_kl") for a in gg if a.get("mean_kl") is not None]
        rows.append({
            "idx": idx, "id": str(e.get("id")), "prompt": e.get("prompt") or "", "reference": e.get("reference") or "",
            "mismatch": any(n in answers and a.get("text") != hf_text for n, a in zip(ggufs, gg)),
            "unstopped": any(a.get("stopped") is False for a in answers.values()),
            "worst_kl": _num(max(kls) if kls else None),
            "keys": [{"mkl": _num(a.get("mean_kl")), "xkl": _num(a.get("max_kl")), "div": _num(a.get("first_divergence"))}
                     for a in gg],
            "cells": [_cell(n, answers.get(n), True) for n in refs] + [_cell(n, answers.get(n), False) for n in ggufs],
        })
    if len(rows) > limit:
        keep = sorted(rows, key=lambda r: (not r["mismatch"], -(float(r["worst_kl"]) if r["worst_kl"] else -1.0)))[:limit]
        rows = sorted(keep, key=lambda r: r["idx"])
    return {"refs": refs, "ggufs": ggufs, "rows": rows, "total": len(examples), "hidden": len(examples) - len(rows)}


def render_answers_html(report: dict[str, Any], predictions: list[dict[str, Any]]) -> str:
    import json

    template = _template("answers.html.j2")
    verdicts = [
        (name, v["holds"], answers_verdict_line(name, report).lstrip("- ").replace("**", ""))
        for name, v in report["verdicts"].items()
    ]
    cfg = report["config"]
    limit = int(cfg.get("max_examples_shown") or EXAMPLES_SHOWN)
    return template.render(
        report=report,
        head=answers_head(report),
        thresholds=answers_thresholds_line(report),
        verdicts=verdicts,
        answers=answers_table(report),
        kl_positions=kl_by_position_table(report),
        divergence=first_divergence_table(report),
        view=example_rows(report, limit),
        speed=answers_speed_table(report),
        plots=answers_plots(report) if cfg.get("plots", True) else [],
        config_json=json.dumps({"evaluate": cfg, "context": report["context"]}, indent=2, default=str),
        **_diagnostics(report),
    )
