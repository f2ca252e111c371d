"""report.html: one self-contained file (inline CSS, inline PNGs) from a jinja2 template."""

from __future__ import annotations

from importlib import resources
from typing import Any

from tunegguf.evaluate.report.markdown import template_checks_head, verdict_line
from tunegguf.evaluate.report.plots import all_plots
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
)


def _template_text() -> str:
    return resources.files("tunegguf.evaluate.report").joinpath("templates/report.html.j2").read_text("utf-8")


def render_html(report: dict[str, Any], predictions: list[dict[str, Any]]) -> str:
    import json

    import jinja2

    # Autoescape: ids, generated text and extra sections are data, never markup.
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    template = env.from_string(_template_text())
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
    # Optional sections reach the template as plain values: StrictUndefined would turn a key
    # missing from a section that could not run (template checks, stages) into a crash.
    stages = report.get("stages") or {}
    recommendation = report.get("recommendation") or {}
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
        stage_summary=stages.get("summary") or "",
        stage_mode=stages.get("mode") or report.get("primary_mode"),
        stage_rows=stages_table(report),
        checks=template_checks_head(report),
        check_rows=template_checks_table(report),
        recommendation={"choice": recommendation.get("choice"), "reason": recommendation.get("reason") or ""},
        recommendation_rows=recommendation_table(report),
        imatrix_rows=imatrix_table(report),
        weight_rows=weight_parity_table(report),
        plots=all_plots(report, predictions) if report["config"].get("plots", True) else [],
        extra=[(title, section_tables(value)) for title, value in report["extra_sections"].items()],
        config_json=json.dumps({"evaluate": report["config"], "context": report["context"]}, indent=2, default=str),
    )
