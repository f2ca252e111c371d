"""Chat rows through the one renderer: prompts, training segments, and the exact loss mask."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunegguf.data.example import Example
from tunegguf.errors import TuneGGUFError
from tunegguf.finetune.rows import build_rows
from tunegguf.prompts import PromptConfig, PromptRenderer, Rendered, Segment, TemplateTokens

CHATML_TOKENS = TemplateTokens(chat_template=None, bos_token="<|im_start|>", eos_token="<|im_end|>")
LLAMA3_TOKENS = TemplateTokens(chat_template=None, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", add_bos=True)
# SmolLM2's own template: ChatML with a default system turn when the row has none.
SMOL_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are SmolLM<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SMOL_TOKENS = TemplateTokens(chat_template=SMOL_TEMPLATE, bos_token="<|im_start|>", eos_token="<|im_end|>")

THREE_TURNS = Example(id="train-7", messages=[
    {"role": "system", "content": "You answer in one word."},
    {"role": "user", "content": "Reverse the word 'planet'."},
    {"role": "assistant", "content": "tenalp"},
    {"role": "user", "content": "Now reverse it again."},
    {"role": "assistant", "content": "planet"},
    {"role": "user", "content": "What is 7 times 6?"},
    {"role": "assistant", "content": "42"},
])
ANSWERS = ["tenalp", "planet", "42"]


def _chatml(role: str, content: str) -> str:
    return f"<|im_start|>{role}\n{content}<|im_end|>\n"


def _llama3(role: str, content: str) -> str:
    return f"<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>"


def test_chatml_multi_turn_prompt_target_and_segments_exact():
    renderer = PromptRenderer(PromptConfig(format="chatml"), CHATML_TOKENS)
    m = THREE_TURNS.messages
    rendered = renderer.render(THREE_TURNS)
    context = "".join(_chatml(x["role"], x["content"]) for x in m[:-1])
    assert rendered.prompt == context + "<|im_start|>assistant\n"
    assert rendered.target == "42<|im_end|>"
    assert renderer.training_segments(THREE_TURNS) == [
        Segment(_chatml("system", m[0]["content"]) + _chatml("user", m[1]["content"]) + "<|im_start|>assistant\n",
                False),
        Segment("tenalp<|im_end|>", True),
        Segment("\n" + _chatml("user", m[3]["content"]) + "<|im_start|>assistant\n", False),
        Segment("planet<|im_end|>", True),
        Segment("\n" + _chatml("user", m[5]["content"]) + "<|im_start|>assistant\n", False),
        Segment("42<|im_end|>", True),
    ]


def test_llama3_multi_turn_segments_exact():
    renderer = PromptRenderer(PromptConfig(format="llama3"), LLAMA3_TOKENS)
    m = THREE_TURNS.messages
    header = "<|start_header_id|>assistant<|end_header_id|>\n\n"
    assert renderer.training_segments(THREE_TURNS) == [
        Segment("<|begin_of_text|>" + _llama3("system", m[0]["content"]) + _llama3("user", m[1]["content"]) + header,
                False),
        Segment("tenalp<|eot_id|>", True),
        Segment(_llama3("user", m[3]["content"]) + header, False),
        Segment("planet<|eot_id|>", True),
        Segment(_llama3("user", m[5]["content"]) + header, False),
        Segment("42<|eot_id|>", True),
    ]


@pytest.mark.parametrize(("fmt", "tokens"), [("chatml", CHATML_TOKENS), ("llama3", LLAMA3_TOKENS),
                                             ("chat_template", SMOL_TOKENS)])
@pytest.mark.parametrize("system_prompt", [None, "Be exact."])
def test_segments_invariants(fmt, tokens, system_prompt):
    from tunegguf.prompts.templates import CHATML_TEMPLATE, LLAMA3_TEMPLATE, render_chat_template

    renderer = PromptRenderer(PromptConfig(format=fmt, system_prompt=system_prompt), tokens)
    no_system = Example(id="c-1", messages=THREE_TURNS.messages[1:])
    for example in (THREE_TURNS, no_system):
        segments = renderer.training_segments(example)
        trained = [s.text for s in segments if s.trained]
        assert trained == [a + tokens.eos_token for a in ANSWERS]
        assert all(s.text for s in segments)
        assert [s.trained for s in segments] == [False, True] * 3  # untrained and trained alternate
        # Concatenated: the template's own rendering of the whole conversation, cut after the
        # last end-of-turn token (the newline after it is not trained on, nor kept).
        template = {"chatml": CHATML_TEMPLATE, "llama3": LLAMA3_TEMPLATE, "chat_template": SMOL_TEMPLATE}[fmt]
        conversation = renderer.messages(example, with_answer=True)
        full = render_chat_template(template, conversation, add_generation_prompt=False,
                                    special_tokens=tokens.special_tokens())
        text = "".join(s.text for s in segments)
        assert full.startswith(text) and text.endswith("42" + tokens.eos_token)
        assert full[len(text):] in ("", "\n")
        # The last two segments are render(): the prompt ends where the last answer starts.
        rendered = renderer.render(example)
        assert rendered.target == segments[-1].text
        assert rendered.prompt == "".join(s.text for s in segments[:-1])
        if system_prompt is not None and example is no_system:
            assert conversation[0] == {"role": "system", "content": system_prompt}
        else:
            assert conversation == [dict(x) for x in example.messages]


def test_messages_of_a_chat_row():
    renderer = PromptRenderer(PromptConfig(format="chatml", system_prompt="Config system."), CHATML_TOKENS)
    assert renderer.messages(THREE_TURNS) == THREE_TURNS.messages[:-1]  # the row's own system message wins
    assert renderer.messages(THREE_TURNS, with_answer=True) == THREE_TURNS.messages
    bare = Example(id="c-2", messages=[{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}])
    assert renderer.messages(bare) == [{"role": "system", "content": "Config system."},
                                       {"role": "user", "content": "2+2?"}]
    assert renderer.answer(bare) == "4" and renderer.answer(THREE_TURNS) == "42"


def test_single_turn_rows_are_prompt_then_target():
    renderer = PromptRenderer(PromptConfig(format="chatml"), CHATML_TOKENS, ["negative", "positive"])
    for example in (Example(id="i-1", instruction="Say hi.", output="hi"),
                    Example(id="t-1", text="a witty film", label="positive"),
                    Example(id="c-1", messages=[{"role": "user", "content": "Say hi."},
                                                {"role": "assistant", "content": "hi"}])):
        rendered = renderer.render(example)
        assert renderer.training_segments(example) == [Segment(rendered.prompt, False),
                                                       Segment(rendered.target, True)]
    unlabeled = Example(id="u-1", text="anything")
    assert renderer.training_segments(unlabeled) == [Segment(renderer.render(unlabeled).prompt, False)]


def test_alpaca_takes_single_turn_chat_rows_and_refuses_conversations():
    renderer = PromptRenderer(PromptConfig(format="alpaca"), CHATML_TOKENS)
    single = Example(id="c-1", messages=[{"role": "user", "content": "Reverse 'cat'."},
                                         {"role": "assistant", "content": "tac"}])
    as_instruction = renderer.render(Example(id="i-1", instruction="Reverse 'cat'.", output="tac"))
    assert renderer.render(single) == as_instruction
    with pytest.raises(TuneGGUFError, match=r"example train-7: the conversation has a system message; "
                                            r"prompt.format alpaca") as info:
        renderer.training_segments(THREE_TURNS)
    assert "\n" not in str(info.value) and "use a chat format" in str(info.value)
    two = Example(id="c-9", messages=THREE_TURNS.messages[1:5])
    with pytest.raises(TuneGGUFError, match="example c-9: the conversation has 2 user turns"):
        renderer.render(two)


def test_a_template_that_rewrites_earlier_turns_is_refused():
    # Marks the last message, so a conversation's rendering changes once a turn follows.
    marking = TemplateTokens(
        chat_template="{% for m in messages %}{% if loop.last %}[last]{% endif %}{{ m['role'] }}: {{ m['content'] }}\n"
                      "{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}",
        bos_token=None, eos_token="</s>")
    renderer = PromptRenderer(PromptConfig(format="chat_template"), marking)
    with pytest.raises(TuneGGUFError, match="example train-7: the chat template renders the conversation "
                                            "differently") as info:
        renderer.training_segments(THREE_TURNS)
    assert "\n" not in str(info.value) and "prompt.format chatml, llama3 or alpaca" in str(info.value)


# ---- the loss mask on real tokenizers ------------------------------------------------------


def _tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


@pytest.fixture(scope="module")
def smollm2_tokenizer(smollm2_dir):
    return _tokenizer(smollm2_dir)


@pytest.fixture(scope="module")
def llama3_tokenizer(tiny_llama3_dir):
    return _tokenizer(tiny_llama3_dir)


def _expected(tokenizer, pieces: list[tuple[str, bool]]) -> tuple[list[int], list[int]]:
    """Ids of the hand-written text and the positions of its trained pieces, each found by
    tokenizing the text up to the piece's start and end."""
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    text, positions = "", []
    for piece, trained in pieces:
        start = len(encode(text))
        text += piece
        if trained:
            positions += range(start, len(encode(text)))
    return encode(text), positions


