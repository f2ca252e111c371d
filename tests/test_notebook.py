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


@pytest.mark.slow
def test_notebook_runs_in_order_on_the_cpu(tmp_path):
    pytest.importorskip("nbclient")
    from nbclient import NotebookClient

    nb = _load()
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    overrides = [
        f"run_dir={tmp_path / 'run'}", "finetune.max_steps=4", "finetune.eval_every=0", "finetune.baseline=false",
        "data.max_eval_examples=12", "export.quants=[Q8_0]", "evaluate.modes=[labels]", "evaluate.bootstrap=50",
    ]
    params.source = (
        'CONFIG = "configs/demo.yaml"\nDATA = "demo"\n'
        f"OVERRIDES = {overrides!r}\nINSTALL = False\nQUANT_TO_DOWNLOAD = \"Q8_0\"\n"
    )
    client = NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(REPO)}})
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any failure
    assert (tmp_path / "run" / "report" / "report.html").is_file()
    assert (tmp_path / "run" / "export" / "gguf" / "manifest.json").is_file()
