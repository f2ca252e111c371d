"""Label words as tokens: the first token of each label's word, checked to be distinct."""

from __future__ import annotations

import re
from typing import Callable, Sequence

from tunegguf.errors import TuneGGUFError

Encode = Callable[[str], list[int]]


def label_token_ids(encode: Encode, prompt: str, words: Sequence[str]) -> list[int]:
    """Token id that starts each label word right after `prompt`.

    Tokenizing prompt+word (not the word alone) gives the id the model actually sees at
    that position: BPE merges across the boundary, and a leading space changes the token.
    """
    prompt_ids = encode(prompt)
    first_ids = []
    for word in words:
        full = encode(prompt + word)
        if full[: len(prompt_ids)] != prompt_ids or len(full) <= len(prompt_ids):
            raise TuneGGUFError(
                f"label word {word!r} merges with the end of the prompt into one token; "
                "end the prompt with a newline or pick another word in prompt.verbalizers"
            )
        first_ids.append(full[len(prompt_ids)])
    seen: dict[int, str] = {}
    for word, token in zip(words, first_ids):
        if token in seen:
            raise TuneGGUFError(
                f"labels {seen[token]!r} and {word!r} start with the same token ({token}); "
                "give one of them another word in prompt.verbalizers so one forward pass can tell them apart"
            )
        seen[token] = word
    return first_ids


UNPARSED = "<unparsed>"


def parse_answer(text: str, words: Sequence[str], labels: Sequence[str], stop_tokens: Sequence[str] = ()) -> str:
    """Map a generated answer to a label, strictly: the whole answer must be one label word.

    Case and surrounding whitespace/punctuation are forgiven; anything else (an extra
    sentence, two labels, an empty answer) is UNPARSED so format drift shows in the report.
    """
    for stop in stop_tokens:
        if stop:
            text = text.split(stop, 1)[0]
    cleaned = re.sub(r"^[\s\"'`*.:]+|[\s\"'`*.!:]+$", "", text).lower()
    for word, label in zip(words, labels):
        if cleaned == word.lower():
            return label
    return UNPARSED
