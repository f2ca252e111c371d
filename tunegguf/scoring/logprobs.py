"""Label scoring on a Transformers model: the log-softmax at each prompt's last position.

Shared by the fine-tune stage (validation scoring in the loop) and the evaluator's HF
backend, so a checkpoint is picked by exactly the scores the parity report later shows.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np


def batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """Consecutive slices of at most `size` items."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def encode_prompts(tokenizer: Any, prompts: Sequence[str]) -> list[list[int]]:
    """Ids of rendered prompts: specials parsed, nothing added (the renderer wrote BOS)."""
    return [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]


def last_position_logprobs(
    model: Any, tokenizer: Any, prompts: Sequence[str], batch_size: int = 16, keep_ids: Sequence[int] | None = None
) -> np.ndarray:
    """Log-softmax at each prompt's last position, [n, vocab] (or [n, len(keep_ids)]).

    Left padding puts every prompt's last token at index -1, and `logits_to_keep=1` skips
    the LM head everywhere else (the head is most of the compute for a small model).
    """
    import torch

    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = []
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for batch in batches(list(prompts), batch_size):
            input_ids, attention = left_pad(encode_prompts(tokenizer, batch), pad_id)
            # Positions must count from each prompt's first real token, as unpadded.
            position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
            logits = model(
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                position_ids=position_ids.to(device),
                logits_to_keep=1,
            ).logits[:, -1, :].float()
            logprobs = torch.log_softmax(logits, dim=-1)
            if keep_ids is not None:
                logprobs = logprobs[:, list(keep_ids)]
            out.append(logprobs.cpu().numpy())
    if was_training:
        model.train()
    return np.concatenate(out, axis=0) if out else np.zeros((0, 0), dtype=np.float32)


def left_pad(ids: list[list[int]], pad_id: int) -> tuple[Any, Any]:
    """Token ids and attention mask as [n, width] tensors, padded on the left."""
    import torch

    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(ids), width), dtype=torch.long)
    for row, seq in enumerate(ids):
        input_ids[row, width - len(seq):] = torch.tensor(seq)
        attention[row, width - len(seq):] = 1
    return input_ids, attention
