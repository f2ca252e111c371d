"""Parity diagnostics on fake backends: stage attribution, Go templates, Modelfiles, recommendation."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tunegguf.data.example import Example
from tunegguf.errors import TuneGGUFError
from tunegguf.evaluate import EvaluateConfig, ModelSpec, evaluate_backends
from tunegguf.evaluate.backends import ModelKind
from tunegguf.evaluate.backends.fake import FakeBackend
from tunegguf.evaluate.recommend import Recommendation, recommend
from tunegguf.evaluate.report.tables import ladder_table, recommendation_table
from tunegguf.evaluate.stages import is_unquantized, stage_parents, step_name
from tunegguf.export.go_template import GoTemplateError, ollama_data, render_go_template
from tunegguf.export.modelfile import read_modelfile

LABELS = ["negative", "positive"]
VOCAB = 150
NEG, POS = ord("n"), ord("p")  # the fake tokenizer: one id per character


def make_rows(n: int = 40):
    examples = [Example(id=f"r{i}", text=f"review {i}", label=LABELS[i % 2]) for i in range(n)]
    prompts = [f"Text: {e.text}\nAnswer: " for e in examples]
    return examples, prompts, {p: e.label for p, e in zip(prompts, examples)}


def logits_fn(truth, flip_every=0, noise=0.0, seed=0):
    """The true label's token pushed up; every `flip_every`-th row swapped (a wrong answer)."""

    def logits(prompt):
        i = int(prompt.split()[2])
        x = np.random.default_rng(zlib.crc32(prompt.encode())).normal(0, 1, VOCAB)
        x[NEG if truth[prompt] == "negative" else POS] += 4.0
        if noise:
            x += np.random.default_rng(seed * 1000 + i).normal(0, noise, VOCAB)
        if flip_every and i % flip_every == 0:
            x[NEG], x[POS] = x[POS], x[NEG]
        return x

    return logits


def spec(name, kind, logits, file=None):
    return ModelSpec(name, kind, lambda: FakeBackend(name, logits), file=file)


def fake_file(tmp_path: Path, name: str, size: int) -> Path:
    path = tmp_path / f"model-{name}.gguf"
    path.write_bytes(b"\0" * size)
    return path


def run_chain(tmp_path, models, examples, prompts, **kw):
    config = EvaluateConfig(bootstrap=200, modes=["labels"], plots=False, **kw)
    return evaluate_backends(config, examples=examples, prompts=prompts, labels=LABELS, words=LABELS,
                             models=models, out_dir=tmp_path / "eval")


# ---- chain structure --------------------------------------------------------------------


def test_chain_parents_and_step_names():
    chain = [("hf+adapter", ModelKind.HF_ADAPTER, None), ("hf", "hf", None), ("Q8_0", "gguf", "m-Q8_0.gguf"),
             ("F16", "gguf", "m-f16.gguf"), ("Q4_K_M", "gguf", "m-Q4_K_M.gguf")]
    assert stage_parents(chain) == {"hf": "hf+adapter", "F16": "hf", "Q8_0": "F16", "Q4_K_M": "F16"}
    # Without an unquantized file every quant hangs off the HF model.
    assert stage_parents([("hf", "hf", None), ("Q8_0", "gguf", None)]) == {"Q8_0": "hf"}
    assert step_name(ModelKind.HF_ADAPTER, "hf") == "merge"
    assert step_name("hf", "F16") == "conversion"
    assert step_name("hf", "Q8_0") == "conversion + quantization (Q8_0)"
    assert step_name("gguf", "Q4_K_M") == "quantization (Q4_K_M)"
    assert is_unquantized("model", "out/model-bf16.gguf") and not is_unquantized("Q4_0", "out/model-Q4_0.gguf")


