"""tiny-llama3 covers the Llama 3 multi-turn path of the answers evaluation end to end:
multi-turn chat rows rendered once, the same ids in Transformers and llama.cpp (one BOS,
no double BOS from the template), reference answers ending at <|eot_id|>, and an f16 GGUF
whose teacher-forced distributions equal the HF model's.

The weights are random, so only what does not depend on what the model says is asserted:
greedy answers of a random model are near-ties, and whether they match or stop is chance.

(That llama3 training segments put <|eot_id|> in every trained segment of a 3-turn
conversation is tests/test_prompts_chat.py::test_llama3_multi_turn_segments_exact.)
"""

from __future__ import annotations

import json

import pytest

from tunegguf.data.example import Example

SYSTEM = "You answer in as few words as you can."
EXAMPLES = [
    Example(id="one-turn", messages=[
        {"role": "user", "content": "Reverse the word 'cat'."},
        {"role": "assistant", "content": "tac"},
    ]),
    Example(id="with-system", messages=[
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "What is 3 plus 4?"},
        {"role": "assistant", "content": "7"},
    ]),
    Example(id="two-turns", messages=[
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Reverse the word 'planet'."},
        {"role": "assistant", "content": "tenalp"},
        {"role": "user", "content": "Now reverse it again."},
        {"role": "assistant", "content": "planet"},
    ]),
    Example(id="two-turns-no-system", messages=[
        {"role": "user", "content": "Sort these numbers:\n3, 1, 2"},
        {"role": "assistant", "content": "1, 2, 3"},
        {"role": "user", "content": "And in reverse order?"},
        {"role": "assistant", "content": "3, 2, 1"},
    ]),
    Example(id="three-turns", messages=[
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Convert 2 km to metres."},
        {"role": "assistant", "content": "2000 m"},
        {"role": "user", "content": "And 3 km?"},
        {"role": "assistant", "content": "3000 m"},
        {"role": "user", "content": "Which is longer, 2 km or 3 km?"},
        {"role": "assistant", "content": "3 km is longer than 2 km."},
    ]),
    Example(id="extract", messages=[
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Name the city in: 'Ada flew from Oslo to Rome on Monday.' Give the first one."},
        {"role": "assistant", "content": "Oslo"},
        {"role": "user", "content": "And the day?"},
        {"role": "assistant", "content": "Monday"},
    ]),
]
MULTI_TURN = [e for e in EXAMPLES if sum(m["role"] == "assistant" for m in e.messages) > 1]
BOS, EOT = "<|begin_of_text|>", "<|eot_id|>"
# Measured on the 2-layer model (f16 GGUF vs the bf16 checkpoint run by Transformers, 27
# answer tokens, both formats): mean KL 3.5e-7 nats per answer token, max 1.4e-6, same top
# token everywhere. The bounds leave ~1000x margin; a conversion or template bug (a shifted
# position, a dropped or doubled BOS, a wrong RoPE scaling) moves the logits by far more.
MAX_MEAN_KL = 1e-3
MAX_KL = 1e-2


@pytest.fixture(scope="module")
def llama3_tokenizer(tiny_llama3_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_llama3_dir))