def _check_mask(tokenizer, renderer, pieces):
    built = build_rows(tokenizer, renderer, [THREE_TURNS], max_seq_length=512)
    row = built.rows[0]
    ids, positions = _expected(tokenizer, pieces)
    assert row["input_ids"] == ids
    assert [i for i, bit in enumerate(row["completion_mask"]) if bit] == positions
    # Contiguous runs of trained ids decode to each answer and its end-of-turn token, in order.
    runs, current = [], []
    for token, bit in zip(row["input_ids"], row["completion_mask"]):
        if bit:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    runs.append(current)
    assert [tokenizer.decode(run) for run in runs] == [a + tokenizer.eos_token for a in ANSWERS]
    assert all(run[-1] == tokenizer.eos_token_id for run in runs)
    assert built.tokens == len(ids) and built.longest == len(ids)


@pytest.mark.parametrize("fmt", ["chatml", "chat_template"])
def test_chatml_mask_is_exactly_the_assistant_turns(smollm2_tokenizer, fmt):
    tokens = TemplateTokens.from_hf_tokenizer(smollm2_tokenizer)
    renderer = PromptRenderer(PromptConfig(format=fmt), tokens)
    m = THREE_TURNS.messages
    pieces = [
        (_chatml("system", m[0]["content"]) + _chatml("user", m[1]["content"]) + "<|im_start|>assistant\n", False),
        ("tenalp<|im_end|>", True),
        ("\n" + _chatml("user", m[3]["content"]) + "<|im_start|>assistant\n", False),
        ("planet<|im_end|>", True),
        ("\n" + _chatml("user", m[5]["content"]) + "<|im_start|>assistant\n", False),
        ("42<|im_end|>", True),
    ]
    _check_mask(smollm2_tokenizer, renderer, pieces)


