"""ServerBackend against a real llama-cpp-python server on 127.0.0.1 (slow; needs the server extra)."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tunegguf.errors import TuneGGUFError

SERVER_DEPS = ["fastapi", "uvicorn", "sse_starlette", "starlette_context", "pydantic_settings"]
MISSING = [m for m in SERVER_DEPS if importlib.util.find_spec(m) is None]


def test_unreachable_server_is_a_one_line_error():
    from tunegguf.evaluate.backends.server import ServerBackend

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TuneGGUFError, match=f"cannot reach the server at http://127.0.0.1:{port}"):
        ServerBackend(f"http://127.0.0.1:{port}", timeout=2)


def test_top_k_rows_are_distributions():
    from tunegguf.evaluate.backends.server import ServerBackend

    backend = ServerBackend.__new__(ServerBackend)
    backend.vocab_size = 10
    row = backend._row({3: np.log(0.5), 7: np.log(0.3)})
    assert row[3] == pytest.approx(np.log(0.5)) and row[7] == pytest.approx(np.log(0.3))
    assert np.exp(row.astype(np.float64)).sum() == pytest.approx(1.0, abs=1e-6)
    assert row[0] == pytest.approx(np.log(0.2 / 8))


@pytest.fixture(scope="module")
def server_url(smollm2_f16_gguf):
    if MISSING:
        pytest.skip(f"llama-cpp-python server dependencies not installed: {', '.join(MISSING)}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(os.devnull, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_f16_gguf), "--host", "127.0.0.1",
         "--port", str(port), "--n_threads", "1", "--n_threads_batch", "1", "--n_ctx", "1024"],
        stdout=log, stderr=log,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        import urllib.request

        deadline = time.time() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the llama-cpp-python server exited with status {proc.returncode}")
            try:
                urllib.request.urlopen(url + "/v1/models", timeout=2).read()
                break
            except OSError:
                if time.time() > deadline:
                    pytest.fail("the llama-cpp-python server did not start within 60 s")
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.mark.slow
def test_server_scores_labels_like_the_in_process_backend(server_url, smollm2_dir, smollm2_f16_gguf):
    from transformers import AutoTokenizer

    from tunegguf.data.example import Example
    from tunegguf.evaluate.backends.llamacpp import LlamaCppBackend
    from tunegguf.evaluate.backends.server import ServerBackend
    from tunegguf.prompts.config import PromptConfig
    from tunegguf.prompts.renderer import PromptRenderer, TemplateTokens
    from tunegguf.prompts.verbalizer import label_token_ids

    labels = ["negative", "positive"]
    texts = ["One long string of cliches.", "A gorgeous, witty, seductive movie.", "Dull and lifeless.",
             "I loved every minute.", "The plot makes no sense.", "A triumph of acting.",
             "Boring, boring, boring.", "Warm and funny."]
    renderer = PromptRenderer(PromptConfig(system_prompt="Classify sentiment."),
                              TemplateTokens.from_hf_tokenizer(AutoTokenizer.from_pretrained(smollm2_dir)), labels)
    prompts = [renderer.render(Example(id=str(i), text=t, label=labels[i % 2])).prompt for i, t in enumerate(texts)]

    local = LlamaCppBackend(smollm2_f16_gguf, n_threads=1)
    try:
        local_ids = local.tokenize(prompts)
        label_ids = label_token_ids(lambda t: local.tokenize([t])[0], prompts[0], renderer.words)
        local_lp = local.next_token_logprobs(prompts)
        local_gen = local.generate(prompts[:2], 3)
        vocab = local.info["vocab_size"]
    finally:
        local.close()

    server = ServerBackend(server_url, name="server", timeout=120, top_k=20, vocab_size=vocab)
    assert server.tokenize(prompts) == local_ids
    lp = server.next_token_logprobs(prompts)
    assert lp.shape == (len(prompts), vocab)
    assert lp[:, label_ids].argmax(axis=1).tolist() == local_lp[:, label_ids].argmax(axis=1).tolist()
    # The label tokens are among the top 20 here, so their log-probs are the server's exact values.
    np.testing.assert_allclose(lp[:, label_ids], local_lp[:, label_ids], atol=2e-2)
    assert server.generate(prompts[:2], 3) == local_gen


@pytest.mark.slow
def test_evaluate_cli_scores_a_running_server_like_the_gguf(server_url, smollm2_dir, smollm2_f16_gguf, tmp_path):
    """`tunegguf evaluate --server NAME=URL`: the deployed server sits in the report beside the file."""
    import json

    from click.testing import CliRunner

    from tunegguf.cli.evaluate import evaluate_command
    from tunegguf.io import read_jsonl

    texts = ["One long string of cliches.", "A gorgeous, witty, seductive movie.", "Dull and lifeless.",
             "I loved every minute.", "The plot makes no sense.", "Warm and funny."]
    data = tmp_path / "split.jsonl"
    data.write_text("".join(json.dumps({"id": f"r{i}", "text": t, "label": ["negative", "positive"][i % 2]}) + "\n"
                            for i, t in enumerate(texts)))
    result = CliRunner().invoke(evaluate_command, [
        "--hf", str(smollm2_dir), "--gguf", f"f16={smollm2_f16_gguf}", "--server", f"deployed={server_url}",
        "--data", str(data), "--labels", "negative,positive", "--out", str(tmp_path / "out"),
        "--set", "evaluate.modes=[labels]", "--set", "evaluate.bootstrap=20", "--set", "evaluate.n_threads=1",
    ])
    assert result.exit_code == 0, result.output
    rows = read_jsonl(tmp_path / "out" / "predictions.jsonl")
    by_model = {m: [r["pred_labels"] for r in rows if r["model"] == m] for m in ("f16", "deployed")}
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert len(by_model["deployed"]) == len(texts), report["models"]["deployed"].get("error")
    assert by_model["deployed"] == by_model["f16"]
    bad = CliRunner().invoke(evaluate_command, ["--data", str(data), "--server", "nourl"])
    assert bad.exit_code == 2 and "expected NAME=URL" in bad.output
