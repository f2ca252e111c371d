"""The inference interface the evaluator speaks; one implementation per runtime.

Every backend receives prompts already rendered by `tunegguf.prompts` and tokenizes them
with special-token parsing on and no automatic BOS (the renderer wrote it where needed).
The evaluator only calls these verbs, so it never needs to know which runtime it scores.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

Generation = tuple[str, bool]
"""(text without the stop token, whether generation stopped at EOS/end-of-turn)."""


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

    def close(self) -> None:
        """Free the model (and its process)."""


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64, returned as float32 (stable for large logits)."""
    x = np.asarray(logits, dtype=np.float64)
    top = x.max(axis=-1, keepdims=True)
    out = x - top - np.log(np.exp(x - top).sum(axis=-1, keepdims=True))
    return out.astype(np.float32)
