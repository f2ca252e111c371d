"""Score one backend on the rendered prompts: label probabilities, greedy answers, timings.

The first model scored (the HF reference) writes its full next-token log-probs to a
memory-mapped file; every GGUF after it is compared batch by batch against that file,
so KL over a 128k vocabulary never needs all rows of two models in memory at once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from tunegguf.errors import TuneGGUFError
from tunegguf.evaluate.backends import Backend, ModelKind
from tunegguf.evaluate.lengths import PromptLimit, check_prompt_tokens
from tunegguf.evaluate.parity import NextTokenDivergence
from tunegguf.prompts.verbalizer import UNPARSED, label_token_ids, parse_answer


@dataclass
class ModelScores:
    """Everything one model produced on the split (rows in example order)."""

    name: str
    kind: ModelKind
    file: str | None = None
    size_bytes: int | None = None
    error: str | None = None
    """Set when the model could not be scored (crash, corrupt file); the rest is empty."""
    info: dict[str, Any] = field(default_factory=dict)
    token_ids: list[list[int]] = field(default_factory=list)
    label_token_ids: list[int] = field(default_factory=list)
    vocab_size: int | None = None
    label_logprobs: np.ndarray | None = None
    """[n, labels] raw full-vocabulary log-probs of each label's first token."""
    probs: np.ndarray | None = None
    """[n, labels] probabilities renormalized over the label set."""
    label_mass: np.ndarray | None = None
    """[n] full-vocabulary probability mass on the label tokens (low: the model wants to say something else)."""
    pred_labels: list[str] = field(default_factory=list)
    generations: list[str] = field(default_factory=list)
    stopped_at_eos: list[bool] = field(default_factory=list)
    pred_generate: list[str] = field(default_factory=list)
    timing: dict[str, dict[str, float]] = field(default_factory=dict)
    divergence: dict[str, Any] | None = None
    """KL / top-1 vs the reference (GGUFs only)."""
    kl_per_row: list[float] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None

    def predictions(self, mode: str) -> list[str]:
        return self.pred_labels if mode == "labels" else self.pred_generate


class ReferenceLogprobs:
    """[n, vocab] float32 log-probs on disk (np.memmap), written and read in row blocks."""

    def __init__(self, path: Path, n: int, vocab: int) -> None:
        self.path, self.n, self.vocab = Path(path), n, vocab
        self._array = np.lib.format.open_memmap(self.path, mode="w+", dtype=np.float32, shape=(n, vocab))

    def write(self, start: int, rows: np.ndarray) -> None:
        self._array[start : start + len(rows)] = rows

    def read(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self._array[start:stop])

    def close(self) -> None:
        self._array.flush()
        del self._array


def _timing(seconds: float, n: int) -> dict[str, float]:
    return {
        "seconds": round(seconds, 4),
        "examples_per_s": round(n / seconds, 3) if seconds > 0 else None,
        "latency_ms": round(1000 * seconds / n, 2) if n else None,
    }


def _progress(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="ex", leave=False, dynamic_ncols=True)


def score_model(
    open_backend: Callable[[], Backend],
    scores: ModelScores,
    *,
    prompts: Sequence[str],
    labels: Sequence[str],
    words: Sequence[str],
    modes: Sequence[str],
    batch_size: int,
    max_new_tokens: int,
    write_reference: Callable[[int, np.ndarray], None] | None = None,
    read_reference: Callable[[int, int], np.ndarray] | None = None,
    reference_vocab: int | None = None,
    prompt_limit: PromptLimit | None = None,
    row_names: Sequence[str] | None = None,
) -> ModelScores:
    """Open the backend, score every mode, close it. Errors become `scores.error`.

    prompt_limit: the most tokens a prompt may have as this backend tokenizes it; checked
    before anything is scored, naming the row (row_names, one per prompt; else "prompt N")."""
    started = time.perf_counter()
    try:
        backend = open_backend()
    except TuneGGUFError as exc:
        scores.error = str(exc)
        return scores
    scores.info = dict(backend.info)
    scores.info.setdefault("load_seconds", round(time.perf_counter() - started, 3))
    try:
        scores.token_ids = backend.tokenize(prompts)
        if prompt_limit is not None:
            names = row_names or [f"prompt {i + 1}" for i in range(len(prompts))]
            check_prompt_tokens(scores.token_ids, names, prompt_limit)
        _score(backend, scores, prompts, labels, words, modes, batch_size, max_new_tokens,
               write_reference, read_reference, reference_vocab)
    except TuneGGUFError as exc:
        scores.error = str(exc)
    finally:
        backend.close()
    return scores