def _evaluate(fmt, tiny_llama3_dir, tiny_llama3_f16_gguf, out_dir):
    from tunegguf.evaluate.config import AnswersConfig, EvaluateConfig
    from tunegguf.evaluate.runner import run
    from tunegguf.prompts import PromptConfig

    config = EvaluateConfig(answers=AnswersConfig(max_new_tokens=8), bootstrap=50, plots=False,
                            template_checks=True, n_threads=1, n_ctx=512)
    result = run(config, prompt=PromptConfig(format=fmt), examples=EXAMPLES, labels=[], hf_model=tiny_llama3_dir,
                 gguf_files={"F16": tiny_llama3_f16_gguf}, out_dir=out_dir)
    report = json.loads(result.report_json.read_text())
    predictions = [json.loads(line) for line in result.predictions.read_text().splitlines() if line.strip()]
    return result, report, predictions


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["llama3", "chat_template"])
def test_tiny_llama3_covers_the_llama3_multi_turn_path(fmt, tiny_llama3_dir, tiny_llama3_f16_gguf,
                                                      llama3_tokenizer, tmp_path):
    from tunegguf.prompts import PromptConfig, PromptRenderer, TemplateTokens

    result, report, predictions = _evaluate(fmt, tiny_llama3_dir, tiny_llama3_f16_gguf, tmp_path / "report")
    assert report["task"] == "answers"
    assert report["n_examples"] == len(EXAMPLES) and not report["too_long"]["dropped"]

    # The prompts every model saw: the rendered conversation before the last assistant
    # turn, earlier assistant turns included, one BOS (the template writes it; no backend
    # may add another).
    tok = llama3_tokenizer
    # chat_template is a second path only because the checkpoint ships Meta's template.
    assert isinstance(tok.chat_template, str) and EOT in tok.chat_template
    renderer = PromptRenderer(PromptConfig(format=fmt), TemplateTokens.from_hf_tokenizer(tok))
    rows = {row["id"]: row for row in report["examples"]}
    assert set(rows) == {e.id for e in EXAMPLES}
    for example in EXAMPLES:
        prompt = rows[example.id]["prompt"]
        assert prompt == renderer.render(example).prompt
        assert prompt.count(BOS) == 1 and prompt.startswith(BOS)
        assert prompt.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
        assert rows[example.id]["reference"] == example.messages[-1]["content"]
    for example in MULTI_TURN:
        earlier = [m["content"] for m in example.messages[:-1] if m["role"] == "assistant"]
        for content in earlier:
            assert f"<|start_header_id|>assistant<|end_header_id|>\n\n{content}{EOT}" in rows[example.id]["prompt"]

    # The reference answer's ids, cut as the evaluator cuts them, end at <|eot_id|> (once).
    eot = tok.convert_tokens_to_ids(EOT)
    answer_ids = {}
    for example in EXAMPLES:
        rendered = renderer.render(example)
        prompt_ids = tok(rendered.prompt, add_special_tokens=False)["input_ids"]
        full = tok(rendered.prompt + rendered.target, add_special_tokens=False)["input_ids"]
        assert full[: len(prompt_ids)] == prompt_ids
        answer_ids[example.id] = full[len(prompt_ids):]
        assert answer_ids[example.id][-1] == eot and answer_ids[example.id].count(eot) == 1
        assert prompt_ids.count(tok.bos_token_id) == 1 and prompt_ids[0] == tok.bos_token_id
    # ...and those are the ids each model was teacher-forced on.
    assert report["n_answer_tokens"] == sum(map(len, answer_ids.values()))
    for row in predictions:
        assert row["n_answer_tokens"] == len(answer_ids[row["id"]]), row
    assert {row["model"] for row in predictions} == {"hf", "F16"}

    # llama.cpp tokenizes every multi-turn prompt text to the HF tokenizer's ids.
    assert report["models"]["F16"]["status"] == "ok", report["models"]["F16"]["error"]
    block = report["answers"]["F16"]
    assert block["error"] is None
    assert block["tokenizer"]["n"] == len(EXAMPLES)
    assert block["tokenizer"]["mismatched"] == 0, block["tokenizer"]["first_mismatch"]

    # Teacher-forced on the same ids, the f16 file's distributions are the HF model's.
    kl = block["teacher_forced"]["kl"]
    print(f"\n{fmt}: teacher-forced KL(HF||F16) mean {kl['mean']:.3g} p99 {kl['p99']:.3g} max {kl['max']:.3g} "
          f"same-top {block['teacher_forced']['same_top']['rate']:.3f} over {report['n_answer_tokens']} tokens; "
          f"timing {json.dumps({n: m['timing'] for n, m in report['models'].items()})}")
    assert 0.0 <= kl["mean"] < MAX_MEAN_KL and kl["max"] < MAX_KL
    assert kl["mean_ci"][0] <= kl["mean"] <= kl["mean_ci"][1]
    ratio = block["teacher_forced"]["perplexity"]["ratio"]
    assert abs(ratio - 1.0) < 1e-2

    # The template checks render a multi-turn conversation everywhere; no runtime doubles BOS.
    checks = report["template_checks"]
    assert checks is not None and checks.get("error") is None
    by_name = {c["name"]: c for c in checks["checks"]}
    print("\n".join(f"  {c['name']}: {c['passed']} ({c['detail']})" for c in checks["checks"]))
    # The ids training and the evaluation fed, and llama-cpp-python's chat path, hold one BOS.
    for name in ("bos_training_prompt_hf_ids", "bos_llama_cpp_python_chat"):
        assert by_name[name]["passed"], by_name[name]
    # The same text sent as a raw prompt (llama-server /completion, llama-cli -p) gets a
    # second BOS: the Llama 3 template writes one and the file's add_bos_token is true.
    # The check must say so; the evaluation above is unaffected (it feeds ids, not text).
    raw = by_name["bos_raw_prompt_add_bos_from_metadata"]
    assert raw["passed"] is False and "double BOS" in raw["detail"], raw
    multi = [c for name, c in by_name.items() if name.startswith("multi_turn_")]
    assert multi and all(c["passed"] for c in multi), multi
    assert by_name["stop_gguf_eog"]["passed"]
    renderings = checks["multi_turn_renderings"]
    assert len(renderings) >= 3 and all(text.count(BOS) == 1 for text in renderings.values()), renderings

    # A verdict with its reasons; with the tokens and the distributions equal, only what a
    # random model's near-tie greedy answers do may fail it. (Measured: parity holds, the 6
    # greedy answers identical, none stopping within 8 tokens; not asserted, being chance.)
    verdict = report["verdicts"]["F16"]
    assert verdict["holds"] == (not verdict["reasons"])
    assert verdict["summary"].startswith("parity holds" if verdict["holds"] else "parity fails: ")
    for reason in verdict["reasons"]:
        assert reason.startswith(("greedy answers match", "stops like HF")), reason

    md, html = result.report_md.read_text(), result.report_html.read_text()
    for section in ("## Verdicts", "## Parity of the answers", "## KL by position in the answer"):
        assert section in md
    assert md.startswith("# Parity report: Transformers vs GGUF (answers)")
    for section in ("Parity of the answers", "Answers side by side"):
        assert section in html
    assert 'data-id="three-turns"' in html
