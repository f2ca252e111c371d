"""Ollama Modelfiles: Go templates equivalent to the ChatML / Llama 3 chat templates."""

from __future__ import annotations

from tunegguf.export.modelfile import go_template, modelfile_text
from tunegguf.models.tiny_llama3 import LLAMA3_CHAT_TEMPLATE
from tunegguf.prompts.templates import CHATML_TEMPLATE, render_chat_template

SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA_SPECIALS = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}
CHATML_SPECIALS = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}


def _hf(template, specials, system, user):
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    return render_chat_template(template, messages, add_generation_prompt=True, special_tokens=specials)


def test_smollm2_chatml_keeps_its_default_system_prompt():
    go = go_template(SMOLLM2_TEMPLATE, CHATML_SPECIALS, gguf_adds_bos=False)
    assert go is not None and go.format.name == "chatml"
    assert "named SmolLM" in go.default_system_block
    for system in (None, "Classify sentiment."):
        assert go.render(system, "Review: great") == _hf(SMOLLM2_TEMPLATE, CHATML_SPECIALS, system, "Review: great")
    text = go.text()
    assert "{{ .System }}" in text and '{{ if eq .Role "user" }}' in text and "{{ .Content }}" in text


def test_llama3_template_leaves_bos_to_llama_cpp_when_the_gguf_adds_it():
    go = go_template(LLAMA3_CHAT_TEMPLATE, LLAMA_SPECIALS, gguf_adds_bos=True)
    assert go is not None and go.format.name == "llama3" and go.leading == ""
    hf = _hf(LLAMA3_CHAT_TEMPLATE, LLAMA_SPECIALS, "Be brief.", "hi")
    assert "<|begin_of_text|>" + go.render("Be brief.", "hi") == hf
    written_bos = go_template(LLAMA3_CHAT_TEMPLATE, LLAMA_SPECIALS, gguf_adds_bos=False)
    assert written_bos.leading == "<|begin_of_text|>" and written_bos.render(None, "hi") == _hf(
        LLAMA3_CHAT_TEMPLATE, LLAMA_SPECIALS, None, "hi")


def test_plain_chatml_and_unknown_templates():
    assert go_template(CHATML_TEMPLATE, CHATML_SPECIALS, gguf_adds_bos=False).default_system_block == ""
    alpaca_like = "{% for m in messages %}### {{ m['role'] }}:\n{{ m['content'] }}\n{% endfor %}### assistant:\n"
    assert go_template(alpaca_like, CHATML_SPECIALS, gguf_adds_bos=False) is None
    text = modelfile_text("model-Q8_0.gguf", chat_template=alpaca_like, specials=CHATML_SPECIALS, gguf_adds_bos=False,
                          stop_tokens=["</s>"], system_prompt=None, classifier=False)
    assert not any(line.startswith("TEMPLATE") for line in text.splitlines())
    assert "# NOTE: the chat template is neither ChatML nor Llama 3" in text
    assert "temperature" not in text


def test_modelfile_lines_for_a_classifier():
    text = modelfile_text("model-Q4_K_M.gguf", chat_template=LLAMA3_CHAT_TEMPLATE, specials=LLAMA_SPECIALS,
                          gguf_adds_bos=True, stop_tokens=["<|eot_id|>", "<|end_of_text|>", "<|eot_id|>"],
                          system_prompt="Classify sentiment.", classifier=True)
    lines = text.splitlines()
    assert "FROM ./model-Q4_K_M.gguf" in lines
    assert lines.count('PARAMETER stop "<|eot_id|>"') == 1 and 'PARAMETER stop "<|end_of_text|>"' in lines
    assert "PARAMETER temperature 0" in lines
    assert 'SYSTEM """Classify sentiment."""' in lines
    assert text.count('TEMPLATE """') == 1
