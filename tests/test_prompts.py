"""One renderer for training and both backends: exact text, exact ids, distinct label tokens."""

from __future__ import annotations

import pytest

from tunegguf.data.example import Example
from tunegguf.errors import TuneGGUFError
from tunegguf.prompts import PromptConfig, PromptRenderer, TemplateTokens, label_token_ids
from tunegguf.prompts.verbalizer import UNPARSED, parse_answer

CHATML_TOKENS = TemplateTokens(chat_template=None, bos_token="<|im_start|>", eos_token="<|im_end|>", add_bos=False)
LLAMA3_TOKENS = TemplateTokens(chat_template=None, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", add_bos=True)
LABELS = ["negative", "positive"]
EXAMPLE = Example(id="t-1", text="a gorgeous , witty film", label="positive")


def test_chatml_prompt_and_target_exact():
    config = PromptConfig(format="chatml", system_prompt="Classify sentiment.", instruction="Positive or negative?",
                          input_prefix="Review: ")
    rendered = PromptRenderer(config, CHATML_TOKENS, LABELS).render(EXAMPLE)
    assert rendered.prompt == (
        "<|im_start|>system\nClassify sentiment.<|im_end|>\n"
        "<|im_start|>user\nPositive or negative?\nReview: a gorgeous , witty film<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert rendered.target == "positive<|im_end|>"


def test_llama3_prompt_has_one_bos_and_eot_target():
    config = PromptConfig(format="llama3", instruction="Labels: {labels}.")
    rendered = PromptRenderer(config, LLAMA3_TOKENS, LABELS).render(EXAMPLE)
    assert rendered.prompt.startswith("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n")
    assert rendered.prompt.count("<|begin_of_text|>") == 1
    assert "Labels: negative, positive." in rendered.prompt
    assert rendered.prompt.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert rendered.target == "positive<|eot_id|>"


def test_alpaca_writes_bos_only_when_the_tokenizer_adds_it():
    config = PromptConfig(format="alpaca")
    with_bos = PromptRenderer(config, LLAMA3_TOKENS, LABELS).render(EXAMPLE)
    without = PromptRenderer(config, CHATML_TOKENS, LABELS).render(EXAMPLE)
    assert with_bos.prompt.startswith("<|begin_of_text|>Below is an instruction")
    assert without.prompt.startswith("Below is an instruction")
    assert with_bos.prompt.endswith("### Input:\nText: a gorgeous , witty film\n\n### Response:\n")
    assert with_bos.target == "positive<|eot_id|>"


def test_instruction_rows_and_inference_rows():
    renderer = PromptRenderer(PromptConfig(format="chatml"), CHATML_TOKENS)
    row = Example(id="i-1", instruction="Say hi.", output="hi")
    assert renderer.render(row).target == "hi<|im_end|>"
    unlabeled = Example(id="u-1", text="anything")
    assert PromptRenderer(PromptConfig(format="chatml"), CHATML_TOKENS, LABELS).render(unlabeled).target == ""


def test_messages_are_the_conversation_the_prompt_renders():
    from tunegguf.prompts.templates import CHATML_TEMPLATE, render_chat_template

    config = PromptConfig(format="chatml", system_prompt="Classify sentiment.", instruction="Positive or negative?",
                          input_prefix="Review: ")
    renderer = PromptRenderer(config, CHATML_TOKENS, LABELS)
    messages = renderer.messages(EXAMPLE)
    assert messages == [
        {"role": "system", "content": "Classify sentiment."},
        {"role": "user", "content": "Positive or negative?\nReview: a gorgeous , witty film"},
    ]
    assert renderer.messages(EXAMPLE, with_answer=True) == messages + [{"role": "assistant", "content": "positive"}]
    specials = CHATML_TOKENS.special_tokens()
    assert render_chat_template(CHATML_TEMPLATE, messages, add_generation_prompt=True,
                                special_tokens=specials) == renderer.render(EXAMPLE).prompt
    # No system prompt, an instruction row without input, an unlabelled row: no extra turns.
    plain = PromptRenderer(PromptConfig(format="chatml"), CHATML_TOKENS)
    assert plain.messages(Example(id="i-1", instruction="Say hi.", output="hi"), with_answer=True) == [
        {"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "hi"}]
    assert [m["role"] for m in plain.messages(Example(id="u-1", text="x"), with_answer=True)] == ["user"]


def test_verbalizers_and_bad_labels():
    config = PromptConfig(format="chatml", verbalizers={"positive": "good", "negative": "bad"})
    renderer = PromptRenderer(config, CHATML_TOKENS, LABELS)
    assert renderer.words == ["bad", "good"]
    assert renderer.render(EXAMPLE).target == "good<|im_end|>"
    with pytest.raises(TuneGGUFError, match="not one of"):
        renderer.render(Example(id="x-9", text="t", label="neutral"))
    with pytest.raises(TuneGGUFError, match="not in the data"):
        PromptRenderer(PromptConfig(verbalizers={"neutral": "meh"}, format="chatml"), CHATML_TOKENS, LABELS)
    with pytest.raises(TuneGGUFError, match="same word"):
        PromptRenderer(PromptConfig(verbalizers={"positive": "x", "negative": "x"}, format="chatml"), CHATML_TOKENS, LABELS)
    with pytest.raises(TuneGGUFError, match="no chat template"):
        PromptRenderer(PromptConfig(format="chat_template"), CHATML_TOKENS, LABELS)


def test_strict_answer_parser():
    assert parse_answer("positive", LABELS, LABELS) == "positive"
    assert parse_answer(" Positive.\n", LABELS, LABELS) == "positive"
    assert parse_answer("negative<|im_end|>junk", LABELS, LABELS, stop_tokens=["<|im_end|>"]) == "negative"
    assert parse_answer("The review is positive", LABELS, LABELS) == UNPARSED
    assert parse_answer("", LABELS, LABELS) == UNPARSED


@pytest.mark.parametrize("model_fixture", ["smollm2_dir", "tiny_llama3_dir"])
def test_model_chat_template_renders_like_transformers(model_fixture, request):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(request.getfixturevalue(model_fixture))
    tokens = TemplateTokens.from_hf_tokenizer(tokenizer)
    config = PromptConfig(format="chat_template", system_prompt="Be brief.")
    rendered = PromptRenderer(config, tokens, LABELS).render(EXAMPLE)
    user = config.instruction.replace("{labels}", "negative, positive") + "\nText: " + EXAMPLE.text
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": user}]
    expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered.prompt == expected
    full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": "positive"}], tokenize=False)
    assert (rendered.prompt + rendered.target) == full[: len(rendered.prompt + rendered.target)]
    assert rendered.target == "positive" + tokenizer.eos_token


@pytest.mark.slow
@pytest.mark.parametrize("model_fixture,gguf_fixture,fmt", [
    ("smollm2_dir", "smollm2_f16_gguf", "chat_template"),
    ("smollm2_dir", "smollm2_f16_gguf", "alpaca"),
    ("tiny_llama3_dir", "tiny_llama3_f16_gguf", "chat_template"),
    ("tiny_llama3_dir", "tiny_llama3_f16_gguf", "alpaca"),
])
def test_rendered_prompts_tokenize_identically_in_both_backends(model_fixture, gguf_fixture, fmt, request):
    """The same rendered text gives the same ids in Transformers and llama.cpp, incl. labels."""
    import llama_cpp
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(request.getfixturevalue(model_fixture))
    llm = llama_cpp.Llama(str(request.getfixturevalue(gguf_fixture)), vocab_only=True, verbose=False)
    renderer = PromptRenderer(PromptConfig(format=fmt), TemplateTokens.from_hf_tokenizer(tokenizer), LABELS)
    examples = [EXAMPLE, Example(id="t-2", text="Ünïcödé 😀 and 12345 digits", label="negative"),
                Example(id="t-3", text="  spaced\n\nlines\t", label="positive")]

    def hf_encode(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    def cpp_encode(text):
        return llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    for example in examples:
        rendered = renderer.render(example)
        for text in (rendered.prompt, rendered.prompt + rendered.target):
            assert hf_encode(text) == cpp_encode(text)
        ids = hf_encode(rendered.prompt)
        bos_id = tokenizer.bos_token_id
        if bos_id is not None and tokenizer.bos_token != "<|im_start|>":
            assert ids.count(bos_id) == 1 and ids[0] == bos_id  # exactly one BOS, first
        assert hf_encode(rendered.prompt + rendered.target)[-1] == tokenizer.eos_token_id
        assert label_token_ids(hf_encode, rendered.prompt, renderer.words) == label_token_ids(
            cpp_encode, rendered.prompt, renderer.words)


def test_label_collision_is_detected():
    def encode(text):  # a toy tokenizer: one id per character
        return [ord(c) for c in text]

    assert label_token_ids(encode, "A: ", ["yes", "no"]) == [ord("y"), ord("n")]
    with pytest.raises(TuneGGUFError, match="start with the same token"):
        label_token_ids(encode, "A: ", ["positive", "pos"])
