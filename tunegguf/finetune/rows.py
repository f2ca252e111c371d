"""Training rows: each example rendered, tokenized, with the loss on its answer tokens only
(for a conversation, on every assistant turn's tokens and its end-of-turn token).

The renderer decides the text (BOS included where the model wants it), so both strings are
tokenized with `add_special_tokens=False`, exactly as the inference backends do. TRL turns
`completion_mask` into labels (-100 on the prompt) when `completion_only_loss=True`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from tunegguf.data.example import Example
from tunegguf.errors import TuneGGUFError
from tunegguf.prompts import PromptRenderer, Segment


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
    """Render, tokenize and mask every example; drop the ones longer than max_seq_length.

    Every row goes through `renderer.training_segments` (a single answer or every assistant
    turn of a conversation: one path). The text up to each segment's end is tokenized, so
    each segment's tokens are the new ids it adds; the mask is 1 on trained segments' ids."""
    pieces = [renderer.training_segments(example) for example in examples]
    for example, segments in zip(examples, pieces):
        if not any(segment.trained for segment in segments):
            raise TuneGGUFError(
                f"{split} row {example.id}: nothing to learn (no label, output or assistant turn); "
                "every training row needs its answer"
            )
    # Cumulative texts of all rows in one batch: the tokenizer is fastest on a list.
    prefixes = []
    for segments in pieces:
        text = ""
        for segment in segments:
            text += segment.text
            prefixes.append(text)
    encoded = iter(encode_many(tokenizer, prefixes))
    rows, dropped, longest, tokens = [], 0, 0, 0
    for example, segments in zip(examples, pieces):
        ids: list[int] = []
        mask: list[int] = []
        for number, segment in enumerate(segments):
            upto = next(encoded)
            if upto[: len(ids)] != ids or (segment.trained and len(upto) == len(ids)):
                # A merge across a segment boundary would move the mask off the answer.
                raise TuneGGUFError(
                    f"{split} row {example.id}: {_boundary(segments, number)} merges with the text before it "
                    "into one token; end the prompt with a newline or pick another word in prompt.verbalizers"
                )
            mask += [int(segment.trained)] * (len(upto) - len(ids))
            ids = upto
        if len(ids) > max_seq_length:
            dropped += 1
            continue
        rows.append({"input_ids": ids, "completion_mask": mask})
        longest = max(longest, len(ids))
        tokens += len(ids)
    notes = [f"{dropped} of {len(examples)} {split} rows are longer than model.max_seq_length={max_seq_length} "
             "tokens and were dropped"] if dropped else []
    if examples and not rows:
        raise TuneGGUFError(
            f"every {split} row is longer than model.max_seq_length={max_seq_length} tokens; raise it"
        )
    return TrainRows(rows=rows, dropped_too_long=dropped, longest=longest, tokens=tokens, notes=notes)


def _boundary(segments: list[Segment], number: int) -> str:
    """'the answer's first token' or, in a conversation, which assistant turn's or which text's."""
    answers = sum(segment.trained for segment in segments)
    if answers <= 1:
        return "the answer's first token" if segments[number].trained else "the text after the answer"
    turn = sum(segment.trained for segment in segments[: number + 1])
    if segments[number].trained:
        return f"the first token of assistant turn {turn}"
    return f"the text after assistant turn {turn}"
