"""A deterministic in-memory backend for tests and dry runs (no model, no process).

Log-probs come from a seeded generator, optionally nudged toward each row's label token,
so the metric and parity logic can be checked with known answers.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from tunegguf.evaluate.backends.base import log_softmax


class FakeBackend:
    """Prompts are mapped to rows through `logits_for(prompt) -> [vocab]` and
    `answer_for(prompt) -> (text, stopped)`; tokenization is one id per character."""

    def __init__(
        self,
        name: str,
        logits_for: Callable[[str], np.ndarray],
        answer_for: Callable[[str], tuple[str, bool]] | None = None,
        tokenize_for: Callable[[str], list[int]] | None = None,
        fail_on: str | None = None,
    ) -> None:
        self.name = name
        self._logits_for = logits_for
        self._answer_for = answer_for or (lambda prompt: ("", True))
        self._tokenize_for = tokenize_for or (lambda text: [ord(ch) % 1000 for ch in text])
        self._fail_on = fail_on
        self.info: dict[str, Any] = {"runtime": "fake"}
        self.calls: list[str] = []
        self.closed = False

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        self.calls.append("tokenize")
        return [self._tokenize_for(t) for t in texts]

    def next_token_logprobs(self, prompts: Sequence[str]) -> np.ndarray:
        self.calls.append("next_token_logprobs")
        self._maybe_fail("next_token_logprobs")
        return log_softmax(np.stack([self._logits_for(p) for p in prompts]))

    def generate(self, prompts: Sequence[str], max_new_tokens: int) -> list[tuple[str, bool]]:
        self.calls.append("generate")
        self._maybe_fail("generate")
        return [self._answer_for(p) for p in prompts]

    def close(self) -> None:
        self.closed = True

    def _maybe_fail(self, op: str) -> None:
        if self._fail_on == op:
            from tunegguf.errors import TuneGGUFError

            raise TuneGGUFError(f"fake backend {self.name} failed in {op}")
