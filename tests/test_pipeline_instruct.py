"""The instruction/chat demo (`configs/demo_instruct.yaml`) end to end: chat data, loss on
every assistant turn, export ladder, and the answers parity report that must tell a good
GGUF from a bad one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tunegguf.cli import cli
from tunegguf.config.run import load_run_config
from tunegguf.io import read_jsonl
from tunegguf.pipeline.run import run_pipeline

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def instruct_run(tmp_path_factory):
    """The shipped instruction demo config, as is, into a temporary run directory."""
    run_dir = tmp_path_factory.mktemp("demo-instruct-run")
    config = load_run_config(REPO / "configs" / "demo_instruct.yaml", [f"run_dir={run_dir}"])
    lines: list[str] = []
    result = run_pipeline(config, log=lines.append)
    report = json.loads((run_dir / "report" / "report.json").read_text())
    return config, result, report, lines


@pytest.mark.slow
def test_instruct_demo_tells_good_files_from_a_bad_one(instruct_run):
    config, result, report, lines = instruct_run
    assert result.stages_run == ["data", "finetune", "export", "evaluate"]
    assert report["task"] == "answers"
    manifest = json.loads((Path(config.run_dir) / "data" / "data_manifest.json").read_text())
    assert manifest["answers_checkable"] is True
    # Multi-turn rows reach the report: an earlier assistant turn sits inside some prompt.
    assert any(prompt.count("<|im_start|>assistant") >= 2 for prompt in (e["prompt"] for e in report["examples"]))

    answers = report["answers"]
    assert set(answers) == {"F16", "Q8_0", "Q4_K_M", "Q2_K"}
    for name, block in answers.items():
        assert block["tokenizer"]["mismatched"] == 0, name  # the same ids in both runtimes
    f16, q8, q2 = answers["F16"], answers["Q8_0"], answers["Q2_K"]
    # F16 is the HF model in another runtime: KL near the float floor, greedy answers equal.
    assert f16["teacher_forced"]["kl"]["mean"] < 1e-4
    assert f16["teacher_forced"]["same_top"]["rate"] >= 0.99
    assert f16["greedy"]["identical_rate"] >= 0.95
    assert f16["greedy"]["stop_agreement"] == 1.0
    # Q8_0 close; the 2-bit file visibly worse on every axis the verdict reads.
    assert f16["teacher_forced"]["kl"]["mean"] < q8["teacher_forced"]["kl"]["mean"] < q2["teacher_forced"]["kl"]["mean"]
    assert q8["teacher_forced"]["kl"]["mean"] < config.evaluate.answers.max_mean_kl
    assert q2["teacher_forced"]["kl"]["mean"] > 10 * q8["teacher_forced"]["kl"]["mean"]
    assert q2["greedy"]["identical_rate"] < f16["greedy"]["identical_rate"]
    assert report["verdicts"]["F16"]["holds"] and report["verdicts"]["Q8_0"]["holds"]
    assert not report["verdicts"]["Q2_K"]["holds"]
    assert any("max_mean_kl" in reason for reason in report["verdicts"]["Q2_K"]["reasons"])
    # The stage table blames quantization, not the merge or the conversion.
    steps = {step["step"]: step for step in report["stages"]["steps"]}
    assert steps["merge"]["mean_kl"] < 1e-6 and steps["conversion"]["mean_kl"] < 1e-4
    assert report["recommendation"]["choice"] in {"Q4_K_M", "Q8_0"}

    html = Path(result.report_html).read_text(encoding="utf-8")
    assert "Answers side by side" in html and "Q2_K" in html
    predictions = read_jsonl(Path(config.run_dir) / "report" / "predictions.jsonl")
    assert {row["model"] for row in predictions} >= {"hf", "F16", "Q2_K"}
    assert any(line.startswith("[evaluate]") for line in lines)


@pytest.mark.slow
def test_instruct_demo_answer_command_and_recommend(instruct_run):
    config, result, report, _ = instruct_run
    run_dir = str(config.run_dir)
    answered = CliRunner().invoke(cli, ["answer", "--run-dir", run_dir, "--json", "What is 7 + 5?"])
    assert answered.exit_code == 0, answered.output
    row = json.loads(answered.output.strip().splitlines()[-1])
    assert row["answer"].strip() and row["stopped"] is True  # the fine-tune learnt to stop
    shown = CliRunner().invoke(cli, ["evaluate", "--hf", str(Path(run_dir) / "export" / "merged"),
                                     "--gguf", f"Q8_0={Path(run_dir) / 'export' / 'gguf' / 'model-Q8_0.gguf'}",
                                     "--data", str(Path(run_dir) / "data" / "test.jsonl"),
                                     "--config", str(REPO / "configs" / "demo_instruct.yaml"),
                                     "--set", "evaluate.limit=6", "--out", str(Path(run_dir) / "eval-cli"),
                                     "--recommend"])
    assert shown.exit_code == 0, shown.output
    assert "Q8_0" in shown.output and "recommended:" in shown.output
