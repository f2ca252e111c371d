"""The evaluate stage's outputs: report.json, report.md, report.html and predictions.jsonl."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunegguf.io import atomic_write_text, write_json, write_jsonl


def write_reports(out_dir: Path, report: dict[str, Any], predictions: list[dict[str, Any]]) -> dict[str, Path]:
    """Write the four files atomically; return their paths by kind.

    Both documents are rendered before anything is written, so a renderer that fails leaves
    the previous set (or none) in place instead of a new report.json beside an old report.html."""
    from tunegguf.evaluate.report.html import render_html
    from tunegguf.evaluate.report.markdown import render_markdown

    out_dir = Path(out_dir)
    paths = {
        "predictions": out_dir / "predictions.jsonl",
        "json": out_dir / "report.json",
        "md": out_dir / "report.md",
        "html": out_dir / "report.html",
    }
    markdown, html = render_markdown(report), render_html(report, predictions)
    write_jsonl(paths["predictions"], predictions)
    write_json(paths["json"], report)
    atomic_write_text(paths["md"], markdown)
    atomic_write_text(paths["html"], html)
    return paths
