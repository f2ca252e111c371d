"""Verification in a child process: broken files and crashes become failed checks; the
header reader/writer and the metadata fix; EOS/EOT and stop checks on real files."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from tunegguf.export import verify as verify_module
from tunegguf.export.gguf_file import check_complete, patch_scalar, read_header, rewrite_header, tensor_data
from tunegguf.export.verify import verify_files, verify_gguf
from tunegguf.errors import TuneGGUFError


def _small_gguf(path: Path) -> Path:
    """A structurally valid GGUF with a few keys and tensors (not a loadable model)."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_uint32("tokenizer.ggml.eos_token_id", 7)
    writer.add_string("tokenizer.chat_template", "{{ messages }}")
    writer.add_array("tokenizer.ggml.tokens", ["<s>", "a", "b", "é", "🦙"])
    rng = np.random.default_rng(0)
    writer.add_tensor("a.weight", rng.normal(size=(8, 32)).astype(np.float32))
    q = gguf.quants.quantize(rng.normal(size=(4, 64)).astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("b.weight", q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_header_parser_agrees_with_gguf_reader(tmp_path):
    from gguf import GGUFReader

    path = _small_gguf(tmp_path / "small.gguf")
    header = read_header(path, decode_arrays=("tokenizer.ggml.tokens",))
    reader = GGUFReader(str(path))
    assert header.fields["tokenizer.ggml.tokens"] == reader.fields["tokenizer.ggml.tokens"].contents()
    assert header.fields["tokenizer.ggml.eos_token_id"] == 7
    for info, tensor in zip(header.tensors, reader.tensors):
        assert info.name == tensor.name and info.n_bytes == tensor.n_bytes
        assert info.offset == tensor.data_offset  # absolute in both
        np.testing.assert_array_equal(tensor_data(header, info, path), tensor.data)
        np.testing.assert_array_equal(tensor_data(header, info, path, 1, 3), np.asarray(tensor.data)[1:3])
    check_complete(header)


def test_header_rewrite_and_patch_keep_tensors(tmp_path):
    from gguf import GGUFReader

    path = _small_gguf(tmp_path / "small.gguf")
    before = {t.name: np.array(t.data) for t in GGUFReader(str(path)).tensors}
    assert patch_scalar(path, "tokenizer.ggml.eos_token_id", 3)
    assert not patch_scalar(path, "tokenizer.ggml.eot_token_id", 3)  # absent: needs a rewrite
    rewrite_header(path, {"tokenizer.ggml.eot_token_id": 3, "tokenizer.chat_template": "{{ bos_token }}x" * 50})
    reader = GGUFReader(str(path))
    assert reader.fields["tokenizer.ggml.eos_token_id"].contents() == 3
    assert reader.fields["tokenizer.ggml.eot_token_id"].contents() == 3
    assert reader.fields["tokenizer.chat_template"].contents() == "{{ bos_token }}x" * 50
    for tensor in reader.tensors:
        np.testing.assert_array_equal(np.array(tensor.data), before[tensor.name])


def test_broken_files_fail_the_load_check_and_the_caller_survives(tmp_path):
    good = _small_gguf(tmp_path / "small.gguf")
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size - 100])
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(np.random.default_rng(0).bytes(50_000))
    results = verify_files([truncated, junk])
    for result, reason in zip(results, ("truncated: the tensors need", "no GGUF magic")):
        load = result.check("load")
        assert load.status == "fail" and reason in load.detail and "\n" not in load.detail
        assert not result.ok and not result.passed
        assert {c.status for c in result.checks[1:]} == {"skip"}
    with pytest.raises(TuneGGUFError, match="no such GGUF file"):
        verify_gguf(tmp_path / "absent.gguf")


def test_a_crash_fails_the_running_check_and_the_next_file_still_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(verify_module, "_HOST_NEEDS_PLAIN_BUFFERS", False)
    monkeypatch.setenv("TUNEGGUF_VERIFY_CRASH_AT", "load@crash.gguf")
    crash, other = tmp_path / "crash.gguf", tmp_path / "other.gguf"
    crash.write_bytes(b"x" * 100)
    other.write_bytes(b"y" * 100)
    first, second = verify_files([crash, other])
    assert first.check("load").status == "fail"
    assert "killed by SIGSEGV" in first.check("load").detail
    assert second.check("load").status == "fail" and "no GGUF magic" in second.check("load").detail


@pytest.mark.slow
def test_checks_on_a_real_file_catch_a_wrong_eos_and_a_model_that_never_stops(tiny_llama3_f16_gguf, tiny_llama3_dir, tmp_path):
    wrong_eos = tmp_path / "wrong-eos.gguf"
    shutil.copy(tiny_llama3_f16_gguf, wrong_eos)
    assert patch_scalar(wrong_eos, "tokenizer.ggml.eos_token_id", 128001)
    good, bad = verify_files([tiny_llama3_f16_gguf, wrong_eos], hf_dir=tiny_llama3_dir, max_tokens=8)
    for name in ("load", "pre_tokenizer", "special_tokens", "tokenizer", "chat_template"):
        assert good.check(name).status == "pass", good.check(name)
    # The random tiny model never emits <|eot_id|>: the stop check says so, in one line.
    stop = good.check("stops_at_eos")
    assert stop.status == "fail" and "no end-of-turn token within 8 tokens" in stop.detail
    special = bad.check("special_tokens")
    assert special.status == "fail" and "GGUF EOS is 128001" in special.detail and "128009" in special.detail


@pytest.mark.slow
def test_metadata_fix_restores_eos_eot_and_template(tiny_llama3_f16_gguf, tiny_llama3_dir, tmp_path):
    from transformers import AutoTokenizer

    from tunegguf.export.metadata import fix_tokenizer_metadata, read_tokenizer_meta

    path = tmp_path / "fix.gguf"
    shutil.copy(tiny_llama3_f16_gguf, path)
    patch_scalar(path, "tokenizer.ggml.eos_token_id", 128001)
    rewrite_header(path, {"tokenizer.chat_template": "{{ messages }}"})
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_llama3_dir))
    fixes = fix_tokenizer_metadata(path, tokenizer)
    assert any("eos_token_id set to 128009" in f for f in fixes)
    assert any("chat_template" in f for f in fixes)
    meta = read_tokenizer_meta(path)
    assert (meta.eos_id, meta.eot_id, meta.bos_id) == (128009, 128009, 128000)
    assert meta.chat_template == tokenizer.chat_template
    assert fix_tokenizer_metadata(path, tokenizer) == []  # idempotent
