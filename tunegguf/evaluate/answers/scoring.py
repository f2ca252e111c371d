"""Score one backend on free-text answers: teacher-forced log-probs and greedy answers.

The same token ids go to every backend. The HF reference writes its log-probs at every
answer token into a memory-mapped [total_answer_tokens, vocab] float32 file; each GGUF
after it reads its rows' slices back one batch of answers at a time (evaluate.batch_size
pairs per request), so RAM holds one batch's [tokens, vocab] per model, never all of them. Exact: the full vocabulary, no top-k.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from tunegguf.errors import TuneGGUFError
from tunegguf.evaluate.answers.metrics import TeacherForcedStats, position_stats, token_nll
from tunegguf.evaluate.backends import Backend, ModelKind
from tunegguf.evaluate.backends.base import TOP_K, TokenGeneration, split_answer_rows


@dataclass
class AnswerScores:
    """Everything one model produced on the answers (rows in example order)."""

    name: str
    kind: ModelKind
    file: str | None = None
    size_bytes: int | None = None
    error: str | None = None
    """Set when the model could not be scored (crash, corrupt file); the rest is then not reported."""
    info: dict[str, Any] = field(default_factory=dict)
    token_ids: list[list[int]] = field(default_factory=list)
    """The backend's own tokenization of the prompt texts (the tokenizer-parity check)."""
    label_token_ids: list[int] = field(default_factory=list)
    """Always empty: answers have no label tokens (kept so the classification tokenizer block applies)."""
    vocab_size: int | None = None
    nll: list[float] = field(default_factory=list)
    """Per row: −log p of the reference answer under this model, summed over its tokens."""
    n_tokens: list[int] = field(default_factory=list)
    generations: list[TokenGeneration] = field(default_factory=list)
    timing: dict[str, dict[str, Any]] = field(default_factory=dict)
    teacher_forced: TeacherForcedStats | None = None
    """Against the HF reference, per answer token (set for the models that read the reference: the GGUFs)."""
    vocab_mismatch: str | None = None
    """"HF 49152 vs GGUF 49153": the teacher-forced comparison was not possible."""

    @property
    def ok(self) -> bool:
        return self.error is None


def answer_offsets(answer_ids: Sequence[Sequence[int]]) -> list[int]:
    """Row i's answer tokens are rows offsets[i]:offsets[i+1] of the reference store."""
    offsets = [0]
    for ids in answer_ids:
        offsets.append(offsets[-1] + len(ids))
    return offsets


def _progress(total: int, desc: str, unit: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)


def _rate(count: int, seconds: float) -> float | None:
    return round(count / seconds, 3) if seconds > 0 else None


def score_answers(
    open_backend: Callable[[], Backend],
    scores: AnswerScores,
    *,
    prompts: Sequence[str],
    prompt_ids: Sequence[Sequence[int]],
    answer_ids: Sequence[Sequence[int]],
    max_new_tokens: int,
    batch_size: int,
    write_reference: Callable[[int, np.ndarray], None] | None = None,
    read_reference: Callable[[int, int], np.ndarray] | None = None,
    reference_vocab: int | None = None,
    top_k: int = TOP_K,
) -> AnswerScores:
    """Open the backend, tokenize the prompts, teacher-force every reference answer, answer
    greedily, close it. Errors (TuneGGUFError) become `scores.error`; the backend is always closed.

    write_reference(start, rows): the HF reference's store (rows = that answer's [T, vocab]
    log-probs, start = its first token's offset over all answers). read_reference(start,
    stop): a later model's view of it, compared row by row into scores.teacher_forced.
    """
    started = time.perf_counter()
    try:
        backend = open_backend()
    except TuneGGUFError as exc:
        scores.error = str(exc)
        return scores
    scores.info = dict(backend.info)
    scores.info.setdefault("load_seconds", round(time.perf_counter() - started, 3))
    try:
        scores.token_ids = backend.tokenize(list(prompts))
        _teacher_forced(backend, scores, prompt_ids, answer_ids, batch_size, write_reference, read_reference,
                        reference_vocab)
        _generate(backend, scores, prompt_ids, max_new_tokens, batch_size, top_k)
    except TuneGGUFError as exc:
        scores.error = str(exc)
    finally:
        backend.close()
    return scores


