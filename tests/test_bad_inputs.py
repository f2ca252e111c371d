"""Bad inputs from the reliability issue: each is one clear line (or a meaningful warning), never
a traceback, and never a silent wrong result. One section per defect class."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from click.testing import CliRunner

from tunegguf.data import DataConfig, inspect_files, prepare
from tunegguf.errors import TuneGGUFError


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def _rows(n=40):
    return [{"text": f"review number {i} {'good' if i % 2 else 'bad'}", "label": "pos" if i % 2 else "neg"}
            for i in range(n)]


def _one_line_error(call, *fragments) -> str:
    with pytest.raises(TuneGGUFError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def _all_examples(result):
    return [e for split in ("train", "validation", "test") for e in result.load(split)]


# ---- #7 over-long rows ------------------------------------------------------------------


def test_overlong_row_is_dropped_counted_and_warned(tmp_path):
    rows = _rows()
    rows.insert(3, {"text": "x" * 1_000_000, "label": "pos"})
    result = prepare(DataConfig(train=_jsonl(tmp_path / "big.jsonl", rows)), tmp_path / "out")
    assert max(len(e.text) for e in _all_examples(result)) < 100
    assert result.manifest["dropped"]["train"]["too_long"] == 1
    assert any("big.jsonl: dropped 1 rows over data.max_text_length=100000 characters" in w for w in result.warnings)


def test_overlong_row_error_and_truncate_policies(tmp_path):
    rows = _rows()
    rows.insert(3, {"text": "y" * 500, "label": "pos"})
    train = _jsonl(tmp_path / "long.jsonl", rows)
    _one_line_error(lambda: prepare(DataConfig(train=train, max_text_length=200, too_long="error"), tmp_path / "e"),
                    "long.jsonl, row 4 (line 4)", "500 characters, over data.max_text_length=200", "data.too_long")
    cut = prepare(DataConfig(train=train, max_text_length=200, too_long="truncate"), tmp_path / "t")
    lengths = sorted(len(e.text) for e in _all_examples(cut))
    assert lengths[-1] == 200 and len(lengths) == 41
    assert cut.manifest["truncated"] == {"train": {"too_long": 1}}
    with pytest.raises(TuneGGUFError, match="data.too_long: truncate applies to task: classification"):
        from tunegguf.config.typed import from_dict

        from_dict(DataConfig, {"task": "instruction", "too_long": "truncate"}, "data")


def test_token_limit_from_the_caller(tmp_path):
    from tunegguf.data import LengthLimit

    rows = _rows()
    rows.insert(5, {"text": " ".join(["word"] * 50), "label": "neg"})
    train = _jsonl(tmp_path / "words.jsonl", rows)
    limit = LengthLimit(measure=lambda e: len(e.text.split()) + 3, max_seq_length=10, identity="words+3")
    dropped = prepare(DataConfig(train=train), tmp_path / "d", limit)
    assert dropped.manifest["dropped"]["train"]["too_long_tokens"] == 1
    assert any("over model.max_seq_length=10 tokens" in w for w in dropped.warnings)
    cut = prepare(DataConfig(train=train, too_long="truncate"), tmp_path / "t", limit)
    assert max(len(e.text.split()) for e in _all_examples(cut)) == 7
    _one_line_error(lambda: prepare(DataConfig(train=train, too_long="error"), tmp_path / "e", limit),
                    "words.jsonl, row 6 (line 6)", "53 tokens as prompted, over model.max_seq_length=10",
                    "raise model.max_seq_length")
    # The limit is part of the fingerprint: a different tokenizer/template prepares again.
    again = prepare(DataConfig(train=train), tmp_path / "d", LengthLimit(limit.measure, 10, identity="other"))
    assert not again.reused


# ---- #12 mixed label kinds --------------------------------------------------------------


def test_mixed_int_and_text_labels_are_an_error(tmp_path):
    rows = [{"text": f"t{i}", "label": i % 2} for i in range(10)]
    rows += [{"text": f"w{i}", "label": "positive" if i % 2 else "negative"} for i in range(10)]
    path = _jsonl(tmp_path / "mixed.jsonl", rows)
    _one_line_error(lambda: prepare(DataConfig(train=path), tmp_path / "out"),
                    "mixed.jsonl, column 'label'", "numbers (0 at row 1 (line 1))",
                    "texts ('negative' at row 11 (line 11))", "4 classes", "data.label_map")
    mapped = DataConfig(train=path, label_map={"0": "negative", "1": "positive",
                                               "negative": "negative", "positive": "positive"})
    assert prepare(mapped, tmp_path / "ok").labels == ["negative", "positive"]


def test_mixed_label_kinds_in_any_loader(tmp_path):
    csv = tmp_path / "mixed.csv"
    csv.write_text("text,label\n" + "".join(f"t{i},{i % 2}\n" for i in range(6)) + "u,positive\nv,negative\n")
    _one_line_error(lambda: inspect_files([str(csv)], DataConfig()), "mixed.csv", "numbers ('0' at row 1 (line 2))",
                    "texts ('positive' at row 7 (line 8))")
    booleans = tmp_path / "bools.json"
    booleans.write_text(json.dumps([{"text": "a", "label": True}, {"text": "b", "label": False},
                                    {"text": "c", "label": "yes"}]))
    _one_line_error(lambda: inspect_files([str(booleans)], DataConfig()), "bools.json", "booleans (True at row 1)",
                    "texts ('yes' at row 3)")


# ---- #13 cache directory ----------------------------------------------------------------


def test_cache_path_that_is_a_file(tmp_path, monkeypatch):
    from tunegguf import doctor
    from tunegguf.models import resolve_model

    blocker = tmp_path / "cache-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("TUNEGGUF_CACHE", str(blocker))
    _one_line_error(lambda: resolve_model("tiny-llama3"), f"{blocker} (from TUNEGGUF_CACHE) is a file",
                    "set TUNEGGUF_CACHE")
    monkeypatch.setenv("TUNEGGUF_CACHE", str(blocker / "sub"))
    _one_line_error(lambda: resolve_model("tiny-llama3"), f"is under {blocker}, which is a file")
    report = doctor.run()
    assert not report.ok
    assert any("TUNEGGUF_CACHE" in problem for problem in report.problems)


# ---- #14 inspect of a file without rows -------------------------------------------------


@pytest.mark.parametrize("name, content, fragment", [
    ("header.csv", "text,label\n", "only a header line"),
    ("header.tsv", "text\tlabel\n", "only a header line"),
    ("empty.jsonl", "", "empty or has only blank lines"),
    ("blank.jsonl", "\n  \n\n", "empty or has only blank lines"),
    ("empty.json", "[]", "an empty list of records"),
])
def test_inspect_of_a_file_without_rows_fails_like_prepare(tmp_path, name, content, fragment):
    from tunegguf.cli.data import data_group

    path = tmp_path / name
    path.write_text(content)
    _one_line_error(lambda: inspect_files([str(path)], DataConfig()), f"{path}: no data rows", fragment)
    _one_line_error(lambda: prepare(DataConfig(train=str(path)), tmp_path / "out"), "no data rows", fragment)
    result = CliRunner().invoke(data_group, ["inspect", str(path)])
    assert result.exit_code == 2 and "no data rows" in result.output


# ---- #15 tiny-class warning only on imbalance ---------------------------------------------


def test_tiny_class_warning_needs_imbalance(tmp_path):
    from tunegguf.data.prepare import distribution_warnings

    assert distribution_warnings("test", Counter(negative=8, positive=8), 0.65) == []
    assert distribution_warnings("test", Counter(a=3, b=3, c=3), 0.65) == []
    skewed = distribution_warnings("train", Counter(big=95, small=5), 0.65)
    assert any("class 'small' is tiny (5 of 100 rows, 5.0%" in w for w in skewed)
    assert not any("'big' is tiny" in w for w in skewed)
    demo = prepare(DataConfig(max_eval_examples=16, max_train_examples=32), tmp_path / "demo")
    assert not [w for w in demo.warnings if "tiny" in w], demo.warnings


# ---- #16 YAML error line ------------------------------------------------------------------


@pytest.mark.parametrize("text, line", [
    ('model:\n  name: "tiny\n  max_seq_length: 512\nfinetune:\n  max_steps: 10\n', 2),  # unclosed quote
    ("finetune:\n  max_steps\n  seed: 3\n", 2),  # a key without its ':'
    ("data:\n  text_columns: [a, b\n  seed: 1\n", 2),  # unclosed [
    ("data:\n  train: x\n  - seed\n", 3),  # block errors already pointed right
])
def test_yaml_error_names_the_line_to_fix(tmp_path, text, line):
    from tunegguf.config.run import load_run_config

    path = tmp_path / "broken.yaml"
    path.write_text(text)
    _one_line_error(lambda: load_run_config(path), f"not valid YAML at line {line}:")


# ---- #6 a user's input file for predict -------------------------------------------------


@pytest.mark.parametrize("name, content, fragments", [
    ("tabs.csv", "text\tlabel\ngood one\t1\nbad, sadly\t0\n", ["tab-separated", "rename it to tabs.tsv"]),
    ("empty.csv", "", ["the file is empty"]),
    ("bad.jsonl", '{"text": "a"}\n{"text": "b",}\n', ["line 2 is not valid JSON"]),
    ("commas.csv", "text,label\ngood,1\ngood, really,1\n",
     ["line 3 has 3 comma-separated fields, the header has 2", "double quotes"]),
    ("shifted.csv", "text,label\nfine, thanks,1\nbad, sadly,0\n", ["line 2 has 3 comma-separated fields"]),
])
def test_load_rows_gives_the_data_stage_errors(tmp_path, name, content, fragments):
    from tunegguf.data import load_rows

    path = tmp_path / name
    path.write_text(content)
    _one_line_error(lambda: load_rows(path), name, *fragments)


def test_load_rows_reads_texts_and_checks_the_column(tmp_path):
    from tunegguf.data import load_rows

    path = tmp_path / "in.csv"
    path.write_text('id,review\n1,"good, really"\n2, fine \n')
    rows, texts = load_rows(path, "review")
    assert texts == ["good, really", "fine"] and rows[0] == {"id": "1", "review": "good, really"}
    _one_line_error(lambda: load_rows(path, "reviw"), "no column 'reviw'", "did you mean 'review'", "use --text-column")
    path.write_text("id,review\n1,good\n2,\n")
    _one_line_error(lambda: load_rows(path, "review"), "in.csv, row 2 (line 3): no text in column 'review'")
    _one_line_error(lambda: load_rows(tmp_path / "nope.csv"), "file not found", "did you mean 'in.csv'")


# ---- #1 a GGUF llama.cpp cannot load: a reported failure, and every report is written --------


def _unloadable_ggufs(tmp_path, whole=None):
    """Truncated (a copy of `whole`, or a small GGUF written here), empty and random files."""
    import random

    if whole is None:
        import gguf
        import numpy as np

        whole = tmp_path / "whole.gguf"
        writer = gguf.GGUFWriter(str(whole), "llama")
        writer.add_tensor("t", np.zeros((64, 64), dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    truncated, empty, noise = tmp_path / "model-f16.gguf", tmp_path / "empty.gguf", tmp_path / "random.gguf"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 3])
    empty.write_bytes(b"")
    noise.write_bytes(random.Random(0).randbytes(4096))
    return {"f16": truncated, "empty": empty, "random": noise}


def test_template_checks_on_unloadable_files_are_failed_checks_with_every_key(tmp_path):
    from tunegguf.data.example import Example
    from tunegguf.evaluate.template_checks import template_checks_for_run
    from tunegguf.prompts import PromptConfig

    files = _unloadable_ggufs(tmp_path)
    checks = template_checks_for_run(tmp_path / "no-hf-needed", files, {}, PromptConfig(), ["neg", "pos"],
                                     Example(id="a", text="good", label="pos"))
    assert checks["passed"] is False and checks["name"] == "f16"
    assert checks["diffs"] == {} and checks["renderings"] == {} and checks["token_ids"] == {}
    details = {c["detail"].split(":")[0]: c for c in checks["checks"]}
    assert set(details) == {"f16", "empty", "random"}
    assert all(c["name"] == "gguf_loads" and c["passed"] is False for c in details.values())
    assert "truncated: the tensors need" in details["f16"]["detail"]
    assert "it is empty" in details["empty"]["detail"]
    assert "no GGUF magic" in details["random"]["detail"]


def test_reports_are_complete_when_models_and_checks_could_not_run(tmp_path):
    import numpy as np

    from tunegguf.evaluate import EvaluateConfig, ModelSpec, evaluate_backends
    from tunegguf.evaluate.backends import ModelKind
    from tunegguf.evaluate.backends.fake import FakeBackend
    from tunegguf.data.example import Example
    from tunegguf.io import read_json

    labels = ["negative", "positive"]
    examples = [Example(id=f"r{i}", text=f"t{i}", label=labels[i % 2]) for i in range(8)]
    prompts = [f"Text: t{i}\nAnswer: " for i in range(8)]

    def logits(prompt):
        x = np.zeros(200)
        x[ord("p") if int(prompt.split()[1][1:]) % 2 else ord("n")] = 4.0
        return x

    def fake(name, **kw):
        return lambda: FakeBackend(name, logits_for=logits, answer_for=lambda p: ("positive", True), **kw)

    def unloadable():
        raise TuneGGUFError("llama.cpp cannot load T.gguf: truncated: the tensors need 9 bytes, the file has 3")

    specs = [ModelSpec("hf+adapter", ModelKind.HF_ADAPTER, unloadable), ModelSpec("hf", ModelKind.HF, fake("hf")),
             ModelSpec("T", ModelKind.GGUF, unloadable), ModelSpec("half", ModelKind.GGUF, fake("half", fail_on="generate")),
             ModelSpec("Q8_0", ModelKind.GGUF, fake("Q8_0"))]
    unchecked = {"gguf": "T.gguf", "modelfile": None, "renderings": {}, "diffs": {}, "token_ids": {}, "name": "T",
                 "checks": [{"name": "gguf_loads", "passed": False, "detail": "T: truncated"}], "passed": False}
    for templates in (unchecked, {"gguf": "T.gguf", "error": "ValueError: bad", "passed": None, "checks": []}):
        out = tmp_path / f"eval-{templates['passed']}"
        result = evaluate_backends(EvaluateConfig(bootstrap=20, plots=True), examples=examples, prompts=prompts,
                                   labels=labels, words=labels, models=specs, out_dir=out,
                                   diagnostics={"templates": templates, "weight_parity": {"T": None}})
        assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
            "predictions.jsonl", "report.html", "report.json", "report.md"]
        assert result.verdicts["T"]["reasons"][0].startswith("could not run: llama.cpp cannot load T.gguf")
        assert result.verdicts["half"]["reasons"][0] == "could not run: fake backend half failed in generate"
        assert read_json(result.report_json)["models"]["Q8_0"]["status"] == "ok"
        for text in (result.report_md.read_text(), result.report_html.read_text()):
            assert "could not run: llama.cpp cannot load T.gguf" in text
            assert ("T: truncated" if templates["passed"] is False else "ValueError: bad") in text


@pytest.mark.slow
def test_evaluate_with_an_unloadable_gguf_listed_first_writes_every_report(tmp_path, tiny_llama3_dir,
                                                                            tiny_llama3_f16_gguf):
    from tunegguf.cli.evaluate import evaluate_command

    files = _unloadable_ggufs(tmp_path, whole=tiny_llama3_f16_gguf)
    data = _jsonl(tmp_path / "test.jsonl", [{"id": f"r{i}", "text": f"review {i}", "label": ["neg", "pos"][i % 2]}
                                            for i in range(4)])
    args = ["--hf", str(tiny_llama3_dir), "--data", data, "--labels", "neg,pos", "--out", str(tmp_path / "out"),
            "--set", "evaluate.modes=[labels]", "--set", "evaluate.bootstrap=0", "--set", "evaluate.plots=false"]
    args += [f"--gguf={name}={path}" for name, path in files.items()] + [f"--gguf=good={tiny_llama3_f16_gguf}"]
    result = CliRunner().invoke(evaluate_command, args)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert (tmp_path / "out" / "report.html").is_file() and (tmp_path / "out" / "report.md").is_file()
    assert "f16: parity fails: could not run: llama.cpp cannot load" in result.output
    assert "truncated: the tensors need" in report["verdicts"]["f16"]["summary"]
    assert report["models"]["good"]["status"] == "ok"
    # The truncated f16 is a failed check; the checks fell back to the other unquantized file.
    checks = report["template_checks"]
    assert checks["name"] == "good" and checks["renderings"]
    assert [c["detail"].split(":")[0] for c in checks["checks"] if c["name"] == "gguf_loads"] == ["f16"]


# ---- #5 a server that answers something unexpected -------------------------------------------

HTML_500 = b"""<!DOCTYPE html>
<html>
<head><title>500 Internal Server Error</title>
<style>body { font-family: sans-serif; }
h1 { color: red; }</style></head>
<body>
<h1>Internal Server Error</h1>
<p>The server encountered an internal error
and was unable to complete your request.</p>
</body>
</html>
"""
MODELS = json.dumps({"data": [{"id": "m", "meta": {"n_vocab": 300}}]}).encode()


def TOKENS(request: bytes) -> tuple[int, bytes]:  # noqa: N802 (a route, like the constants beside it)
    return 200, json.dumps({"tokens": [ord(ch) % 300 for ch in json.loads(request)["content"]]}).encode()


@pytest.fixture
def bad_server():
    """A tiny HTTP server on 127.0.0.1 answering each path from `routes` (path -> (status, body),
    or a function of the request body giving them); it stops with the test, and a request it
    was not told about gets a 404."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    routes: dict[str, tuple[int, bytes]] = {}

    class Handler(BaseHTTPRequestHandler):
        timeout = 5

        def _answer(self):
            request = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            answer = routes.get(self.path, (404, b'{"detail": "Not Found"}'))
            status, body = answer(request) if callable(answer) else answer
            self.send_response(status)
            self.send_header("Content-Type", "text/html" if body.lstrip().startswith(b"<") else "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", routes
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.mark.parametrize("models, fragments", [
    ((200, b"<html><body>Welcome to nginx!</body></html>"), ["/v1/models: HTTP 200, but the body is not JSON",
                                                          "Welcome to nginx!"]),
    ((200, b"[1, 2, 3]"), ["/v1/models: HTTP 200, but the reply is not in the expected shape: [1, 2, 3]"]),
    ((200, b'{"data": "none"}'), ["/v1/models: HTTP 200, but the reply is not in the expected shape"]),
    ((500, HTML_500), ["/v1/models: HTTP 500", "500 Internal Server Error Internal Server Error The server"]),
    ((200, b""), ["HTTP 200, but the body is not JSON: (empty body)"]),
], ids=["html-200", "list", "data-not-a-list", "html-500", "empty"])
def test_server_with_an_unexpected_answer_at_start_is_one_line(bad_server, models, fragments):
    from tunegguf.evaluate.backends.server import ServerBackend

    url, routes = bad_server
    routes["/v1/models"] = models
    message = _one_line_error(lambda: ServerBackend(url, timeout=5), url, *fragments)
    assert "font-family" not in message and len(message) < 300, message


@pytest.mark.parametrize("route, answer, verb, fragment", [
    ("/v1/completions", (200, b"not json at all"), "next_token_logprobs", "/v1/completions: HTTP 200, but the body is not JSON"),
    ("/v1/completions", (200, b'{"choices": {"text": "x"}}'), "generate", "/v1/completions: HTTP 200, but the reply is not"),
    ("/v1/completions", (200, b'{"choices": [{"text": 3}]}'), "generate", "the choice's text is not a string"),
    ("/v1/completions", (200, b'{"choices": [{"logprobs": {"top_logprobs": [["a"]]}}]}'), "next_token_logprobs",
     "/v1/completions: the log-probs, but the reply is not in the expected shape"),
    ("/v1/completions", (200, b'{"choices": [{"logprobs": {"content": [{"top_logprobs": [{"id": "x", "logprob": 0}]}]}}]}'),
     "next_token_logprobs", "the log-probs, but the reply is not in the expected shape"),
    ("/v1/completions", (502, HTML_500), "generate", "/v1/completions: HTTP 502"),
    ("/tokenize", (200, b'{"tokens": "1 2 3"}'), "tokenize", "/tokenize: HTTP 200, but the reply is not in the expected shape"),
    ("/tokenize", (200, b"<html>"), "tokenize", "/tokenize: HTTP 200, but the body is not JSON"),
], ids=["not-json", "choices-not-a-list", "text-not-a-string", "top-logprobs-not-a-dict", "id-not-a-number",
        "html-502", "tokens-not-a-list", "tokenize-not-json"])
def test_server_with_an_unexpected_reply_is_one_line(bad_server, route, answer, verb, fragment):
    from tunegguf.evaluate.backends.server import ServerBackend

    url, routes = bad_server
    routes.update({"/v1/models": (200, MODELS), "/tokenize": TOKENS, route: answer})
    backend = ServerBackend(url, timeout=5)
    call = {"tokenize": lambda: backend.tokenize(["hello"]),
            "next_token_logprobs": lambda: backend.next_token_logprobs(["hello"]),
            "generate": lambda: backend.generate(["hello"], 4)}[verb]
    message = _one_line_error(call, url, fragment)
    assert "font-family" not in message and len(message) < 300, message


def test_a_server_that_cannot_run_leaves_the_other_reports_complete(bad_server, tmp_path):
    import numpy as np

    from tunegguf.data.example import Example
    from tunegguf.evaluate import EvaluateConfig, ModelSpec, evaluate_backends
    from tunegguf.evaluate.backends import BackendSpec, ModelKind
    from tunegguf.evaluate.backends.fake import FakeBackend

    url, routes = bad_server
    routes.update({"/v1/models": (200, MODELS), "/tokenize": TOKENS, "/v1/completions": (500, HTML_500)})
    labels = ["negative", "positive"]
    examples = [Example(id=f"r{i}", text=f"t{i}", label=labels[i % 2]) for i in range(6)]
    prompts = [f"Text: t{i}\nAnswer: " for i in range(6)]

    def fake(name):
        return lambda: FakeBackend(name, logits_for=lambda p: np.arange(300.0) % 7, answer_for=lambda p: ("negative", True))

    server = ModelSpec.of(BackendSpec(ModelKind.GGUF, "deployed", url=url, vocab_size=300), options=None)
    specs = [ModelSpec("hf", ModelKind.HF, fake("hf")), server, ModelSpec("Q8_0", ModelKind.GGUF, fake("Q8_0"))]
    result = evaluate_backends(EvaluateConfig(bootstrap=0, plots=False), examples=examples, prompts=prompts,
                               labels=labels, words=labels, models=specs, out_dir=tmp_path / "eval")
    reason = result.verdicts["deployed"]["reasons"][0]
    assert reason.startswith(f"could not run: {url}/v1/completions: HTTP 500") and "\n" not in reason, reason
    assert "Q8_0" in result.metrics and result.metrics["Q8_0"]["labels"]["n"] == 6
    assert "could not run" in result.report_md.read_text() and "could not run" in result.report_html.read_text()


# ---- #16 a directory where a file is wanted, or the reverse (evaluate) ----------------------


@pytest.mark.parametrize("flag, make, fragments", [
    ("--gguf", "dir", ["GGUF file for 'T' is a directory, not a file:", "--gguf-dir"]),
    ("--gguf", "missing", ["GGUF file for 'T' not found:", "(did you mean 'model.gguf'?)"]),
    ("--gguf-dir", "file", ["--gguf-dir is a file, not a directory:", "give --gguf NAME="]),
    ("--adapter", "file", ["--adapter is a file, not a directory:", "adapter_config.json"]),
    ("--adapter", "missing", ["--adapter not found:"]),
    ("--data", "dir", ["--data is a directory, not a file:", "give the split to score"]),
    ("--config", "dir", ["config file is a directory, not a file:"]),
])
def test_evaluate_says_a_path_is_the_wrong_kind_in_one_line(tmp_path, flag, make, fragments):
    from tunegguf.cli.evaluate import evaluate_command

    data = _jsonl(tmp_path / "test.jsonl", [{"id": "a", "text": "good", "label": "pos"}])
    (tmp_path / "exported").mkdir()
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    target = {"dir": tmp_path / "exported", "file": tmp_path / "model.gguf", "missing": tmp_path / "modle.gguf"}[make]
    value = f"T={target}/" if flag == "--gguf" and make == "dir" else (f"T={target}" if flag == "--gguf" else str(target))
    args = ["--labels", "neg,pos", "--out", str(tmp_path / "out"), flag, value]
    result = CliRunner().invoke(evaluate_command, (["--data", data] if flag != "--data" else []) + args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if not line.startswith("note:")]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_adapter_dir_that_is_a_file(tmp_path):
    from tunegguf.models.adapter import require_adapter_dir

    (tmp_path / "adapter.safetensors").write_bytes(b"")
    _one_line_error(lambda: require_adapter_dir(tmp_path / "adapter.safetensors"),
                    "LoRA adapter directory is a file, not a directory", "adapter_config.json")
    _one_line_error(lambda: require_adapter_dir(tmp_path / "nope"), "LoRA adapter directory not found")


def test_export_commands_say_a_path_is_the_wrong_kind(tmp_path):
    """The same class outside evaluate: `export verify DIR`, an imatrix that is a directory."""
    from tunegguf.cli.export import export_group
    from tunegguf.export.imatrix import read_imatrix

    result = CliRunner().invoke(export_group, ["verify", str(tmp_path)])
    assert result.exit_code == 2 and result.output.strip().splitlines() == [
        f"error: {tmp_path} is a directory, not a GGUF file; name one .gguf file in it "
        "(`tunegguf evaluate --gguf-dir` takes a whole export directory)"]
    _one_line_error(lambda: read_imatrix(tmp_path), "is a directory, not a file")


def test_export_run_with_an_adapter_that_is_a_file(tmp_path):
    from tunegguf.export import ExportConfig, run

    (tmp_path / "adapter.safetensors").write_bytes(b"")
    _one_line_error(lambda: run(ExportConfig(quants=["Q8_0"]), base_model="tiny-llama3",
                                adapter_dir=tmp_path / "adapter.safetensors", out_dir=tmp_path / "out"),
                    "LoRA adapter directory is a file, not a directory", "adapter.safetensors", "adapter_config.json")


# ---- #7 over-long rows in evaluate and predict: one limit, counted before any model runs -----

LONG_TEXT = " ".join(f"word{i}" for i in range(3000))  # about 8,000 Llama 3 tokens
MIDDLE_TEXT = " ".join(f"word{i}" for i in range(1000))  # about 2,700: over 2048, inside 4096


def _recording_backends(monkeypatch, hf_dir):
    """evaluate.run's backends replaced by fakes (the HF tokenizer's ids) that record every prompt they are fed."""
    import numpy as np
    from transformers import AutoTokenizer

    from tunegguf.evaluate import result
    from tunegguf.evaluate.backends.fake import FakeBackend

    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    fed: dict[str, list[str]] = {}

    def open_backend(spec, options):
        def logits(prompt):
            fed.setdefault(spec.name, []).append(prompt)
            return np.arange(len(tokenizer), dtype=float) % 11
        return FakeBackend(spec.name, logits_for=logits, answer_for=lambda p: ("neg", True),
                           tokenize_for=lambda text: tokenizer(text, add_special_tokens=False)["input_ids"])

    # ModelSpec.of (evaluate/result.py) opens every model the runner scores.
    monkeypatch.setattr(result, "open_backend", open_backend)
    return fed


def _long_row_examples():
    from tunegguf.data.example import Example

    examples = [Example(id=f"r{i}", text=f"review {i} was fine", label=["neg", "pos"][i % 2]) for i in range(6)]
    examples[2] = Example(id="r2", text=LONG_TEXT, label="neg")
    return examples


def _run_with_long_row(tmp_path, tiny_llama3_dir, **config):
    from tunegguf.evaluate import EvaluateConfig, run
    from tunegguf.prompts import PromptConfig

    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    cfg = EvaluateConfig(bootstrap=0, plots=False, template_checks=False, **config)
    return run(cfg, prompt=PromptConfig(), examples=_long_row_examples(), labels=["neg", "pos"],
               hf_model=tiny_llama3_dir, gguf_files={"Q8_0": tmp_path / "model.gguf"}, out_dir=tmp_path / "eval")


def test_overlong_row_is_dropped_for_every_model_before_any_runs(tmp_path, monkeypatch, tiny_llama3_dir):
    fed = _recording_backends(monkeypatch, tiny_llama3_dir)
    result = _run_with_long_row(tmp_path, tiny_llama3_dir)
    assert set(fed) == {"hf", "Q8_0"}
    assert all(LONG_TEXT not in prompt for prompts in fed.values() for prompt in prompts)
    report = json.loads(result.report_json.read_text())
    assert report["n_examples"] == 5 and report["models"]["Q8_0"]["status"] == "ok"
    dropped = report["too_long"]["dropped"]
    assert [(d["id"], d["row"]) for d in dropped] == [("r2", 3)] and dropped[0]["tokens"] > 2040
    warning = "1 of 6 rows are over 2,040 tokens as prompted (evaluate.n_ctx=2048 less evaluate.max_new_tokens=8)"
    assert any(w.startswith(warning) and "ids 'r2'" in w for w in report["warnings"]), report["warnings"]
    assert warning in result.report_md.read_text() and warning in result.report_html.read_text()


def test_overlong_row_error_and_truncate_in_evaluate(tmp_path, monkeypatch, tiny_llama3_dir):
    fed = _recording_backends(monkeypatch, tiny_llama3_dir)
    _one_line_error(lambda: _run_with_long_row(tmp_path, tiny_llama3_dir, too_long="error", modes=["labels"]),
                    "row 3 (id 'r2'):", "tokens as prompted, over the limit of 2,048 (evaluate.n_ctx=2048)",
                    "raise evaluate.n_ctx", "evaluate.too_long: drop or truncate")
    assert fed == {}  # refused before any model ran
    result = _run_with_long_row(tmp_path, tiny_llama3_dir, too_long="truncate", n_ctx=512)
    report = json.loads(result.report_json.read_text())
    assert report["n_examples"] == 6 and [t["id"] for t in report["too_long"]["truncated"]] == ["r2"]
    cut = [p for p in fed["hf"] if "word0 word1" in p]
    assert len(cut) == 1 and "word2999" not in cut[0]
    assert cut == [p for p in fed["Q8_0"] if "word0 word1" in p]  # the same cut row for every model


def test_every_backend_holds_its_own_token_ids_to_the_limit(tmp_path):
    """A GGUF whose tokenizer counts more tokens than HF's: that model could not run, naming the row."""
    import numpy as np

    from tunegguf.data.example import Example
    from tunegguf.evaluate import EvaluateConfig, ModelSpec, evaluate_backends
    from tunegguf.evaluate.backends import ModelKind
    from tunegguf.evaluate.backends.fake import FakeBackend

    examples = [Example(id=f"r{i}", text="x" * (10 if i != 1 else 40), label=["neg", "pos"][i % 2]) for i in range(4)]
    prompts = [f"T: {e.text}\nA: " for e in examples]

    def fake(name, per_char):
        return lambda: FakeBackend(name, logits_for=lambda p: np.arange(300.0) % 5,
                                   tokenize_for=lambda text: [t for c in text for t in [ord(c) % 300] * per_char])

    specs = [ModelSpec("hf", ModelKind.HF, fake("hf", 1)), ModelSpec("wide", ModelKind.GGUF, fake("wide", 2))]
    result = evaluate_backends(EvaluateConfig(bootstrap=0, plots=False, modes=["labels"], n_ctx=64), examples=examples,
                               prompts=prompts, labels=["neg", "pos"], words=["neg", "pos"], models=specs,
                               out_dir=tmp_path / "eval")
    assert result.verdicts["wide"]["reasons"][0] == (
        "could not run: row 2 (id 'r1'): 94 tokens as prompted, over the limit of 64 (evaluate.n_ctx=64); "
        "raise evaluate.n_ctx or shorten the text")
    assert result.metrics["hf"]["labels"]["n"] == 4


@pytest.mark.slow
def test_predict_honours_the_runs_n_ctx_and_names_the_text(tmp_path, tiny_llama3_f16_gguf, tiny_llama3_dir):
    from tunegguf.pipeline.predict import Predictor, predict, predictor_from_run
    from tunegguf.prompts import PromptConfig

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("evaluate:\n  n_ctx: 4096\n")
    (run_dir / "stages.json").write_text(json.dumps({
        "data": {"result": {"labels": ["neg", "pos"]}},
        "export": {"result": {"files": {"f16": str(tiny_llama3_f16_gguf)}}}}))
    predictor = predictor_from_run(run_dir)
    assert predictor.n_ctx == 4096
    # Over the 2048 predict used to run with, inside the run's 4096.
    assert [p.label in ("neg", "pos") for p in predict(predictor, ["short one", MIDDLE_TEXT])] == [True, True]
    for model in (tiny_llama3_f16_gguf, tiny_llama3_dir):
        small = Predictor(model=model, prompt=PromptConfig(), labels=["neg", "pos"], n_ctx=512,
                          config_path=run_dir / "config.yaml")
        _one_line_error(lambda: predict(small, ["short one", MIDDLE_TEXT]), "text 2:",
                        "over the limit of 512 (evaluate.n_ctx=512)", f"raise evaluate.n_ctx in {run_dir / 'config.yaml'}")
