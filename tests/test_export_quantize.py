"""Quant names, quantization in a child process, and the disk checks before each file."""

from __future__ import annotations

from collections import namedtuple

import pytest

from tunegguf.errors import TuneGGUFError
from tunegguf.export.config import ExportConfig
from tunegguf.export.quantize import quantize_gguf, resolve_quant
from tunegguf.export.stage import plan_quants

Usage = namedtuple("Usage", "total used free")


def test_quant_names_are_case_insensitive_and_unknown_ones_list_the_valid():
    assert resolve_quant("q4_k_m") == "Q4_K_M"
    assert resolve_quant(" Q8_0 ") == "Q8_0"
    with pytest.raises(TuneGGUFError) as exc:
        resolve_quant("Q4_K_X")
    message = str(exc.value)
    assert "unknown quant type 'Q4_K_X'" in message and "did you mean" in message
    assert "Q8_0" in message and "Q4_K_M" in message and "\n" not in message


def test_plan_drops_duplicates_and_the_unquantized_type():
    config = ExportConfig(outtype="f16", quants=["q8_0", "Q8_0", "F16", "Q4_K_M"])
    assert plan_quants(config) == ["Q8_0", "Q4_K_M"]
    with pytest.raises(TuneGGUFError, match="unknown quant type 'Q9'"):
        plan_quants(ExportConfig(quants=["Q9"]))


def test_config_checks_name_the_setting():
    from tunegguf.config.typed import from_dict

    with pytest.raises(TuneGGUFError, match="export.erased_threshold"):
        from_dict(ExportConfig, {"erased_threshold": 2})
    with pytest.raises(TuneGGUFError, match="export.verify_max_tokens"):
        from_dict(ExportConfig, {"verify_max_tokens": 0})


def test_a_failing_quantization_is_one_line_and_leaves_nothing(tmp_path):
    src = tmp_path / "junk.gguf"
    src.write_bytes(b"not a gguf at all" * 100)
    with pytest.raises(TuneGGUFError, match="quantizing junk.gguf to Q8_0 failed") as exc:
        quantize_gguf(src, tmp_path / "out.gguf", "Q8_0")
    assert "\n" not in str(exc.value)
    assert [p.name for p in tmp_path.iterdir()] == ["junk.gguf"]  # no partial output


def test_insufficient_disk_is_refused_before_each_file(tmp_path, monkeypatch):
    import shutil

    from tunegguf.export.convert import convert_to_gguf

    src = tmp_path / "model-f16.gguf"
    src.write_bytes(b"\0" * 1_000_000)
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    (hf / "model.safetensors").write_bytes(b"\0" * 1_000_000)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**12, 10**12, 10_000))
    with pytest.raises(TuneGGUFError, match="not enough disk for the Q8_0 GGUF"):
        quantize_gguf(src, tmp_path / "model-Q8_0.gguf", "Q8_0")
    with pytest.raises(TuneGGUFError, match="not enough disk for the f16 GGUF"):
        convert_to_gguf(hf, tmp_path / "out.gguf", "f16")
    assert not (tmp_path / "model-Q8_0.gguf").exists() and not (tmp_path / "out.gguf").exists()
