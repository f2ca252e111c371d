"""The inference interface the evaluator speaks; one implementation per runtime.

Every backend receives prompts already rendered by `tunegguf.prompts` and tokenizes them
with special-token parsing on and no automatic BOS (the renderer wrote it where needed).
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np


@runtime_checkable
class Backend(Protocol):
    name: str
    """Shown in reports, e.g. "hf", "gguf:Q4_K_M"."""

    def tokenize(self, text: str) -> list[int]:
        """Token ids of a rendered prompt, exactly as the model is fed them."""

    def next_token_logprobs(self, prompts: Sequence[str]) -> np.ndarray:
        """Log-softmax over the whole vocabulary at the answer position: [n, vocab] float32."""

    def generate(self, prompts: Sequence[str], max_new_tokens: int) -> list[tuple[str, bool]]:
        """Greedy completion of each prompt: (text without the stop token, stopped at EOS)."""

    def close(self) -> None:
        """Free the model."""
