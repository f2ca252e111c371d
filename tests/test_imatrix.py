"""Importance-matrix quantization: the collected statistic, llama.cpp's file format, its
effect on the quantized weights, the export stage around it, and the report's comparison."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from test_export_support import train_label_adapter
from tunegguf.data.example import Example
from tunegguf.errors import TuneGGUFError
from tunegguf.evaluate.manifest import quant_name
from tunegguf.export import ExportConfig, run
from tunegguf.export.imatrix import (
    ImportanceMatrix,
    collect_importance,
    is_imatrix_label,
    load_for_collection,
    plain_quant,
    quantization_error,
    read_imatrix,
    write_imatrix,
)
from tunegguf.export.stage import plan_imatrix_quants

LABELS = ["negative", "positive"]
ROWS = [("a wonderful, moving film", "positive"), ("dull and far too long", "negative"),
        ("I loved every minute", "positive"), ("a waste of time", "negative")]
# Chat-formatted sequences of different lengths, so a batch is padded.
TEXTS = [
    "<|start_header_id|>user<|end_header_id|>\n\nReview: a wonderful, moving film<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\npositive<|eot_id|>",
    "<|start_header_id|>user<|end_header_id|>\n\nReview: dull<|eot_id|>",
    "<|start_header_id|>user<|end_header_id|>\n\nReview: I loved every minute of this long, strange, "
    "beautiful story about a lighthouse keeper<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\npositive<|eot_id|>",
]


# ---- names and refusals (fast) ---------------------------------------------------------------


def test_imatrix_labels_and_file_names():
    assert plain_quant("Q4_K_M-imat") == "Q4_K_M" and plain_quant("Q8_0") == "Q8_0"
    assert is_imatrix_label("Q4_0-imat") and not is_imatrix_label("Q4_0")
    assert quant_name(Path("model-Q4_K_M-imat.gguf")) == "Q4_K_M-imat"
    assert quant_name(Path("model-Q4_K_M.gguf")) == "Q4_K_M"
    assert quant_name(Path("x-iq4_xs-imat.gguf")) == "IQ4_XS-imat"


def test_imatrix_quants_are_checked_before_any_work(tmp_path):
    assert plan_imatrix_quants(ExportConfig(imatrix_quants=["q4_k_m", "Q4_K_M", "Q4_0"])) == ["Q4_K_M", "Q4_0"]
    with pytest.raises(TuneGGUFError, match="F16 is not quantized"):
        plan_imatrix_quants(ExportConfig(imatrix_quants=["f16"]))
    with pytest.raises(TuneGGUFError, match="unknown quant type 'Q4_X'"):
        plan_imatrix_quants(ExportConfig(imatrix_quants=["Q4_X"]))
    with pytest.raises(TuneGGUFError, match="needs training rows for the importance matrix") as exc:
        run(ExportConfig(imatrix_quants=["Q4_0"]), base_model="tiny-llama3", adapter_dir=None, out_dir=tmp_path / "out")
    assert "\n" not in str(exc.value)
    assert not (tmp_path / "out").exists()


def test_imatrix_rows_setting_is_validated():
    from tunegguf.config.typed import from_dict

    with pytest.raises(TuneGGUFError, match="export.imatrix_rows"):
        from_dict(ExportConfig, {"imatrix_rows": 0})


def test_reading_something_that_is_not_an_imatrix_is_one_line(tmp_path):
    junk = tmp_path / "imatrix.dat"
    junk.write_bytes(b"\x01\x00\x00\x00garbage")
    with pytest.raises(TuneGGUFError, match="not a GGUF importance matrix") as exc:
        read_imatrix(junk)
    assert "\n" not in str(exc.value)
    with pytest.raises(TuneGGUFError, match="does not exist"):
        read_imatrix(tmp_path / "missing.gguf")


def test_file_round_trip_in_llama_cpp_layout(tmp_path):
    from gguf import GGUFReader

    matrix = ImportanceMatrix(
        sums={"blk.0.attn_q.weight": np.arange(1, 9, dtype=np.float64), "output.weight": np.full(8, 3.0)},
        counts={"blk.0.attn_q.weight": 4, "output.weight": 2}, datasets=["rows"], chunks=3, tokens=4,
    )
    path = write_imatrix(tmp_path / "imatrix.gguf", matrix)
    reader = GGUFReader(str(path))
    assert bytes(reader.fields["general.type"].parts[-1]).decode() == "imatrix"
    tensors = {t.name: t for t in reader.tensors}
    # llama.cpp's layout: in_sum2 ne = [n_in, n_experts], counts ne = [1, n_experts], both F32.
    assert list(tensors["blk.0.attn_q.weight.in_sum2"].shape) == [8, 1]
    assert list(tensors["blk.0.attn_q.weight.counts"].shape) == [1, 1]
    assert tensors["output.weight.counts"].tensor_type.name == "F32"
    back = read_imatrix(path)
    assert back.datasets == ["rows"] and back.chunks == 3 and back.counts == matrix.counts
    np.testing.assert_allclose(back.means()["blk.0.attn_q.weight"], np.arange(1, 9) / 4)
    assert [p.name for p in tmp_path.iterdir()] == ["imatrix.gguf"]  # written atomically


# ---- the statistic (slow: a real model) ------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tiny_llama3_dir):
    return load_for_collection(tiny_llama3_dir)


@pytest.mark.slow
def test_collected_statistic_is_the_mean_square_of_each_matmul_input(tiny_model, tiny_llama3_f16_gguf):
    import torch

    model, tokenizer = tiny_model
    matrix = collect_importance(model, tokenizer, TEXTS, gguf_path=tiny_llama3_f16_gguf, batch_size=3, progress=False)
    # 2 blocks x 7 projections + the LM head; every width matches the GGUF tensor.
    assert len(matrix.sums) == 15 and "output.weight" in matrix.sums and "blk.1.ffn_down.weight" in matrix.sums
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    n_tokens = sum(len(i) for i in ids)
    assert matrix.tokens == n_tokens and matrix.chunks == 3
    assert matrix.counts["blk.0.attn_q.weight"] == n_tokens  # padding excluded

    # Independently: block 0's attention input is input_layernorm(embeddings), unpadded.
    expected = torch.zeros(model.config.hidden_size, dtype=torch.float64)
    with torch.inference_mode():
        for row in ids:
            hidden = model(input_ids=torch.tensor([row]), output_hidden_states=True).hidden_states[0]
            x = model.model.layers[0].input_layernorm(hidden)[0].double()
            expected += (x * x).sum(dim=0)
    means = matrix.means()
    np.testing.assert_allclose(matrix.sums["blk.0.attn_q.weight"], expected.numpy(), rtol=1e-4)
    np.testing.assert_allclose(means["blk.0.attn_k.weight"], (expected / n_tokens).numpy(), rtol=1e-4)
    # q, k and v read the same input; the MLP's down projection reads a different one.
    np.testing.assert_allclose(means["blk.0.attn_v.weight"], means["blk.0.attn_q.weight"])
    assert means["blk.0.ffn_down.weight"].shape == (model.config.intermediate_size,)

    # Batching changes nothing: one row at a time gives the same sums.
    single = collect_importance(model, tokenizer, TEXTS, gguf_path=tiny_llama3_f16_gguf, batch_size=1, progress=False)
    for name in matrix.sums:
        np.testing.assert_allclose(single.sums[name], matrix.sums[name], rtol=1e-4)


@pytest.mark.slow
def test_quantizing_with_the_matrix_lowers_the_activation_weighted_error(tiny_model, tiny_llama3_f16_gguf, tmp_path):
    from tunegguf.export.gguf_file import read_header
    from tunegguf.export.quantize import quantize_gguf

    model, tokenizer = tiny_model
    texts = TEXTS * 8
    matrix = collect_importance(model, tokenizer, texts, gguf_path=tiny_llama3_f16_gguf, progress=False)
    imatrix = write_imatrix(tmp_path / "imatrix.gguf", matrix)
    plain = quantize_gguf(tiny_llama3_f16_gguf, tmp_path / "plain.gguf", "Q4_0")
    weighted = quantize_gguf(tiny_llama3_f16_gguf, tmp_path / "imat.gguf", "Q4_0", imatrix=imatrix)
    assert plain.read_bytes() != weighted.read_bytes()
    header = read_header(weighted).fields
    assert header["quantize.imatrix.entries_count"] == 15 and header["quantize.imatrix.chunks_count"] == 24
    assert header["quantize.imatrix.file"] == "imatrix.gguf"
    assert "quantize.imatrix.file" not in read_header(plain).fields
    means = matrix.means()
    error_plain = quantization_error(plain, tiny_llama3_f16_gguf, means)["weighted_rel_sq_error"]
    error_imat = quantization_error(weighted, tiny_llama3_f16_gguf, means)["weighted_rel_sq_error"]
    assert 0 < error_imat < 0.97 * error_plain, (error_imat, error_plain)
    # The f16 file against itself has no error: the measure is not biased.
    assert quantization_error(tiny_llama3_f16_gguf, tiny_llama3_f16_gguf, means)["weighted_rel_sq_error"] == 0


# ---- the export stage ------------------------------------------------------------------------


@pytest.mark.slow
def test_export_writes_imatrix_variants_and_reuses_them(tiny_llama3_dir, tmp_path, capsys):
    adapter = train_label_adapter(tiny_llama3_dir, tmp_path / "adapter", ROWS, LABELS)
    train = [Example(id=f"t{i}", text=text, label=label) for i, (text, label) in enumerate(ROWS * 3)]
    config = ExportConfig(quants=["Q4_0"], imatrix_quants=["Q4_0"], imatrix_rows=10, weight_parity=False)
    kwargs = dict(base_model="tiny-llama3", adapter_dir=adapter, out_dir=tmp_path / "out", labels=LABELS,
                  sample=Example(id="s", text=ROWS[0][0]), calibration=train)
    result = run(config, **kwargs)
    assert [f.quant for f in result.files] == ["F16", "Q4_0", "Q4_0-imat"] and not result.failed
    imat = result.files[2]
    assert imat.path.name == "model-Q4_0-imat.gguf" and imat.verify.passed
    assert (tmp_path / "out" / "gguf" / "Modelfile.Q4_0-imat").is_file()
    manifest = json.loads(result.manifest_path.read_text())
    stored = manifest["imatrix"]
    assert stored["rows"] == 10 and stored["entries"] == 15 and stored["tokens"] > 10 * 20
    assert manifest["files"]["model-Q4_0-imat.gguf"]["imatrix_sha256"] == stored["sha256"]
    assert manifest["files"]["model-Q4_0.gguf"]["imatrix_sha256"] is None
    assert "collecting the importance matrix over 10 training rows" in capsys.readouterr().err

    # Same rows: nothing is collected or quantized again.
    again = run(config, **kwargs)
    assert all(f.reused for f in again.files)
    assert "importance matrix is up to date" in capsys.readouterr().err
    # Other rows: a new matrix, and only the imatrix file is made again.
    config.imatrix_rows = 6
    third = run(config, **kwargs)
    assert [f.reused for f in third.files] == [True, True, False]
    assert json.loads(result.manifest_path.read_text())["imatrix"]["rows"] == 6


# ---- the report ------------------------------------------------------------------------------


def test_report_shows_each_quant_with_and_without_the_matrix():
    from tunegguf.evaluate.report.markdown import diagnostics_markdown
    from tunegguf.evaluate.report.tables import imatrix_table

    def row(quant, agreement, kl, eligible):
        return {"quant": quant, "size_bytes": 100, "agreement": agreement, "accuracy_difference": 0.01,
                "accuracy_difference_ci": None, "mean_kl": kl, "holds": eligible, "erased": False,
                "eligible": eligible, "reasons": []}

    report = {
        "recommendation": {"choice": "Q4_0-imat", "reason": "x", "mode": "labels", "rows": [
            row("Q4_0", 0.95, 0.04, False), row("Q4_0-imat", 0.99, 0.01, True), row("Q8_0", 1.0, 0.001, True)]},
        "weight_parity": {"Q4_0": {"kept": 0.9}, "Q4_0-imat": {"kept": 0.93}},
    }
    columns, rows = imatrix_table(report)
    assert len(rows) == 1  # Q8_0 has no imatrix twin
    cells = dict(zip(columns, rows[0]))
    assert cells["quant"] == "Q4_0" and cells["agreement"] == "95.0% → 99.0%"
    assert cells["KL plain / imatrix"] == "4.00×" and cells["verdict"] == "fails → holds"
    assert cells["fine-tune delta kept (as judged)"] == "0.9 → 0.93"
    assert "## Importance matrix" in "\n".join(diagnostics_markdown(report))


def test_a_bad_imatrix_file_fails_the_quantization_in_one_line(tmp_path):
    from tunegguf.export.quantize import quantize_gguf

    src = tmp_path / "model-f16.gguf"
    src.write_bytes(b"GGUF" + b"\0" * 64)
    junk = tmp_path / "imatrix.gguf"
    junk.write_bytes(b"not an imatrix")
    with pytest.raises(TuneGGUFError, match="not a GGUF importance matrix") as exc:
        quantize_gguf(src, tmp_path / "out.gguf", "Q4_0", imatrix=junk)
    message = str(exc.value)
    assert "\n" not in message and "Traceback" not in message and "TuneGGUFError" not in message
    assert not (tmp_path / "out.gguf").exists()
