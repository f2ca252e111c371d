"""Report rendering: generic tables for extra sections, escaping, self-contained HTML."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tunegguf.data.example import Example
from tunegguf.evaluate import EvaluateConfig, ModelSpec, evaluate_backends
from tunegguf.evaluate.backends.fake import FakeBackend
from tunegguf.evaluate.report.markdown import md_table
from tunegguf.evaluate.report.tables import fmt, generic_table, section_tables

LABELS = ["negative", "positive"]


def test_generic_table_shapes():
    records = [{"step": 20, "loss": 0.5}, {"step": 40, "loss": 0.25, "accuracy": 0.9}]
    assert generic_table(records) == (["step", "loss", "accuracy"], [["20", "0.5", "–"], ["40", "0.25", "0.9"]])
    by_name = {"Q8_0": {"kept": 0.98}, "Q4_0": {"kept": 0.9, "erased": False}}
    assert generic_table(by_name) == (["name", "kept", "erased"], [["Q8_0", "0.98", "–"], ["Q4_0", "0.9", "no"]])
    assert generic_table({"a": 1, "b": [1, 2]}) == (["key", "value"], [["a", "1"], ["b", "[1, 2]"]])
    assert generic_table([1, 2]) == (["value"], [["1"], ["2"]])
    assert generic_table("x") == (["value"], [["x"]])


def test_section_tables_split_settings_from_records():
    tables = section_tables({"best_step": 60, "history": [{"step": 20}], "seed": 1})
    assert [title for title, _ in tables] == [None, "history"]
    assert tables[0][1] == (["key", "value"], [["best_step", "60"], ["seed", "1"]])


def test_fmt():
    assert fmt(None) == "–"
    assert fmt(1.23456789) == "1.235"
    assert fmt(1.5e-5) == "1.50e-05"
    assert fmt(True) == "yes"
    assert len(fmt({"k": "v" * 500})) == 120


def test_markdown_table_escapes_pipes_newlines_and_tags():
    text = md_table((["a", "b"], [["x|y", "<unparsed>\nmore"]]))
    assert text.splitlines()[2] == "| x\\|y | &lt;unparsed> more |"
    assert md_table((["a"], [])) == "_(none)_\n"


@pytest.fixture
def hostile_run(tmp_path):
    """A run whose ids, generations and extra sections contain markup."""
    examples = [Example(id=f"<b>{i}</b>", text=f"t{i}", label=LABELS[i % 2]) for i in range(6)]
    prompts = [f"Q {i}: " for i in range(6)]

    def logits(prompt: str) -> np.ndarray:
        x = np.zeros(200)
        x[ord("p")] = 2.0 if int(prompt.split()[1][:-1]) % 2 else -2.0
        return x

    specs = [
        ModelSpec("hf", "hf", lambda: FakeBackend("hf", logits, lambda p: ("<script>alert(1)</script>", False))),
        ModelSpec("q", "gguf", lambda: FakeBackend("q", logits, lambda p: ("negative", True))),
    ]
    extra = {"notes <i>": {"comment": "<img src=x onerror=alert(1)>"}}
    return evaluate_backends(
        EvaluateConfig(bootstrap=20, plots=False), examples=examples, prompts=prompts, labels=LABELS, words=LABELS,
        models=specs, out_dir=tmp_path / "eval", extra_sections=extra,
    )


def test_html_escapes_data_and_is_self_contained(hostile_run):
    html = hostile_run.report_html.read_text()
    assert "<script>" not in html and "<img src=x" not in html and "<b>" not in html
    assert "&lt;script&gt;" in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "notes &lt;i&gt;" in html
    assert "http://" not in html and "https://" not in html
    assert html.count("<figure>") == 0  # plots: false


def test_json_and_markdown_carry_extra_sections(hostile_run):
    report = json.loads(hostile_run.report_json.read_text())
    assert report["extra_sections"] == {"notes <i>": {"comment": "<img src=x onerror=alert(1)>"}}
    md = hostile_run.report_md.read_text()
    assert "## notes &lt;i>" in md
    assert "| comment | &lt;img src=x onerror=alert(1)> |" in md
    assert "**q**" in md and "parity fails" in md


def test_weight_parity_table_and_layer_plot_in_both_reports(tmp_path):
    """The export's weight parity is shown beside the behavioural metrics (table + per-layer plot)."""
    from tunegguf.evaluate.report.plots import weight_parity_layers

    examples = [Example(id=str(i), text=f"t{i}", label=LABELS[i % 2]) for i in range(4)]

    def logits(prompt: str) -> np.ndarray:
        x = np.zeros(200)
        x[ord("p")] = 1.0
        return x

    layers = [{"layer": str(i), "kept": 0.05 + 0.01 * i} for i in range(3)]
    parity = {"q": {"kept": 0.065, "rel_error": 0.007, "delta_snr": 0.81, "verdict": "fine-tune largely erased",
                    "layers": layers, "not_checked": []}}
    specs = [ModelSpec("hf", "hf", lambda: FakeBackend("hf", logits)), ModelSpec("q", "gguf", lambda: FakeBackend("q", logits))]
    result = evaluate_backends(
        EvaluateConfig(bootstrap=20, modes=["labels"]), examples=examples, prompts=[f"Q {i}: " for i in range(4)],
        labels=LABELS, words=LABELS, models=specs, out_dir=tmp_path / "eval",
        diagnostics={"weight_parity": parity},
    )
    md = result.report_md.read_text()
    assert "## Weight-space parity" in md and "| q | 0.065 | 0.007 | 0.81 | fine-tune largely erased | 0 |" in md
    html = result.report_html.read_text()
    assert "Weight-space parity per layer" in html and "fine-tune largely erased" in html
    assert weight_parity_layers(json.loads(result.report_json.read_text())) is not None
