"""The inference interface the evaluator speaks; one implementation per runtime.

Every backend receives prompts already rendered by `tunegguf.prompts` and tokenizes them
with special-token parsing on and no automatic BOS (the renderer wrote it where needed).
The evaluator only calls these verbs, so it never needs to know which runtime it scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

Generation = tuple[str, bool]
"""(text without the stop token, whether generation stopped at EOS/end-of-turn)."""

TOP_K = 5
"""Ranks kept per generated step: vLLM's GGUF tests accept a first mismatch when each
model's token is in the other's top 5."""


@dataclass
class TokenGeneration:
    """One greedy continuation of given token ids (the answers evaluation's unit)."""

    ids: list[int]
    """Generated ids, without the stop token."""
    stopped: bool
    """True when an end-of-turn/EOS token ended it; False when the token budget did."""
    top_ids: list[list[int]] = field(default_factory=list)
    """Per step, the `top_k` most likely ids, best first, before that step's token was
    chosen: len(ids) + 1 lists when stopped (the last ranks the stop token), else len(ids)."""
    text: str = ""
    """`ids` decoded, special tokens kept."""


@runtime_checkable
class Backend(Protocol):
    name: str
    """Shown in reports, e.g. "hf", "Q4_K_M"."""

    info: dict[str, Any]
    """What ran: runtime, file, device, dtype, threads (copied into the report)."""

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of rendered prompts, exactly as the model is fed them."""

    def next_token_logprobs(self, prompts: Sequence[str]) -> np.ndarray:
        """Log-softmax over the whole vocabulary at the answer position: [n, vocab] float32."""

    def generate(self, prompts: Sequence[str], max_new_tokens: int) -> list[Generation]:
        """Greedy completion of each prompt: (text without the stop token, stopped at EOS)."""

    def teacher_forced_logprobs(
        self, prompt_ids: Sequence[Sequence[int]], answer_ids: Sequence[Sequence[int]]
    ) -> np.ndarray:
        """Log-softmax over the whole vocabulary at every answer position of each
        (prompt, answer) pair, fed exactly these ids (no tokenizing, no BOS added):
        [sum of len(answer), vocab] float32, the pairs' rows one after the other, where
        row j of pair i is the distribution of answer_ids[i][j] given
        prompt_ids[i] + answer_ids[i][:j]. An empty answer contributes no row. Batched like
        generate_ids, so a runtime may score many pairs in one pass."""

    def generate_ids(
        self, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int, top_k: int = TOP_K
    ) -> list[TokenGeneration]:
        """Greedy continuation of each id list (first index on ties, as argmax), stopping at
        an end-of-turn/EOS id or after max_new_tokens, with each step's top_k ids."""

    def close(self) -> None:
        """Free the model (and its process)."""


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64, returned as float32 (stable for large logits)."""
    x = np.asarray(logits, dtype=np.float64)
    top = x.max(axis=-1, keepdims=True)
    out = x - top - np.log(np.exp(x - top).sum(axis=-1, keepdims=True))
    return out.astype(np.float32)


def top_ids(logits: np.ndarray, k: int) -> list[int]:
    """The k highest-scoring ids, best first, ties broken by the lower id: exactly
    `argsort(-logits, kind="stable")[:k]` (so the first is argmax's choice), without
    sorting the whole vocabulary."""
    x = np.asarray(logits).ravel()
    k = max(0, min(int(k), x.size))
    if k == 0:
        return []
    threshold = np.partition(x, x.size - k)[x.size - k]
    # Every id tied with the k-th value is a candidate; flatnonzero lists them by id, and
    # a stable sort keeps that order among equal scores.
    candidates = np.flatnonzero(x >= threshold)
    order = np.argsort(-x[candidates], kind="stable")[:k]
    return [int(t) for t in candidates[order]]


def split_answer_rows(rows: np.ndarray, answer_ids: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """teacher_forced_logprobs' concatenated rows cut back into one block per answer."""
    bounds = np.cumsum([0] + [len(a) for a in answer_ids])
    if rows.shape[0] != bounds[-1]:
        raise ValueError(f"{rows.shape[0]} log-prob rows for answers of {int(bounds[-1])} tokens in all")
    return [rows[bounds[i] : bounds[i + 1]] for i in range(len(answer_ids))]
