"""Scoring on a Transformers model: log-softmax rows at chosen positions of token sequences.

Shared by the fine-tune stage (validation scoring in the loop) and the evaluator's HF
backend, so a checkpoint is picked by exactly the scores the parity report later shows.

The fast path (`position_logprobs`) does three things a plain padded forward does not:
- the prompts' shared prefix (template, system prompt, instruction) is run once, and its
  KV cache is copied into every batch, which then runs only its suffixes;
- batches are cut from the length-sorted sequences, so a batch pads to almost nothing;
- only the wanted positions' hidden states go through the LM head (for a 135M model the
  49,152-wide head costs about a fifth of a token's compute).
Suffixes are right-padded: under a causal mask a real token never sees the padding after
it, so no attention mask is needed and each row keeps the positions it has unpadded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np

# Architectures whose CausalLM forward is exactly `lm_head(decoder(...).last_hidden_state)`,
# so hidden states may be gathered before the head. Others (softcapping, logit scaling)
# go through the model's own forward with `logits_to_keep` as an index tensor.
PLAIN_HEAD_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "smollm3"})
# A shorter shared prefix saves less than the cache copy and the extra forward cost.
MIN_PREFIX = 4


def batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """Consecutive slices of at most `size` items."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def encode_prompts(tokenizer: Any, prompts: Sequence[str]) -> list[list[int]]:
    """Ids of rendered prompts: specials parsed, nothing added (the renderer wrote BOS)."""
    return [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]


def length_sorted(lengths: Sequence[int]) -> list[int]:
    """Indices longest first (stable), so batches cut from them pad to almost nothing and
    the largest batch, the one that could run out of memory, comes first."""
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


def common_prefix_length(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest prefix every sequence starts with."""
    if not seqs:
        return 0
    first, n = seqs[0], min(len(s) for s in seqs)
    for seq in seqs[1:]:
        k = 0
        while k < n and seq[k] == first[k]:
            k += 1
        n = k
    return n


def pad_id_of(tokenizer: Any) -> int:
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return int(pad_id) if pad_id is not None else 0


def last_position_logprobs(
    model: Any, tokenizer: Any, prompts: Sequence[str], batch_size: int = 16, keep_ids: Sequence[int] | None = None
) -> np.ndarray:
    """Log-softmax at each prompt's last position, [n, vocab] (or [n, len(keep_ids)]), in
    input order. The fast path (module docstring); `left_padded_logprobs` is the reference
    and the fallback for models the fast path cannot drive."""
    ids = encode_prompts(tokenizer, prompts)
    if not ids:
        return np.zeros((0, 0), dtype=np.float32)
    if not ScoringPlan.of(model).fast:
        return left_padded_logprobs(model, tokenizer, prompts, batch_size, keep_ids)
    if any(not seq for seq in ids):
        from tunegguf.errors import TuneGGUFError

        raise TuneGGUFError("an empty prompt has no last position to score")
    return position_logprobs(model, ids, [[len(seq) - 1] for seq in ids], batch_size, pad_id_of(tokenizer), keep_ids)


def left_padded_logprobs(
    model: Any, tokenizer: Any, prompts: Sequence[str], batch_size: int = 16, keep_ids: Sequence[int] | None = None
) -> np.ndarray:
    """The plain path: each batch left-padded in input order, the whole prompt run, and
    `logits_to_keep=1` (left padding puts every last token at index -1)."""
    import torch

    device = next(model.parameters()).device
    pad_id = pad_id_of(tokenizer)
    out = []
    was_training = model.training
    model.eval()
    try:
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
    finally:
        if was_training:
            model.train()
    return np.concatenate(out, axis=0) if out else np.zeros((0, 0), dtype=np.float32)


@dataclass(frozen=True)
class ScoringPlan:
    """How the fast path drives one model: `fast` False means use the left-padded path
    (a PEFT prompt-learning adapter, which prepends virtual tokens of its own, or a forward
    without `logits_to_keep`); `prefix` False means no prefix cache (the forward takes no
    `past_key_values`); `body`/`head` set means hidden states are gathered before the head."""

    fast: bool
    prefix: bool
    model: Any = field(default=None, repr=False)
    body: Any = field(default=None, repr=False)
    head: Any = field(default=None, repr=False)

    @staticmethod
    def of(model: Any) -> "ScoringPlan":
        import inspect

        base = model
        peft_config = getattr(model, "active_peft_config", None)
        if peft_config is not None:
            if getattr(peft_config, "is_prompt_learning", False):
                return ScoringPlan(fast=False, prefix=False)
            # LoRA layers are injected into the base model's modules: calling it applies them.
            base = model.get_base_model()
        try:
            params = inspect.signature(base.forward).parameters
        except (TypeError, ValueError):
            return ScoringPlan(fast=False, prefix=False)
        if "logits_to_keep" not in params:
            return ScoringPlan(fast=False, prefix=False)
        prefix = "past_key_values" in params and not getattr(base.config, "is_encoder_decoder", False)
        if prefix and _unsloth_patched(base) and next(base.parameters()).is_cuda:
            # Unsloth swaps in its own forwards on a GPU (its CPU fallback keeps Transformers'
            # own, checked equal to the plain path). A multi-token step after a copied cache
            # is unchecked there, so the GPU runs whole prompts rather than risk a silently
            # different validation score; sorting and the head gather still apply.
            prefix = False
        model_type = getattr(base.config, "model_type", None)
        body = base.get_decoder() if model_type in PLAIN_HEAD_TYPES and hasattr(base, "get_decoder") else None
        head = base.get_output_embeddings() if body is not None else None
        if body is None or head is None:
            return ScoringPlan(fast=True, prefix=prefix, model=base)
        return ScoringPlan(fast=True, prefix=prefix, model=base, body=body, head=head)


def _unsloth_patched(model: Any) -> bool:
    """Whether Unsloth replaced this model's (or its decoder's) forward."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    return any(getattr(type(m).forward, "__module__", "").startswith("unsloth")
               for m in (model, decoder) if m is not None)


