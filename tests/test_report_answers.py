"""report.md and report.html for task "answers", from a report.json shaped as the contract says."""

from __future__ import annotations

import json
import re

from answers_report_fixture import ROWS, answers_report, many_rows
from tunegguf.evaluate.report import write_reports
from tunegguf.evaluate.report.html import example_rows, render_html
from tunegguf.evaluate.report.markdown import render_markdown
from tunegguf.evaluate.report.tables import answers_table, is_answers, kl_by_position_table


def _row(table, name):
    columns, rows = table
    return dict(zip(columns, next(r for r in rows if r[0] == name)))


def test_task_defaults_to_classification():
    assert is_answers({"task": "answers"}) and not is_answers({}) and not is_answers({"task": "classification"})


def test_answers_table_numbers():
    report = answers_report()
    f16, q2, hf = (_row(answers_table(report), n) for n in ("F16", "Q2_K", "hf"))
    assert f16["mean KL [95% CI]"] == "1.10e-05 [7.70e-06, 1.54e-05]"
    assert f16["PPL ratio [95% CI]"] == "1.0001 [0.9801, 1.0301]"  # not rounded to "1"
    assert f16["median first divergence"] == "none diverged" and f16["greedy identical"] == "100.0% [100.0, 100.0]"
    assert q2["mean KL [95% CI]"].startswith("0.221 ") and q2["p99 KL"] == "3.9" and q2["same top"].startswith("81.0%")
    assert q2["median first divergence"] == "token 1 (5 rows)" and q2["stop agreement"] == "83.3%"
    assert q2["flips HF/GGUF (McNemar p)"] == "2/0 (p 0.5)" and q2["token-id mismatches"] == "0/12"
    # HF's own row: its reference metrics only (KL against itself would be 0 by definition).
    assert hf["exact vs reference"] == "75.0%" and hf["chrF"] == "83.1" and hf["mean KL [95% CI]"] == "–"
    assert len(set(map(len, answers_table(report)[1]))) == 1  # every row fills every column


def test_kl_by_position_table():
    columns, rows = kl_by_position_table(answers_report())
    assert columns == ["answer tokens", "tokens", "F16 mean (p90)", "Q2_K mean (p90)"]
    assert rows[0] == ["0–3", "36", "5.50e-06 (1.32e-05)", "0.1105 (0.2652)"]


def test_markdown_sections_and_escaping():
    md = render_markdown(answers_report())
    for section in ("## Verdicts", "## Parity of the answers", "## KL by position in the answer",
                    "## Where the greedy answers first diverge", "## Where did the difference come from?",
                    "## Templates and tokens", "## Recommendation", "## Speed", "## Warnings"):
        assert section in md, section
    assert "**Q2_K** (1120.0 MB, mean KL 0.221" in md and "**parity fails** — mean KL 0.221 > 0.05; p99 KL 3.9 > 1.0" in md
    assert "**F16** (6400.0 MB, mean KL 1.10e-05" in md and "**parity holds**" in md
    assert "| quantization (Q2_K) ← largest loss | F16 → Q2_K | 58.3% |" in md
    assert "Ship **F16**" in md
    assert "&lt;without>" in md and "## export &lt;manifest>" in md and "<i>" not in md
    assert "labels:" not in md  # nothing of the classification report leaks in


def test_html_sections_escaping_and_divergence_marks():
    report = answers_report()
    html = render_html(report, [])
    assert html.count("<script") == 1 and html.count("</script>") == 1  # only the page's own script
    assert "&lt;/script&gt;<mark title=\"departs from HF's answer here\">&lt;script&gt;alert(1)&lt;/script&gt; and" in html
    assert "café ☕" in html and "<i>not markup</i>" not in html and "&lt;i&gt;not markup&lt;/i&gt;" in html
    assert "http://" not in html and "https://" not in html
    for section in ("Verdicts", "Parity of the answers", "KL by position in the answer", "Answers side by side",
                    "Where did the difference come from?", "Templates and tokens", "Recommendation", "Speed"):
        assert f"<h2>{section}</h2>" in html or f">{section}</h2>" in html, section
    assert html.count("<figure>") == 0  # plots: false
    # One row per example; Q2_K's "300 m" departs from HF's "3000 m" after "300".
    assert len(re.findall(r"<tr data-idx=", html)) == len(ROWS)
    assert '300<mark title="departs from HF\'s answer here"> m</mark>' in html
    row = re.search(r'<tr data-idx="\d+" data-id="add-1"[^>]*>', html).group(0)
    assert 'data-mismatch="0"' in row and 'data-unstopped="0"' in row
    row = re.search(r'<tr data-idx="\d+" data-id="rev-8"[^>]*>', html).group(0)
    assert 'data-mismatch="1"' in row and 'data-unstopped="1"' in row and 'data-mkl1="0.66"' in row


def test_html_with_plots_embeds_the_kl_figure():
    html = render_html(answers_report(plots=True), [])
    assert "<figcaption>KL by position in the answer</figcaption>" in html
    assert "<figcaption>First divergence of the greedy answers</figcaption>" in html
    assert html.count("data:image/png;base64,") == 2


def test_big_sets_are_capped_keeping_the_mismatches():
    report = answers_report(many_rows(700))
    view = example_rows(report, limit=300)
    assert len(view["rows"]) == 300 and view["total"] == 700 and view["hidden"] == 400
    # 5 of every 12 rows differ from HF: all of those are kept, in split order.
    assert sum(r["mismatch"] for r in view["rows"]) == sum(1 for r in many_rows(700) if r[3] != r[4])
    assert [r["idx"] for r in view["rows"]] == sorted(r["idx"] for r in view["rows"])
    html = render_html(report, [])
    assert "<strong>300 of 700 examples shown</strong>" in html and "400 hidden" in html


def test_write_reports_answers(tmp_path):
    report = answers_report()
    predictions = [{"model": "Q2_K", "id": "rev-0", "generated": "nedrag", "stopped": True, "exact": True,
                    "chrf": 100.0, "mean_kl": 0.012, "max_kl": 0.09, "first_divergence": None, "nll": 0.3}]
    paths = write_reports(tmp_path, report, predictions)
    assert json.loads(paths["json"].read_text()) == report
    assert paths["md"].read_text().startswith("# Parity report: Transformers vs GGUF (answers)")
    assert "Answers side by side" in paths["html"].read_text()
    assert json.loads(paths["predictions"].read_text().splitlines()[0])["model"] == "Q2_K"


def test_failed_gguf_and_missing_sections():
    report = answers_report()
    report["answers"]["Q2_K"] = {"file": "x.gguf", "size_bytes": 10, "error": "could not load x.gguf", "tokenizer": {}}
    report["models"]["Q2_K"]["status"] = "failed"
    report["verdicts"]["Q2_K"] = {"holds": False, "reasons": ["the file could not be scored"], "summary": ""}
    for key in ("stages", "recommendation", "template_checks"):
        report[key] = None
    report["answers"]["F16"]["teacher_forced"]["kl_by_position"] = []
    md, html = render_markdown(report), render_html(report, [])
    assert "| Q2_K | 0.0 MB | failed: could not load x.gguf |" in md
    assert "## Recommendation" not in md and "could not load x.gguf" in html
