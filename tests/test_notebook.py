"""The Colab notebook runs top to bottom on the CPU with the embedded default substituted."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "colab_t4_llama31.ipynb"


def _load():
    import nbformat

    return nbformat.read(NOTEBOOK, as_version=4)


def test_notebook_calls_the_package_and_has_one_parameters_cell():
    nb = _load()
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "run_pipeline(config" in code and "HF_TOKEN" in code
    assert "print(os.environ" not in code  # the token is never printed
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert len(cell.source.splitlines()) <= 16, "cells call the package; logic lives in tunegguf"


@pytest.mark.parametrize("task, config_name", [
    ("classification", "llama31_8b_sst2_t4.yaml"), ("instruction", "llama31_8b_alpaca_t4.yaml"),
])
def test_one_variable_picks_the_task_and_its_t4_config(task, config_name):
    from tunegguf.config.run import load_run_config

    nb = _load()
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    assert params.source.count("TASK = ") == 1
    namespace: dict = {}
    exec(params.source.replace('TASK = "classification"', f"TASK = {task!r}"), namespace)  # plain assignments only
    assert namespace["CONFIG"] == f"configs/{config_name}"
    config = load_run_config(REPO / namespace["CONFIG"])
    assert config.data.task == task
    assert config.model.load_in_4bit is True and config.model.dtype == "auto"  # QLoRA; fp16 on a T4 (no bf16)
    # Later cells read TASK or the config's own task, never a hard-coded one.
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "config.data.task" in code and 'TASK == "classification"' in code


def test_every_name_a_cell_reads_is_set_by_an_earlier_cell_or_an_import():
    """Run top to bottom, no cell reads a name only a later cell sets (the order-safe check
    that runs without a kernel; the slow test below executes them)."""
    import ast
    import builtins

    nb = _load()
    defined = set(dir(builtins)) | {"get_ipython", "display"}
    for index, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        # IPython magics (%pip) are no Python: each becomes `pass` at its indentation.
        source = "\n".join(line[: len(line) - len(line.lstrip())] + "pass" if line.lstrip().startswith("%") else line
                           for line in cell.source.splitlines())
        tree = ast.parse(source)
        stored = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        stored |= {a.asname or a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                   for a in n.names}
        read = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
        missing = read - defined - stored
        assert not missing, f"code cell {index} reads {sorted(missing)} before any cell sets them"
        defined |= stored


@pytest.mark.slow
def test_notebook_runs_in_order_on_the_cpu(tmp_path):
    pytest.importorskip("nbclient")
    from nbclient import NotebookClient

    nb = _load()
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    overrides = [
        f"run_dir={tmp_path / 'run'}", "finetune.max_steps=4", "finetune.eval_every=0", "finetune.baseline=false",
        "data.max_eval_examples=12", "export.quants=[Q8_0]", "export.imatrix_quants=[]", "evaluate.modes=[labels]", "evaluate.bootstrap=50",
    ]
    params.source = (
        'TASK = "classification"\nCONFIG = "configs/demo.yaml"\nDATA = "demo"\n'
        f"OVERRIDES = {overrides!r}\nINSTALL = False\nQUANT_TO_DOWNLOAD = \"Q8_0\"\n"
    )
    client = NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(REPO)}})
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any failure
    assert (tmp_path / "run" / "report" / "report.html").is_file()
    assert (tmp_path / "run" / "export" / "gguf" / "manifest.json").is_file()