def test_quantization_loss_is_attributed_to_the_quant(tmp_path):
    examples, prompts, truth = make_rows()
    same = logits_fn(truth)
    models = [
        spec("hf+adapter", ModelKind.HF_ADAPTER, same),
        spec("hf", "hf", same),
        spec("f16", "gguf", logits_fn(truth, noise=0.01, seed=1), fake_file(tmp_path, "f16", 3000)),
        spec("Q8_0", "gguf", logits_fn(truth, noise=0.05, seed=2), fake_file(tmp_path, "Q8_0", 1600)),
        spec("Q4_0", "gguf", logits_fn(truth, flip_every=4), fake_file(tmp_path, "Q4_0", 900)),
    ]
    result = run_chain(tmp_path, models, examples, prompts)
    report = json.loads(result.report_json.read_text())
    steps = {s["child"]: s for s in report["stages"]["steps"]}
    assert [steps[c]["step"] for c in ("hf", "f16", "Q8_0", "Q4_0")] == [
        "merge", "conversion", "quantization (Q8_0)", "quantization (Q4_0)"]
    assert steps["Q8_0"]["parent"] == "f16" and steps["Q4_0"]["parent"] == "f16"
    # Identical adapter and merged model: nothing lost, KL exactly zero.
    assert steps["hf"]["agreement"] == 1.0 and steps["hf"]["mean_kl"] == pytest.approx(0.0, abs=1e-9)
    q4 = steps["Q4_0"]
    assert q4["agreement"] == pytest.approx(0.75)
    assert q4["accuracy_difference"]["value"] == pytest.approx(0.25)
    assert q4["accuracy_difference"]["ci"][0] > 0
    assert report["stages"]["largest_loss"]["step"] == "quantization (Q4_0)"
    assert 0 < steps["Q8_0"]["mean_kl"] < q4["mean_kl"]
    # The unmerged model is reported but never judged.
    assert "hf+adapter" in report["models"] and "hf+adapter" not in report["verdicts"]
    md = result.report_md.read_text()
    assert "## Where did the difference come from?" in md and "quantization (Q4_0) ← largest loss" in md
    assert "Where did the difference come from?" in result.report_html.read_text()


def test_stage_kl_matches_a_direct_computation(tmp_path):
    """The tee must line each batch up with the parent's rows (batch offsets)."""
    examples, prompts, truth = make_rows(11)
    parent, child = logits_fn(truth), logits_fn(truth, noise=0.5, seed=7)
    models = [spec("hf", "hf", parent), spec("Q8_0", "gguf", child, fake_file(tmp_path, "Q8_0", 10))]
    report = json.loads(run_chain(tmp_path, models, examples, prompts, batch_size=4).report_json.read_text())

    def logsoftmax(x):
        x = x - x.max()
        return x - np.log(np.exp(x).sum())

    p = np.stack([logsoftmax(parent(q)) for q in prompts])
    c = np.stack([logsoftmax(child(q)) for q in prompts])
    expected = float((np.exp(p) * (p - c)).sum(axis=1).mean())
    assert report["stages"]["steps"][0]["mean_kl"] == pytest.approx(expected, rel=1e-4)
    assert report["stages"]["steps"][0]["step"] == "conversion + quantization (Q8_0)"


def test_merge_loss_is_attributed_to_the_merge(tmp_path):
    examples, prompts, truth = make_rows()
    models = [
        spec("hf+adapter", ModelKind.HF_ADAPTER, logits_fn(truth)),
        spec("hf", "hf", logits_fn(truth, flip_every=5)),
        spec("f16", "gguf", logits_fn(truth, flip_every=5), fake_file(tmp_path, "f16", 10)),
    ]
    report = json.loads(run_chain(tmp_path, models, examples, prompts).report_json.read_text())
    assert report["stages"]["largest_loss"]["step"] == "merge"
    assert "merge" in report["stages"]["summary"]


def test_adapter_model_must_come_before_the_reference(tmp_path):
    examples, prompts, truth = make_rows(4)
    models = [spec("hf", "hf", logits_fn(truth)), spec("hf+adapter", ModelKind.HF_ADAPTER, logits_fn(truth))]
    with pytest.raises(TuneGGUFError, match="first model to evaluate must be the Transformers reference"):
        run_chain(tmp_path, models, examples, prompts)


def test_failed_adapter_model_leaves_an_empty_step(tmp_path):
    examples, prompts, truth = make_rows(6)
    models = [
        ModelSpec("hf+adapter", ModelKind.HF_ADAPTER, lambda: FakeBackend("a", logits_fn(truth), fail_on="next_token_logprobs")),
        spec("hf", "hf", logits_fn(truth)),
    ]
    report = json.loads(run_chain(tmp_path, models, examples, prompts).report_json.read_text())
    assert report["models"]["hf+adapter"]["status"] == "failed"
    assert report["stages"]["steps"][0]["agreement"] is None
    assert report["stages"]["largest_loss"] is None


