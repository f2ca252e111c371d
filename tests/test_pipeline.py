"""`tunegguf run`: the shipped demo config end to end, stage skipping, predict, the CLI surface."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tunegguf.cli import LAZY_COMMANDS, cli
from tunegguf.config.run import load_run_config
from tunegguf.errors import TuneGGUFError
from tunegguf.io import read_jsonl
from tunegguf.pipeline.run import STAGES, run_pipeline, stage_fingerprints

REPO = Path(__file__).resolve().parents[1]


def test_fingerprints_change_only_downstream():
    base = stage_fingerprints(load_run_config(None))
    evaluate_only = stage_fingerprints(load_run_config(None, ["evaluate.max_mean_kl=0.2"]))
    assert [s for s in STAGES if base[s] != evaluate_only[s]] == ["evaluate"]
    finetune = stage_fingerprints(load_run_config(None, ["finetune.max_steps=7"]))
    assert [s for s in STAGES if base[s] != finetune[s]] == ["finetune", "export", "evaluate"]
    data = stage_fingerprints(load_run_config(None, ["data.seed=1"]))
    assert all(base[s] != data[s] for s in STAGES)


def test_bad_stage_names_are_one_line_errors(tmp_path):
    config = load_run_config(None, [f"run_dir={tmp_path}"])
    with pytest.raises(TuneGGUFError, match="--from 'fine-tune' is not a stage.*did you mean 'finetune'"):
        run_pipeline(config, from_stage="fine-tune")
    result = CliRunner().invoke(cli, ["run", str(REPO / "configs" / "demo.yaml"), "--set", "finetune.max_step=3"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: unknown setting 'finetune.max_step' (did you mean 'max_steps'?)"]


@pytest.mark.parametrize("command", sorted(LAZY_COMMANDS) + ["doctor"])
def test_every_command_has_help(command):
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_doctor_json_never_prints_the_token(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value_123")
    result = CliRunner().invoke(cli, ["doctor", "--json"])
    assert "hf_secret_value_123" not in result.output
    report = json.loads(result.output)
    assert report["resources"]["hf_token_set"] is True
    assert report["versions"]["unsloth"] and report["versions"]["llama-cpp-python"]
    assert result.exit_code == (0 if report["ok"] else 1)


def test_config_validate_and_show():
    runner = CliRunner()
    ok = runner.invoke(cli, ["config", "validate", str(REPO / "configs" / "demo.yaml")])
    assert ok.exit_code == 0 and ok.output.strip().endswith(": ok")
    shown = runner.invoke(cli, ["config", "show", "--json", "--set", "finetune.max_steps=5"])
    assert json.loads(shown.output)["finetune"]["max_steps"] == 5


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The shipped demo config, as is, into a temporary run directory."""
    run_dir = tmp_path_factory.mktemp("demo-run")
    config = load_run_config(REPO / "configs" / "demo.yaml", [f"run_dir={run_dir}"])
    lines: list[str] = []
    result = run_pipeline(config, log=lines.append)
    return config, result, lines


@pytest.mark.slow
def test_demo_config_end_to_end(demo_run, capsys):
    config, result, lines = demo_run
    run_dir = Path(config.run_dir)
    assert result.stages_run == STAGES
    for name in ("config.yaml", "environment.json", "stages.json", "data/data_manifest.json",
                 "finetune/metrics.jsonl", "export/gguf/manifest.json"):
        assert (run_dir / name).is_file(), name
    report = json.loads((run_dir / "report" / "report.json").read_text())
    assert result.report_html.is_file() and result.report_md.is_file()
    assert set(result.verdicts) == {"F16", "Q8_0", "Q4_K_M", "Q4_K_M-imat"}
    assert result.verdicts["F16"]["holds"], result.verdicts["F16"]
    # The importance matrix came from the training split only, and the report compares the two Q4_K_M files.
    manifest = json.loads((run_dir / "export" / "gguf" / "manifest.json").read_text())
    train_rows = len(read_jsonl(run_dir / "data" / "train.jsonl"))
    assert (run_dir / "export" / "gguf" / "imatrix.gguf").is_file()
    assert manifest["imatrix"]["rows"] == min(train_rows, config.export.imatrix_rows)
    assert "## Importance matrix" in result.report_md.read_text()
    assert report["stages"]["steps"], "the stage table (merge / conversion / quantization) is in the report"
    assert report["template_checks"], "template and BOS checks are in the report"
    history = read_jsonl(run_dir / "finetune" / "metrics.jsonl")
    baseline = next(r for r in history if r.get("kind") == "baseline")
    best = max((r for r in history if r.get("kind") == "eval"), key=lambda r: r["accuracy"])
    assert best["accuracy"] > baseline["accuracy"], "fine-tuning should beat the zero-shot baseline"
    with capsys.disabled():
        verdicts = {k: ("holds" if v["holds"] else "fails") for k, v in result.verdicts.items()}
        print(f"\n[demo] seconds per stage {result.seconds}; baseline acc {baseline['accuracy']:.3f} -> "
              f"best {best['accuracy']:.3f}; verdicts {verdicts}")
    assert report  # the machine-readable report parses


@pytest.mark.slow
def test_demo_rerun_skips_every_stage_and_evaluate_change_reruns_only_it(demo_run):
    config, _, _ = demo_run
    again = run_pipeline(config, log=lambda line: None)
    assert again.stages_skipped == STAGES and again.stages_run == []
    cheaper = load_run_config(REPO / "configs" / "demo.yaml",
                              [f"run_dir={config.run_dir}", "evaluate.modes=[labels]", "evaluate.quants=[Q8_0]"])
    partial = run_pipeline(cheaper, log=lambda line: None)
    assert partial.stages_run == ["evaluate"]
    assert set(partial.verdicts) == {"Q8_0"}


@pytest.mark.slow
def test_predict_matches_the_evaluator(demo_run, tmp_path):
    config, _, _ = demo_run
    run_dir = Path(config.run_dir)
    rows = [r for r in read_jsonl(run_dir / "report" / "predictions.jsonl") if r.get("model") == "Q8_0"][:6]
    assert rows, "the report has Q8_0 predictions"
    tests = {r["id"]: r for r in read_jsonl(run_dir / "data" / "test.jsonl")}
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"text": tests[r["id"]]["text"]}) + "\n" for r in rows))
    out = tmp_path / "out.csv"
    result = CliRunner().invoke(cli, ["predict", "--run", str(run_dir), "--model", "Q8_0",
                                      "--input", str(source), "--output", str(out)])
    assert result.exit_code == 0, result.output
    import pandas as pd

    scored = pd.read_csv(out)
    assert list(scored["label"]) == [r["pred_labels"] if "pred_labels" in r else r["pred"] for r in rows]
    single = CliRunner().invoke(cli, ["predict", "--run", str(run_dir), "--model", "Q8_0", tests[rows[0]["id"]]["text"]])
    assert single.exit_code == 0 and single.stdout.split("\t")[0] == scored["label"][0]
    missing = CliRunner().invoke(cli, ["predict", "--run", str(run_dir), "--model", "Q3_X", "x"])
    assert missing.exit_code == 2 and "neither a file nor an exported quant" in missing.output