def _score(backend, scores, prompts, labels, words, modes, batch_size, max_new_tokens,
           write_reference, read_reference, reference_vocab) -> None:
    if "labels" in modes:
        encode = lambda text: backend.tokenize([text])[0]  # noqa: E731
        # Every prompt ends with the same generation prompt, so the first one decides.
        scores.label_token_ids = label_token_ids(encode, prompts[0], words)
        _score_labels(backend, scores, prompts, labels, batch_size, write_reference, read_reference, reference_vocab)
    if "generate" in modes:
        _score_generate(backend, scores, prompts, labels, words, batch_size, max_new_tokens)


def _score_labels(backend, scores, prompts, labels, batch_size, write_reference, read_reference, reference_vocab):
    ids = scores.label_token_ids
    n = len(prompts)
    label_lp = np.empty((n, len(ids)), dtype=np.float32)
    divergence = NextTokenDivergence()
    mismatch = None
    seconds = 0.0
    with _progress(n, f"{scores.name} labels") as bar:
        for start in range(0, n, batch_size):
            batch = prompts[start : start + batch_size]
            t0 = time.perf_counter()
            logprobs = backend.next_token_logprobs(batch)
            seconds += time.perf_counter() - t0
            if scores.vocab_size is None:
                scores.vocab_size = int(logprobs.shape[1])
            label_lp[start : start + len(batch)] = logprobs[:, ids]
            if write_reference is not None:
                write_reference(start, logprobs)
            if read_reference is not None:
                if logprobs.shape[1] != reference_vocab:
                    mismatch = f"HF {reference_vocab} vs GGUF {logprobs.shape[1]}"
                else:
                    divergence.update(read_reference(start, start + len(batch)), logprobs)
            bar.update(len(batch))
    scores.label_logprobs = label_lp
    shifted = np.exp(label_lp.astype(np.float64) - label_lp.max(axis=1, keepdims=True))
    scores.probs = (shifted / shifted.sum(axis=1, keepdims=True)).astype(np.float32)
    scores.label_mass = np.exp(label_lp.astype(np.float64)).sum(axis=1).astype(np.float32)
    scores.pred_labels = [labels[i] for i in scores.probs.argmax(axis=1)]
    scores.timing["labels"] = _timing(seconds, n)
    if read_reference is not None:
        scores.divergence = {"vocab_mismatch": mismatch} if mismatch else divergence.result()
        scores.kl_per_row = [] if mismatch else divergence.kl


def _score_generate(backend, scores, prompts, labels, words, batch_size, max_new_tokens):
    n = len(prompts)
    seconds = 0.0
    with _progress(n, f"{scores.name} generate") as bar:
        for start in range(0, n, batch_size):
            batch = prompts[start : start + batch_size]
            t0 = time.perf_counter()
            out = backend.generate(batch, max_new_tokens)
            seconds += time.perf_counter() - t0
            for text, stopped in out:
                scores.generations.append(text)
                scores.stopped_at_eos.append(bool(stopped))
                scores.pred_generate.append(parse_answer(text, words, labels))
            bar.update(len(batch))
    scores.timing["generate"] = _timing(seconds, n)


def label_probabilities(backend: Backend, prompts: Sequence[str], label_ids: Sequence[int],
                        batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Label scoring on an already-open backend, as score_model computes it: ([n, labels]
    float32 full-vocabulary log-probs of each label's first token, [n, labels] probabilities
    renormalized over the label set), next_token_logprobs `batch_size` prompts at a time.
    For callers that keep one backend across many calls (`tunegguf predict` on a big file)."""
    ids = list(label_ids)
    label_lp = np.empty((len(prompts), len(ids)), dtype=np.float32)
    for start in range(0, len(prompts), batch_size):
        batch = list(prompts[start : start + batch_size])
        label_lp[start : start + len(batch)] = backend.next_token_logprobs(batch)[:, ids]
    shifted = np.exp(label_lp.astype(np.float64) - label_lp.max(axis=1, keepdims=True))
    return label_lp, (shifted / shifted.sum(axis=1, keepdims=True)).astype(np.float32)


__all__ = ["ModelScores", "ReferenceLogprobs", "UNPARSED", "label_probabilities", "score_model"]