# ---- Go templates and Modelfiles ------------------------------------------------------------


def test_go_template_renders_the_exported_modelfile_templates():
    from tunegguf.export.modelfile import FORMATS, GoTemplate

    for fmt in FORMATS:
        for template in (GoTemplate(fmt, "", "", ""), GoTemplate(fmt, "<bos>", "Date: x\n\n", "DEFAULT")):
            for system in (None, "Be brief."):
                messages = ([{"role": "system", "content": system}] if system else []) + [
                    {"role": "user", "content": "Line 1\nline 2"}]
                assert render_go_template(template.text(), ollama_data(messages)) == template.render(system, "Line 1\nline 2")


def test_go_template_common_forms_and_trim_markers():
    template = ('{{- if .System }}<s>{{ .System }}</s>\n{{ else if .Prompt }}[no system]{{ else }}-{{ end -}}\n'
                '   U:{{ .Prompt }}{{ if not .Response }}<gen>{{ else }}{{ .Response }}{{ end }}')
    assert render_go_template(template, ollama_data([{"role": "user", "content": "q"}], "sys")) == "<s>sys</s>\nU:q<gen>"
    assert render_go_template(template, ollama_data([{"role": "user", "content": "q"}])) == "[no system]U:q<gen>"
    assert render_go_template('{{ range .Messages }}{{ .Role }}={{ .Content }};{{ end }}',
                              ollama_data([{"role": "user", "content": "a"}], "s")) == "system=s;user=a;"
    with pytest.raises(GoTemplateError, match="missing"):
        render_go_template("{{ if .System }}x", ollama_data([]))
    with pytest.raises(GoTemplateError, match="no field"):
        render_go_template("{{ .Nope }}", ollama_data([]))


def test_read_modelfile(tmp_path):
    path = tmp_path / "Modelfile"
    path.write_text('FROM ./m.gguf\nTEMPLATE """{{ if .System }}S{{ end }}\n{{ .Prompt }}"""\nSYSTEM """Be nice."""\n'
                    'PARAMETER stop "<|im_end|>"\nPARAMETER stop <|endoftext|>\nPARAMETER temperature 0\n')
    mf = read_modelfile(path)
    assert mf.template == "{{ if .System }}S{{ end }}\n{{ .Prompt }}"
    assert mf.system == "Be nice."
    assert mf.stops == ["<|im_end|>", "<|endoftext|>"]
    path.write_text("FROM ./m.gguf\n")
    assert read_modelfile(path) == type(mf)(None, None, [])


# ---- recommendation ----------------------------------------------------------------------------


@pytest.fixture
def ladder_report(tmp_path):
    examples, prompts, truth = make_rows()
    models = [
        spec("hf", "hf", logits_fn(truth)),
        spec("f16", "gguf", logits_fn(truth, noise=0.01, seed=1), fake_file(tmp_path, "f16", 3000)),
        spec("Q8_0", "gguf", logits_fn(truth, noise=0.05, seed=2), fake_file(tmp_path, "Q8_0", 1600)),
        spec("Q5_0", "gguf", logits_fn(truth, noise=0.08, seed=4), fake_file(tmp_path, "Q5_0", 1200)),
        spec("Q4_0", "gguf", logits_fn(truth, flip_every=4, seed=3), fake_file(tmp_path, "Q4_0", 900)),
    ]
    return json.loads(run_chain(tmp_path, models, examples, prompts).report_json.read_text())


def test_recommend_picks_the_smallest_file_that_holds(ladder_report):
    assert not ladder_report["verdicts"]["Q4_0"]["holds"] and ladder_report["verdicts"]["Q5_0"]["holds"]
    rec = recommend(ladder_report)
    assert rec.choice == "Q5_0"
    assert [r.quant for r in rec.rows] == ["Q4_0", "Q5_0", "Q8_0", "f16"]
    assert "Q4_0" in rec.reason
    assert ladder_report["recommendation"]["choice"] == "Q5_0"  # also stored in report.json
    columns, rows = ladder_table(rec)
    assert rows[1][0] == "Q5_0" and rows[1][-1] == "**recommended**"


