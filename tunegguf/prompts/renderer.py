"""The one prompt renderer: an Example plus a format gives the prompt text and the target.

Training feeds `training_segments` (loss on the trained segments only: the answer, or every
assistant turn of a chat row); both inference backends feed `prompt` alone and tokenize it
with special-token parsing on and no automatic BOS, so the token ids are decided here,
once, by the text. For a chat row the prompt is the conversation before its last assistant
turn and the target is that turn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunegguf.data.example import Example
from tunegguf.errors import TuneGGUFError
from tunegguf.prompts.config import PromptConfig
from tunegguf.prompts.templates import (
    ALPACA_PREAMBLE,
    ALPACA_PREAMBLE_NO_INPUT,
    CHATML_TEMPLATE,
    LLAMA3_TEMPLATE,
    render_chat_template,
)


@dataclass(frozen=True)
class TemplateTokens:
    """What the renderer must know of a model's tokenizer: its template and special tokens."""

    chat_template: str | None
    bos_token: str | None
    eos_token: str
    """The end-of-turn token the model is trained to stop on (`<|im_end|>`, `<|eot_id|>`)."""
    add_bos: bool = False
    """Whether the tokenizer would put BOS in front by itself; then plain-text formats
    (alpaca) write it into the prompt, since backends never add it."""

    @classmethod
    def from_hf_tokenizer(cls, tokenizer: Any) -> "TemplateTokens":
        if tokenizer.eos_token is None:
            raise TuneGGUFError("the tokenizer has no EOS token; set eos_token in tokenizer_config.json")
        bos = tokenizer.bos_token
        add_bos = False
        if bos is not None and tokenizer.bos_token_id is not None:
            ids = tokenizer("a", add_special_tokens=True)["input_ids"]
            add_bos = bool(ids) and ids[0] == tokenizer.bos_token_id
        template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
        return cls(chat_template=template, bos_token=bos, eos_token=tokenizer.eos_token, add_bos=add_bos)

    @classmethod
    def from_gguf(cls, path: Any) -> "TemplateTokens":
        """The same facts read from a GGUF's metadata (for running a GGUF on its own)."""
        from tunegguf.models.gguf_tokenizer import read_gguf_fields

        meta = read_gguf_fields(path, [
            "tokenizer.ggml.tokens", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.add_bos_token", "tokenizer.chat_template",
        ])
        tokens = meta.get("tokenizer.ggml.tokens") or []
        if "tokenizer.ggml.eos_token_id" not in meta or not tokens:
            raise TuneGGUFError(f"{path}: the GGUF has no tokenizer EOS; re-export it")
        bos_id = meta.get("tokenizer.ggml.bos_token_id")
        return cls(
            chat_template=meta.get("tokenizer.chat_template"),
            bos_token=tokens[bos_id] if bos_id is not None else None,
            eos_token=tokens[meta["tokenizer.ggml.eos_token_id"]],
            add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        )

    def special_tokens(self) -> dict[str, str | None]:
        return {"bos_token": self.bos_token or "", "eos_token": self.eos_token}


@dataclass(frozen=True)
class Segment:
    """A piece of a training text; the loss is on the pieces with trained=True."""

    text: str
    trained: bool


@dataclass(frozen=True)
class Rendered:
    prompt: str
    target: str
    """The answer the model should give, ending with the end-of-turn token ("" if unknown)."""


def _answer_index(example: Example) -> int | None:
    """A chat row's answer: its final message when that is an assistant turn (the data stage
    cuts any turns after the last one); a conversation ending otherwise awaits its answer."""
    messages = example.messages or []
    return len(messages) - 1 if messages and messages[-1]["role"] == "assistant" else None


