"""gguf/manifest.json: Manifest, FileEntry and ImatrixEntry to and from JSON, reuse, damaged files."""

from __future__ import annotations

import json

import pytest

from tunegguf.errors import TuneGGUFError
from tunegguf.evaluate.manifest import manifest_diagnostics
from tunegguf.export.manifest import FORMAT, FileEntry, ImatrixEntry, Manifest
from tunegguf.io import sha256_file


def _entry(file, **extra) -> FileEntry:
    return FileEntry(quant="Q8_0", path=file.name, size=file.stat().st_size, sha256=sha256_file(file),
                     source_checkpoint="/out/merged", source_sha256="src", converter_version="0.1.1",
                     gguf_version="0.17.1", llama_cpp_python_version="0.3.36", metadata_fixes=["eot set"],
                     verify={"passed": True, "checks": [], "notes": []},
                     weight_parity={"verdict": "fine-tune kept", "erased": False, "kept": 0.98},
                     modelfile="Modelfile.Q8_0", exported=True, **extra)


def test_a_saved_manifest_loads_back_equal(tmp_path):
    gguf = tmp_path / "model-Q8_0.gguf"
    gguf.write_bytes(b"gguf bytes")
    manifest = Manifest(tmp_path / "manifest.json", base_model="smollm2-135m", base_dir="/base",
                        base_source_quant="Q4_1", adapter_dir="/adapter", merged_dir="/out/merged",
                        source_sha256="src", source_shards={"model.safetensors": "src"},
                        versions={"gguf": "0.17.1", "tunegguf": None}, config={"quants": ["Q8_0"]},
                        warnings=["a warning"], lora_gguf=None,
                        imatrix=ImatrixEntry(path="imatrix.gguf", sha256="imat", entries=210, source_sha256="src",
                                             calibration_sha256="cal", rows=64, tokens=9000, seconds=3.5))
    manifest.record(gguf, _entry(gguf))
    data = json.loads(manifest.path.read_text())
    assert data["format"] == FORMAT and list(data["files"]) == ["model-Q8_0.gguf"]
    assert data["files"]["model-Q8_0.gguf"]["weight_parity"]["erased"] is False
    assert "given" not in data["imatrix"]  # only the keys that apply to a collected matrix
    assert Manifest.load(manifest.path) == manifest == Manifest.from_dict(manifest.path, manifest.to_dict())


def test_a_given_importance_matrix_keeps_its_own_keys():
    given = ImatrixEntry(path="/abs/imatrix.gguf", sha256="s", entries=3, given=True, datasets=[])
    assert given.to_dict() == {"path": "/abs/imatrix.gguf", "sha256": "s", "entries": 3, "given": True, "datasets": []}
    assert ImatrixEntry.from_dict(given.to_dict()) == given


def test_reusable_needs_the_same_source_quant_matrix_and_bytes(tmp_path):
    gguf = tmp_path / "model-Q8_0.gguf"
    gguf.write_bytes(b"gguf bytes")
    manifest = Manifest(tmp_path / "manifest.json")
    manifest.record(gguf, _entry(gguf, imatrix_sha256="imat"))
    again = Manifest.load(manifest.path)
    stored = again.reusable(gguf, quant="Q8_0", source_sha256="src", imatrix_sha256="imat")
    assert stored == _entry(gguf, imatrix_sha256="imat")
    assert again.reusable(gguf, quant="Q4_0", source_sha256="src", imatrix_sha256="imat") is None
    assert again.reusable(gguf, quant="Q8_0", source_sha256="other", imatrix_sha256="imat") is None
    assert again.reusable(gguf, quant="Q8_0", source_sha256="src") is None
    gguf.write_bytes(b"other bytes")  # same size, different content
    assert again.reusable(gguf, quant="Q8_0", source_sha256="src", imatrix_sha256="imat") is None
    assert again.reusable(tmp_path / "missing.gguf", quant="Q8_0", source_sha256="src") is None


def test_load_starts_over_on_a_damaged_or_foreign_manifest(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text("{broken")
    assert Manifest.load(path) == Manifest(path)
    path.write_text(json.dumps({"format": "something-else/1", "base_model": "x", "files": {}}))
    assert Manifest.load(path) == Manifest(path)
    assert Manifest.load(tmp_path / "none.json") == Manifest(tmp_path / "none.json")


def test_read_takes_any_shape_and_refuses_invalid_json(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"adapter_dir": "/a", "unknown": 1,
                                "files": [{"quant": "Q8_0", "path": "m-Q8_0.gguf"}, {"path": 3}, "x"]}))
    manifest = Manifest.read(path)
    assert manifest.adapter_dir == "/a"
    assert manifest.files == {"m-Q8_0.gguf": FileEntry(quant="Q8_0", path="m-Q8_0.gguf")}
    path.write_text("{broken")
    with pytest.raises(TuneGGUFError, match="manifest.json: not valid JSON"):
        Manifest.read(path)


def test_manifest_diagnostics_reads_a_list_of_entries(tmp_path):
    (tmp_path / "Modelfile.Q4_0").write_text("FROM ./m-Q4_0.gguf\n")
    (tmp_path / "manifest.json").write_text(json.dumps({"base_model": "b", "adapter_dir": "/a", "files": [
        {"path": "m-Q4_0.gguf", "modelfile": "Modelfile.Q4_0", "weight_parity": {"verdict": "v", "tensors": []}}]}))
    extras = manifest_diagnostics(tmp_path)
    assert extras["modelfiles"] == {"Q4_0": tmp_path / "Modelfile.Q4_0"}
    assert extras["weight_parity"] == {"Q4_0": {"verdict": "v"}}
    assert extras["adapter_reference"][0] == "b"
