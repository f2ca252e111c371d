"""Transformers backend: batched label scoring (one forward pass) and greedy generation.

`HFBackend` wraps the scoring shared with the fine-tune stage (`tunegguf.scoring.logprobs`),
plus loading and generation, in the evaluator's Backend protocol.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tunegguf.errors import TuneGGUFError
from tunegguf.models.adapter import require_adapter_dir
from tunegguf.scoring.logprobs import batches, encode_prompts, last_position_logprobs, left_pad


def stop_token_ids(tokenizer: Any, generation_config: Any = None) -> list[int]:
    """Every id that ends a turn: the tokenizer's EOS plus the generation config's list
    (Llama 3 stops on <|eot_id|>, <|eom_id|> and <|end_of_text|>)."""
    ids: set[int] = set()
    for source in (getattr(generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(int(x) for x in source)
    return sorted(ids)


class HFBackend:
    """A Transformers model (optionally base + LoRA adapter) behind the Backend protocol."""

    def __init__(
        self,
        model: str | Path,
        adapter_dir: str | Path | None = None,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 16,
        name: str = "hf",
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from tunegguf.models.registry import describe_hub_error, resolve_model

        started = time.perf_counter()
        resolved = resolve_model(str(model))
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        # float32 on the CPU (half precision is slow there and would blur the reference);
        # on a GPU the checkpoint's own dtype.
        torch_dtype: Any = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
        if torch_dtype is None:
            torch_dtype = torch.float32 if device == "cpu" else "auto"
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(resolved.path)
            self.model = AutoModelForCausalLM.from_pretrained(resolved.path, dtype=torch_dtype)
        except OSError as exc:
            raise describe_hub_error(resolved.name, exc) from None
        if adapter_dir is not None:
            self.model = attach_adapter(self.model, adapter_dir)
        self.model.to(device).eval()
        self.name = name
        self.batch_size = batch_size
        self.stop_ids = stop_token_ids(self.tokenizer, getattr(self.model, "generation_config", None))
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.stop_ids[0]
        self.info = {
            "runtime": "transformers",
            "model": resolved.path,
            "adapter": str(adapter_dir) if adapter_dir else None,
            "device": device,
            "dtype": str(next(self.model.parameters()).dtype).replace("torch.", ""),
            "vocab_size": int(self.model.config.vocab_size),
            "stop_token_ids": self.stop_ids,
            "load_seconds": round(time.perf_counter() - started, 3),
        }

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        return encode_prompts(self.tokenizer, texts)

    def next_token_logprobs(self, prompts: Sequence[str]) -> np.ndarray:
        return last_position_logprobs(self.model, self.tokenizer, prompts, self.batch_size)

    def generate(self, prompts: Sequence[str], max_new_tokens: int) -> list[tuple[str, bool]]:
        import torch
        from transformers import GenerationConfig

        # An explicit config, so sampling settings in the checkpoint cannot sneak in.
        config = GenerationConfig(
            max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=self.stop_ids, pad_token_id=self.pad_id
        )
        device = next(self.model.parameters()).device
        results: list[tuple[str, bool]] = []
        with torch.inference_mode():
            for batch in batches(list(prompts), self.batch_size):
                input_ids, attention = left_pad(encode_prompts(self.tokenizer, batch), self.pad_id)
                out = self.model.generate(
                    input_ids=input_ids.to(device), attention_mask=attention.to(device), generation_config=config
                )
                for row in out[:, input_ids.shape[1]:].tolist():
                    stop = next((i for i, tok in enumerate(row) if tok in self.stop_ids), None)
                    kept = row if stop is None else row[:stop]
                    results.append((self.tokenizer.decode(kept, skip_special_tokens=False), stop is not None))
        return results

    def close(self) -> None:
        import gc

        self.model = None
        gc.collect()


def attach_adapter(model: Any, adapter_dir: str | Path, *, merge: bool = True,
                    hint: str = "pass the base it was trained on with --hf") -> Any:
    """Base + LoRA adapter: merged (the same weights the GGUF export writes), or unmerged
    (PEFT applies the low-rank update on the fly) so the merge itself can be measured."""
    adapter_dir = require_adapter_dir(adapter_dir)
    from peft import PeftModel

    try:
        attached = PeftModel.from_pretrained(model, str(adapter_dir))
        return attached.merge_and_unload() if merge else attached.eval()
    except (RuntimeError, ValueError, KeyError) as exc:
        # Typically a shape mismatch: the adapter was trained on another base model.
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TuneGGUFError(
            f"the adapter in {adapter_dir} does not fit this base model ({first[:200]}); {hint}"
        ) from None