def test_recommendation_round_trips_through_report_json(ladder_report):
    rec = recommend(ladder_report)
    assert Recommendation.from_dict(json.loads(json.dumps(rec.to_dict()))) == rec
    assert recommendation_table(ladder_report) == ladder_table(rec)  # report.md renders what the CLI prints


def test_recommend_never_picks_a_file_that_erases_the_fine_tune(ladder_report):
    ladder_report["weight_parity"] = {"Q5_0": {"verdict": "fine-tune largely erased", "kept": 0.05},
                                      "Q8_0": {"verdict": "fine-tune kept", "kept": 0.99}}
    rec = recommend(ladder_report)
    assert rec.choice == "Q8_0"
    q5 = next(r for r in rec.rows if r.quant == "Q5_0")
    assert q5.holds and q5.erased and not q5.eligible


def test_recommend_rejudges_with_thresholds_and_can_say_none(ladder_report):
    assert recommend(ladder_report, {"min_agreement": 0.7, "max_accuracy_drop": 0.5, "max_mean_kl": 100.0}).choice == "Q4_0"
    strict = recommend(ladder_report, EvaluateConfig(max_mean_kl=0.0))
    assert strict.choice is None and "no GGUF holds parity" in strict.reason


# ---- CLI pieces ---------------------------------------------------------------------------------


def test_manifest_diagnostics_and_stages_flag(tmp_path):
    from tunegguf.cli.evaluate import evaluate_command, manifest_diagnostics

    d = tmp_path / "gguf"
    d.mkdir()
    (d / "model-Q8_0.gguf").write_bytes(b"x")
    (d / "Modelfile.Q8_0").write_text("FROM ./model-Q8_0.gguf\n")
    (d / "manifest.json").write_text(json.dumps({
        "base_dir": "/base", "adapter_dir": "/adapter",
        "files": {"model-Q8_0.gguf": {"quant": "Q8_0", "path": "model-Q8_0.gguf", "modelfile": "Modelfile.Q8_0",
                                      "weight_parity": {"verdict": "fine-tune kept", "kept": 0.9, "tensors": [1]}}},
    }))
    extras = manifest_diagnostics(d)
    assert extras["modelfiles"] == {"Q8_0": d / "Modelfile.Q8_0"}
    assert extras["weight_parity"] == {"Q8_0": {"verdict": "fine-tune kept", "kept": 0.9}}
    assert extras["adapter_reference"] == ("/base", Path("/adapter"))

    data = tmp_path / "test.jsonl"
    data.write_text(json.dumps({"id": "a", "text": "fine", "label": "positive"}) + "\n")
    result = CliRunner().invoke(evaluate_command, ["--data", str(data), "--labels", "negative,positive", "--stages"])
    assert result.exit_code == 2
    assert "--stages needs --gguf-dir" in result.output


def test_echo_recommendation(tmp_path, ladder_report):
    from tunegguf.cli.evaluate import echo_recommendation

    path = tmp_path / "report.json"
    path.write_text(json.dumps(ladder_report))
    result = CliRunner().invoke(__import__("click").command()(lambda: echo_recommendation(path)))
    assert result.exit_code == 0, result.output
    assert "recommended: Q5_0" in result.output and "Q4_0" in result.output


def test_reports_render_template_checks_with_diffs(ladder_report):
    from tunegguf.evaluate.report.html import render_html
    from tunegguf.evaluate.report.markdown import render_markdown

    ladder_report["template_checks"] = {
        "gguf": "m.gguf", "passed": False, "renderings": {}, "token_ids": {},
        "diffs": {"training prompt vs Ollama Modelfile TEMPLATE": "--- a\n+++ b\n-<|im_start|>x\n+<s>x\n"},
        "checks": [{"name": "stop_modelfile", "passed": False, "detail": "PARAMETER stop lines []"},
                   {"name": "stop_gguf_eog", "passed": True, "detail": "ok"}],
    }
    md = render_markdown(ladder_report)
    assert "## Templates and tokens" in md and "| stop_modelfile | FAIL |" in md
    assert "```diff\n--- a\n+++ b\n-&lt;|im_start|>x" not in md  # diffs are code blocks, shown verbatim
    assert "-<|im_start|>x" in md
    html = render_html(ladder_report, [])
    assert "<h2>Templates and tokens</h2>" in html and "-&lt;|im_start|&gt;x" in html
    assert "<h2>Recommendation</h2>" in html and "Ship Q5_0" in html