class PromptRenderer:
    """Render examples for one model and one label set."""

    def __init__(self, config: PromptConfig, tokens: TemplateTokens, labels: list[str] | None = None):
        self.config = config
        self.tokens = tokens
        self.labels = list(labels or [])
        unknown = sorted(set(config.verbalizers) - set(self.labels))
        if unknown and self.labels:
            raise TuneGGUFError(
                f"prompt.verbalizers names labels that are not in the data: {unknown}; labels are {self.labels}"
            )
        self.words = [config.verbalizers.get(label, label) for label in self.labels]
        if len(set(self.words)) != len(self.words):
            raise TuneGGUFError(f"prompt.verbalizers gives two labels the same word: {self.words}")
        if config.format == "chat_template" and not tokens.chat_template:
            raise TuneGGUFError(
                "the model has no chat template; set prompt.format to chatml, llama3 or alpaca"
            )

    # ---- text of one turn -------------------------------------------------------------
    def _alpaca_parts(self, example: Example) -> tuple[str, str]:
        """Alpaca has one instruction and one response: a chat row fits only when it is a
        single user turn and its answer."""
        if not example.is_chat:
            return self._instruction_and_input(example)
        roles = [m["role"] for m in example.messages]
        if roles not in (["user", "assistant"], ["user"]):
            shape = "has a system message" if "system" in roles else f"has {roles.count('user')} user turns"
            raise TuneGGUFError(
                f"example {example.id}: the conversation {shape}; prompt.format alpaca renders one instruction "
                f"and its response only; use a chat format (chat_template, chatml or llama3)"
            )
        return example.messages[0]["content"], ""

    def _instruction_and_input(self, example: Example) -> tuple[str, str]:
        if example.is_classification:
            instruction = self.config.instruction.replace("{labels}", ", ".join(self.words))
            return instruction, f"{self.config.input_prefix}{example.text}"
        if example.instruction is None:
            raise TuneGGUFError(f"example {example.id}: neither text nor instruction is set")
        return example.instruction, example.input or ""

    def answer(self, example: Example) -> str | None:
        """The response text for an example: its label's word, or its output."""
        if example.is_classification:
            if example.label is None:
                return None
            if self.labels and example.label not in self.labels:
                raise TuneGGUFError(
                    f"example {example.id}: label {example.label!r} is not one of {self.labels}"
                )
            return self.config.verbalizers.get(example.label, example.label)
        if example.is_chat:
            index = _answer_index(example)
            return None if index is None else example.messages[index]["content"]
        return example.output

    def messages(self, example: Example, *, with_answer: bool = False) -> list[dict[str, str]]:
        """The conversation the chat formats render: the system prompt (when set), the user
        turn (instruction, then the input on its own line) and, with_answer, the assistant's
        answer (when the example has one). Runtimes' own templates are fed the same list.

        A chat row gives its own conversation, with or without its final assistant turn
        (the answer; a conversation ending in a user turn is all prompt, one to answer),
        the system prompt put first when the row has no system message."""
        if example.is_chat:
            return self._chat_messages(example, with_answer)
        instruction, input_text = self._instruction_and_input(example)
        user = f"{instruction}\n{input_text}" if input_text else instruction
        messages = []
        if self.config.system_prompt is not None:
            messages.append({"role": "system", "content": self.config.system_prompt})
        messages.append({"role": "user", "content": user})
        answer = self.answer(example) if with_answer else None
        if answer is not None:
            messages.append({"role": "assistant", "content": answer})
        return messages

    def _chat_messages(self, example: Example, with_answer: bool) -> list[dict[str, str]]:
        messages = [dict(m) for m in example.messages]
        last = _answer_index(example)
        if last is not None and not with_answer:
            messages = messages[:last]
        has_system = any(m["role"] == "system" for m in example.messages)
        if self.config.system_prompt is not None and not has_system:
            messages.insert(0, {"role": "system", "content": self.config.system_prompt})
        return messages

    # ---- whole prompt -----------------------------------------------------------------
    def _template(self) -> str:
        return {
            "chat_template": self.tokens.chat_template,
            "chatml": CHATML_TEMPLATE,
            "llama3": LLAMA3_TEMPLATE,
        }[self.config.format]

    def _render(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        return render_chat_template(self._template(), messages, add_generation_prompt=add_generation_prompt,
                                    special_tokens=self.tokens.special_tokens())

    def render(self, example: Example) -> Rendered:
        if self.config.format == "alpaca":
            instruction, input_text = self._alpaca_parts(example)
            return self._render_alpaca(instruction, input_text, self.answer(example))
        prompt = self._render(self.messages(example), add_generation_prompt=True)
        if self.answer(example) is None:
            return Rendered(prompt=prompt, target="")
        return Rendered(prompt=prompt, target=self._turns(example)[-1][1])

    def training_segments(self, example: Example) -> list[Segment]:
        """The training text in pieces, in order: concatenated, the full text the model is
        trained on (ending at the last answer's end-of-turn token); trained pieces are each
        assistant turn's text and its end-of-turn token, nothing of system or user turns or
        of the template's own tokens. A row without an answer gives its prompt alone."""
        if self.config.format == "alpaca" or self.answer(example) is None:
            rendered = self.render(example)
            pieces = [Segment(rendered.prompt, False), Segment(rendered.target, True)]
        else:
            pieces = []
            for before, answer in self._turns(example):
                pieces += [Segment(before, False), Segment(answer, True)]
        return [piece for piece in pieces if piece.text]

    def _turns(self, example: Example) -> list[tuple[str, str]]:
        """(text since the previous answer, up to the generation prompt; the answer ending at
        its end-of-turn token) for each assistant turn, rendered as cumulative prefixes of
        the conversation through the one template, each checked to extend the last."""
        conversation = self.messages(example, with_answer=True)
        turns, done = [], ""
        for index, message in enumerate(conversation):
            if message["role"] != "assistant":
                continue
            prompt = self._render(conversation[:index], add_generation_prompt=True)
            full = self._render(conversation[: index + 1], add_generation_prompt=False)
            if not prompt.startswith(done) or not full.startswith(prompt):
                turn = "once the answer is added" if prompt.startswith(done) else "when a later turn follows"
                raise TuneGGUFError(
                    f"example {example.id}: the chat template renders the conversation differently {turn} "
                    f"(turn {index + 1}), so the answers cannot be masked; use prompt.format chatml, llama3 "
                    f"or alpaca for this model"
                )
            answer = self._end_at_eos(full[len(prompt):])
            turns.append((prompt[len(done):], answer))
            # The text after the end-of-turn token (a newline) belongs to what follows.
            done = prompt + answer if full.startswith(prompt + answer) else full
        return turns

    def _end_at_eos(self, target: str) -> str:
        # Templates add a newline after the end-of-turn token; the model must learn to stop
        # at the token itself, so the target ends there.
        eos = self.tokens.eos_token
        index = target.find(eos)
        return target[: index + len(eos)] if index >= 0 else target + eos

    def _render_alpaca(self, instruction: str, input_text: str, answer: str | None) -> Rendered:
        bos = self.tokens.bos_token if (self.tokens.add_bos and self.tokens.bos_token) else ""
        if input_text:
            prompt = (
                f"{bos}{ALPACA_PREAMBLE}\n\n### Instruction:\n{instruction}\n\n"
                f"### Input:\n{input_text}\n\n### Response:\n"
            )
        else:
            prompt = f"{bos}{ALPACA_PREAMBLE_NO_INPUT}\n\n### Instruction:\n{instruction}\n\n### Response:\n"
        target = "" if answer is None else f"{answer}{self.tokens.eos_token}"
        return Rendered(prompt=prompt, target=target)
