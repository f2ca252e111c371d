"""Training rows: each example rendered, tokenized, with the loss on its answer tokens only.

The renderer decides the text (BOS included where the model wants it), so both strings are
tokenized with `add_special_tokens=False`, exactly as the inference backends do. TRL turns
`completion_mask` into labels (-100 on the prompt) when `completion_only_loss=True`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from tunegguf.data.example import Example
from tunegguf.errors import TuneGGUFError
from tunegguf.prompts import PromptRenderer


@dataclass
class TrainRows:
    rows: list[dict[str, list[int]]]
    """One dict per kept example: input_ids and completion_mask (1 on the answer tokens)."""
    dropped_too_long: int
    """Examples whose prompt + answer exceeded max_seq_length (dropped, not truncated)."""
    longest: int
    """Longest kept row, in tokens."""
    tokens: int
    """Tokens over all kept rows (for the tokens/s figures)."""
    notes: list[str] = field(default_factory=list)
    """What the caller should tell the user (rows dropped as too long)."""


def encode_many(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Ids of rendered texts: specials parsed, nothing added (the renderer wrote BOS)."""
    if not texts:
        return []
    return list(tokenizer(list(texts), add_special_tokens=False)["input_ids"])


def build_rows(
    tokenizer: Any, renderer: PromptRenderer, examples: Sequence[Example], max_seq_length: int, split: str = "train"
) -> TrainRows:
    """Render, tokenize and mask every example; drop the ones longer than max_seq_length."""
    rendered = [renderer.render(example) for example in examples]
    for example, item in zip(examples, rendered):
        if not item.target:
            raise TuneGGUFError(
                f"{split} row {example.id}: nothing to learn (no label or output); "
                "every training row needs its answer"
            )
    prompt_ids = encode_many(tokenizer, [r.prompt for r in rendered])
    full_ids = encode_many(tokenizer, [r.prompt + r.target for r in rendered])
    rows, dropped, longest, tokens = [], 0, 0, 0
    for example, prompt, full in zip(examples, prompt_ids, full_ids):
        if full[: len(prompt)] != prompt or len(full) == len(prompt):
            # A merge across the prompt/answer boundary would move the mask off the answer.
            raise TuneGGUFError(
                f"{split} row {example.id}: the answer's first token merges with the end of the prompt; "
                "end the prompt with a newline or pick another word in prompt.verbalizers"
            )
        if len(full) > max_seq_length:
            dropped += 1
            continue
        rows.append({"input_ids": full, "completion_mask": [0] * len(prompt) + [1] * (len(full) - len(prompt))})
        longest = max(longest, len(full))
        tokens += len(full)
    notes = [f"{dropped} of {len(examples)} {split} rows are longer than model.max_seq_length={max_seq_length} "
             "tokens and were dropped"] if dropped else []
    if examples and not rows:
        raise TuneGGUFError(
            f"every {split} row is longer than model.max_seq_length={max_seq_length} tokens; raise it"
        )
    return TrainRows(rows=rows, dropped_too_long=dropped, longest=longest, tokens=tokens, notes=notes)
