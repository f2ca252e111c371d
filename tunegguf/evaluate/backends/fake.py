"""A deterministic in-memory backend for tests and dry runs (no model, no process).

Log-probs come from a seeded generator, optionally nudged toward each row's label token,
so the metric and parity logic can be checked with known answers.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from tunegguf.evaluate.backends.base import TOP_K, TokenGeneration, log_softmax


class FakeBackend:
    """Prompts are mapped to rows through `logits_for(prompt) -> [vocab]` and
    `answer_for(prompt) -> (text, stopped)`; tokenization is one id per character.

    For the id-level verbs (answers evaluation), `logits_for_ids(ids) -> [vocab]` gives the
    next-token logits after a list of ids, and `stop_ids` end a greedy generation."""

    def __init__(
        self,
        name: str,
        logits_for: Callable[[str], np.ndarray] | None = None,
        answer_for: Callable[[str], tuple[str, bool]] | None = None,
        tokenize_for: Callable[[str], list[int]] | None = None,
        fail_on: str | None = None,
        logits_for_ids: Callable[[list[int]], np.ndarray] | None = None,
        stop_ids: Sequence[int] = (),
        detokenize: Callable[[list[int]], str] | None = None,
    ) -> None:
        self.name = name
        self._logits_for = logits_for
        self._answer_for = answer_for or (lambda prompt: ("", True))
        self._tokenize_for = tokenize_for or (lambda text: [ord(ch) % 1000 for ch in text])
        self._fail_on = fail_on
        self._logits_for_ids = logits_for_ids
        self._stop_ids = set(stop_ids)
        self._detokenize = detokenize or (lambda ids: " ".join(str(i) for i in ids))
        self.info: dict[str, Any] = {"runtime": "fake"}
        self.calls: list[str] = []
        self.closed = False

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        self.calls.append("tokenize")
        return [self._tokenize_for(t) for t in texts]

    def next_token_logprobs(self, prompts: Sequence[str]) -> np.ndarray:
        self.calls.append("next_token_logprobs")
        self._maybe_fail("next_token_logprobs")
        if self._logits_for is None:
            return log_softmax(np.stack([self._ids_logits(self._tokenize_for(p)) for p in prompts]))
        return log_softmax(np.stack([self._logits_for(p) for p in prompts]))

    def generate(self, prompts: Sequence[str], max_new_tokens: int) -> list[tuple[str, bool]]:
        self.calls.append("generate")
        self._maybe_fail("generate")
        return [self._answer_for(p) for p in prompts]

    def teacher_forced_logprobs(self, prompt_ids: Sequence[Sequence[int]],
                                answer_ids: Sequence[Sequence[int]]) -> np.ndarray:
        self.calls.append("teacher_forced_logprobs")
        self._maybe_fail("teacher_forced_logprobs")
        rows = []
        for prompt, answer in zip(prompt_ids, answer_ids, strict=True):
            context = list(prompt)
            for token in answer:
                rows.append(self._ids_logits(context))
                context.append(int(token))
        return log_softmax(np.stack(rows)) if rows else np.zeros((0, 0), dtype=np.float32)

    def generate_ids(self, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int,
                     top_k: int = TOP_K) -> list[TokenGeneration]:
        self.calls.append("generate_ids")
        self._maybe_fail("generate_ids")
        out = []
        for ids in prompt_ids:
            context, new, tops, stopped = list(ids), [], [], False
            while len(new) < max_new_tokens:
                logits = self._ids_logits(context)
                order = np.argsort(-logits, kind="stable")
                tops.append([int(t) for t in order[:top_k]])
                token = int(order[0])
                if token in self._stop_ids:
                    stopped = True
                    break
                new.append(token)
                context.append(token)
            out.append(TokenGeneration(ids=new, stopped=stopped, top_ids=tops, text=self._detokenize(new)))
        return out

    def close(self) -> None:
        self.closed = True

    def _ids_logits(self, ids: list[int]) -> np.ndarray:
        if self._logits_for_ids is None:
            raise TypeError(f"fake backend {self.name} was given no logits_for_ids")
        return np.asarray(self._logits_for_ids(list(ids)), dtype=np.float64)

    def _maybe_fail(self, op: str) -> None:
        if self._fail_on == op:
            from tunegguf.errors import TuneGGUFError

            raise TuneGGUFError(f"fake backend {self.name} failed in {op}")