def position_logprobs(
    model: Any,
    seqs: Sequence[Sequence[int]],
    positions: Sequence[Sequence[int]],
    batch_size: int,
    pad_id: int,
    keep_ids: Sequence[int] | None = None,
    vocab_size: int | None = None,
) -> np.ndarray:
    """Log-softmax rows at `positions[i]` (indices into `seqs[i]`, each row the
    distribution of the token after that position) of every sequence, concatenated in input
    order: [sum len(positions), vocab] (or [.., len(keep_ids)]). See the module docstring."""
    import torch

    plan = ScoringPlan.of(model)
    if not plan.fast:
        raise ValueError("this model's forward takes no logits_to_keep; score it with left_padded_logprobs")
    seqs = [list(s) for s in seqs]
    wanted = [[int(p) for p in ps] for ps in positions]
    for seq, ps in zip(seqs, wanted, strict=True):
        bad = next((p for p in ps if not 0 <= p < len(seq)), None)
        if bad is not None:
            raise ValueError(f"position {bad} is outside a sequence of {len(seq)} tokens")
    active = [i for i, ps in enumerate(wanted) if ps]
    offsets = np.cumsum([0] + [len(ps) for ps in wanted])
    if not active:
        width = len(keep_ids) if keep_ids is not None else (vocab_size or int(plan.model.config.vocab_size))
        return np.zeros((int(offsets[-1]), width), dtype=np.float32)
    out = None  # allocated at the first block: the head's width, which may pad the vocabulary
    keep = torch.tensor(list(keep_ids), dtype=torch.long) if keep_ids is not None else None
    device = next(model.parameters()).device

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            # The prefix ends before the first wanted position of every sequence: a
            # position inside it would have no hidden state here.
            prefix_len = min(common_prefix_length([seqs[i] for i in active]), min(min(wanted[i]) for i in active))
            prefix_kv = None
            if plan.prefix and len(active) > 1 and prefix_len >= MIN_PREFIX:
                prefix_kv = _prefix_cache(plan, seqs[active[0]][:prefix_len], device)
            if prefix_kv is None:
                prefix_len = 0
            order = length_sorted([len(seqs[i]) for i in active])
            for batch in batches([active[j] for j in order], batch_size):
                suffixes = [seqs[i][prefix_len:] for i in batch]
                span = max(len(s) for s in suffixes)
                input_ids = torch.full((len(batch), span), pad_id, dtype=torch.long)
                for row, suffix in enumerate(suffixes):
                    input_ids[row, : len(suffix)] = torch.tensor(suffix, dtype=torch.long)
                rows = torch.tensor([r for r, i in enumerate(batch) for _ in wanted[i]], dtype=torch.long)
                cols = torch.tensor([p - prefix_len for i in batch for p in wanted[i]], dtype=torch.long)
                logits = _logits_at(plan, input_ids.to(device), prefix_kv, rows.to(device), cols.to(device))
                logprobs = torch.log_softmax(logits.float(), dim=-1)
                if keep is not None:
                    logprobs = logprobs[:, keep.to(logprobs.device)]
                block = logprobs.cpu().numpy()
                if out is None:
                    out = np.empty((int(offsets[-1]), block.shape[1]), dtype=np.float32)
                start = 0
                for i in batch:
                    n = len(wanted[i])
                    out[offsets[i] : offsets[i] + n] = block[start : start + n]
                    start += n
    finally:
        if was_training:
            model.train()
    return out


def _prefix_cache(plan: ScoringPlan, prefix: list[int], device: Any) -> list[tuple[Any, Any]] | None:
    """Each layer's (key, value) of the prefix, batch 1; None when the cache the model
    builds is not made of plain growing layers (sliding windows, recurrent states), which
    cannot simply be copied into a larger batch."""
    import torch
    from transformers.cache_utils import DynamicCache, DynamicLayer

    runner = plan.body if plan.body is not None else plan.model
    ids = torch.tensor([prefix], dtype=torch.long, device=device)
    kwargs = {} if plan.body is not None else {"logits_to_keep": 1}
    cache = runner(input_ids=ids, use_cache=True, **kwargs).past_key_values
    if type(cache) is not DynamicCache or not all(type(layer) is DynamicLayer for layer in cache.layers):
        return None
    return [(layer.keys, layer.values) for layer in cache.layers]


def _logits_at(plan: ScoringPlan, input_ids: Any, prefix_kv: Any, rows: Any, cols: Any) -> Any:
    """Logits [len(rows), vocab] at (rows[j], cols[j]) of the batch's suffixes."""
    import torch
    from transformers.cache_utils import DynamicCache

    kwargs: dict[str, Any] = {"use_cache": False}
    if prefix_kv is not None:
        # A fresh cache per batch: the forward appends the suffixes' keys to it. The
        # prefix is expanded (a view), and the first append copies it into each row.
        n = input_ids.shape[0]
        kwargs = {
            "use_cache": True,
            "past_key_values": DynamicCache(
                ddp_cache_data=[(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v in prefix_kv]
            ),
        }
    if plan.body is not None:
        hidden = plan.body(input_ids=input_ids, **kwargs).last_hidden_state
        return plan.head(hidden[rows, cols])
    # Any other causal LM: its own head over the distinct columns wanted, then gathered.
    distinct, where = torch.unique(cols, return_inverse=True)
    logits = plan.model(input_ids=input_ids, logits_to_keep=distinct, **kwargs).logits
    return logits[rows, where]


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