@pytest.mark.parametrize("fmt", ["llama3", "chat_template"])
def test_llama3_mask_is_exactly_the_assistant_turns(llama3_tokenizer, fmt):
    tokens = TemplateTokens.from_hf_tokenizer(llama3_tokenizer)
    renderer = PromptRenderer(PromptConfig(format=fmt), tokens)
    m = THREE_TURNS.messages
    header = "<|start_header_id|>assistant<|end_header_id|>\n\n"
    pieces = [
        ("<|begin_of_text|>" + _llama3("system", m[0]["content"]) + _llama3("user", m[1]["content"]) + header, False),
        ("tenalp<|eot_id|>", True),
        (_llama3("user", m[3]["content"]) + header, False),
        ("planet<|eot_id|>", True),
        (_llama3("user", m[5]["content"]) + header, False),
        ("42<|eot_id|>", True),
    ]
    _check_mask(llama3_tokenizer, renderer, pieces)
    ids = build_rows(llama3_tokenizer, renderer, [THREE_TURNS], 512).rows[0]["input_ids"]
    assert ids.count(llama3_tokenizer.bos_token_id) == 1 and ids[0] == llama3_tokenizer.bos_token_id


def test_conversations_over_max_seq_length_are_dropped_and_counted(smollm2_tokenizer):
    renderer = PromptRenderer(PromptConfig(format="chatml"), TemplateTokens.from_hf_tokenizer(smollm2_tokenizer))
    short = Example(id="s-1", messages=[{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}])
    short_len = len(build_rows(smollm2_tokenizer, renderer, [short], 512).rows[0]["input_ids"])
    built = build_rows(smollm2_tokenizer, renderer, [short, THREE_TURNS], max_seq_length=short_len + 3)
    assert built.dropped_too_long == 1 and len(built.rows) == 1
    assert built.notes == [f"1 of 2 train rows are longer than model.max_seq_length={short_len + 3} tokens "
                           "and were dropped"]


def test_a_conversation_without_an_answer_is_a_prompt_to_answer():
    renderer = PromptRenderer(PromptConfig(format="chatml"), CHATML_TOKENS)
    question = Example(id="p-1", messages=THREE_TURNS.messages[:-1])
    rendered = renderer.render(question)
    # Ending in a user turn, the conversation is all prompt: the same one the full row is scored on.
    assert rendered == Rendered(prompt=renderer.render(THREE_TURNS).prompt, target="")
    assert renderer.training_segments(question) == [Segment(rendered.prompt, False)]
    with pytest.raises(TuneGGUFError, match="row p-1: nothing to learn"):
        build_rows(None, renderer, [question], 512)