def _teacher_forced(backend, scores, prompt_ids, answer_ids, batch_size, write_reference, read_reference,
                    reference_vocab):
    n = len(answer_ids)
    offsets = answer_offsets(answer_ids)
    compare = read_reference is not None
    tracker = TeacherForcedStats(n) if compare else None
    seconds = 0.0
    with _progress(offsets[-1], f"{scores.name} teacher-forced", "tok") as bar:
        for first in range(0, n, batch_size):
            # Pairs with an empty answer have no row to score; the rest go in one request.
            batch = [i for i in range(first, min(first + batch_size, n)) if answer_ids[i]]
            for i in range(first, min(first + batch_size, n)):
                scores.nll.append(0.0)
                scores.n_tokens.append(0)
            if not batch:
                continue
            t0 = time.perf_counter()
            rows = backend.teacher_forced_logprobs([list(prompt_ids[i]) for i in batch],
                                                   [list(answer_ids[i]) for i in batch])
            seconds += time.perf_counter() - t0
            expected = sum(len(answer_ids[i]) for i in batch)
            if rows.shape[0] != expected:
                raise TuneGGUFError(f"{scores.name}: the backend returned {rows.shape[0]} log-prob rows for "
                                    f"answers of {expected} tokens (rows {batch[0] + 1}-{batch[-1] + 1}); "
                                    "its teacher_forced_logprobs is broken")
            if scores.vocab_size is None:
                scores.vocab_size = int(rows.shape[1])
            # The batch's answers are consecutive in the store (empty ones take no room),
            # so the whole block is written and read at the first answer's offset.
            start = offsets[batch[0]]
            if write_reference is not None:
                write_reference(start, rows)
            reference = None
            if compare and scores.vocab_mismatch is None:
                if rows.shape[1] != reference_vocab:
                    scores.vocab_mismatch = f"HF {reference_vocab} vs {scores.name} {rows.shape[1]}"
                else:
                    reference = read_reference(start, start + expected)
            for i, block in zip(batch, split_answer_rows(rows, [answer_ids[i] for i in batch])):
                scores.nll[i] = float(token_nll(block, answer_ids[i]).sum())
                scores.n_tokens[i] = len(answer_ids[i])
                if reference is not None:
                    at = offsets[i] - start
                    tracker.add(i, position_stats(reference[at : at + len(block)], block, answer_ids[i]))
            bar.update(expected)
    if compare and scores.vocab_mismatch is None:
        scores.teacher_forced = tracker
    total = offsets[-1]
    scores.timing["teacher_forced"] = {"seconds": round(seconds, 4), "rows": n, "answer_tokens": total,
                                       "answer_tokens_per_s": _rate(total, seconds)}


def _generate(backend, scores, prompt_ids, max_new_tokens, batch_size, top_k):
    n = len(prompt_ids)
    seconds = 0.0
    with _progress(n, f"{scores.name} generate", "ex") as bar:
        for start in range(0, n, batch_size):
            batch = [list(ids) for ids in prompt_ids[start : start + batch_size]]
            t0 = time.perf_counter()
            out = backend.generate_ids(batch, max_new_tokens, top_k=top_k)
            seconds += time.perf_counter() - t0
            if len(out) != len(batch):
                raise TuneGGUFError(f"{scores.name}: generate_ids returned {len(out)} answers for {len(batch)} prompts")
            scores.generations.extend(out)
            bar.update(len(batch))
    generated = sum(len(g.ids) for g in scores.generations)
    scores.timing["generate"] = {"seconds": round(seconds, 4), "rows": n, "generated_tokens": generated,
                                 "tokens_per_s": _rate(generated, seconds), "rows_per_s": _rate(n, seconds)}


__all__ = ["AnswerScores", "answer_offsets", "score_answers"]
