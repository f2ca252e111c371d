"""Transformers backend: batched label scoring, teacher forcing and greedy generation.

`HFBackend` wraps the scoring shared with the fine-tune stage (`tunegguf.scoring.logprobs`),
plus loading and generation, in the evaluator's Backend protocol.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence, cast

import numpy as np

from tunegguf.errors import TuneGGUFError
from tunegguf.evaluate.backends.base import TOP_K, TokenGeneration, top_ids
from tunegguf.models.adapter import require_adapter_dir
from tunegguf.scoring.logprobs import (
    ScoringPlan,
    batches,
    encode_prompts,
    last_position_logprobs,
    left_pad,
    length_sorted,
    position_logprobs,
)


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
        encoded = encode_prompts(self.tokenizer, prompts)
        results: list[tuple[str, bool]] = [("", False)] * len(encoded)
        with torch.inference_mode():
            # Length-sorted batches pad to almost nothing; results go back in input order.
            for batch in batches(length_sorted([len(ids) for ids in encoded]), self.batch_size):
                input_ids, attention = left_pad([encoded[i] for i in batch], self.pad_id)
                out = self.model.generate(
                    input_ids=input_ids.to(device), attention_mask=attention.to(device), generation_config=config
                )
                for index, row in zip(batch, out[:, input_ids.shape[1]:].tolist()):
                    stop = next((i for i, tok in enumerate(row) if tok in self.stop_ids), None)
                    kept = row if stop is None else row[:stop]
                    results[index] = (self.tokenizer.decode(kept, skip_special_tokens=False), stop is not None)
        return results

    def teacher_forced_logprobs(self, prompt_ids: Sequence[Sequence[int]],
                                answer_ids: Sequence[Sequence[int]]) -> np.ndarray:
        """Each pair fed as prompt + answer[:-1] (the last answer token predicts nothing
        here); its len(answer) rows are those of the positions that predict an answer token.
        The pairs run batched, length-sorted, with their shared prefix's KV computed once,
        and only those positions go through the LM head (`position_logprobs`): memory
        sum(len(answer)) x vocab, the size of the result, not total x vocab."""
        vocab = self.info["vocab_size"]
        if len(prompt_ids) != len(answer_ids):
            raise TuneGGUFError(f"teacher forcing needs one answer per prompt: got {len(prompt_ids)} prompts "
                                f"and {len(answer_ids)} answers")
        pairs = [(self._ids(p, "prompt"), self._ids(a, "answer")) for p, a in zip(prompt_ids, answer_ids)]
        if any(not prompt for prompt, _ in pairs):
            raise TuneGGUFError("an empty prompt has no answer position")
        if not ScoringPlan.of(self.model).fast:
            blocks = [self._teacher_forced_one(p, a) for p, a in pairs]
            return np.concatenate(blocks) if blocks else np.zeros((0, vocab), dtype=np.float32)
        fed = [prompt + answer[:-1] for prompt, answer in pairs]
        positions = [range(len(prompt) - 1, len(prompt) - 1 + len(answer)) for prompt, answer in pairs]
        return position_logprobs(self.model, fed, positions, self.batch_size, self.pad_id, vocab_size=vocab)

    def _teacher_forced_one(self, prompt: list[int], answer: list[int]) -> np.ndarray:
        """One pair in one forward: the path for models `position_logprobs` cannot drive."""
        import torch

        if not answer:
            return np.zeros((0, self.info["vocab_size"]), dtype=np.float32)
        device = next(self.model.parameters()).device
        fed = torch.tensor([prompt + answer[:-1]], dtype=torch.long, device=device)
        with torch.inference_mode():
            logits = self.model(input_ids=fed, logits_to_keep=len(answer)).logits[0, -len(answer):, :]
            return torch.log_softmax(logits.float(), dim=-1).cpu().numpy()

    def generate_ids(
        self, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int, top_k: int = TOP_K
    ) -> list[TokenGeneration]:
        """Greedy continuation of id lists, batched with left padding like `generate`
        (generate derives each row's positions from the attention mask, so a padded row
        sees the positions it would unpadded).

        Each step's top_k is taken as the step runs, by a logits processor that changes
        nothing: keeping every step's logits (output_logits) would hold
        batch x steps x vocab floats, 0.5 GB for a 128k vocabulary."""
        import torch
        from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

        rows = [self._ids(ids, "prompt") for ids in prompt_ids]
        if any(not ids for ids in rows):
            raise TuneGGUFError("an empty prompt has no answer position")
        if max_new_tokens <= 0:
            return [TokenGeneration(ids=[], stopped=False, top_ids=[], text="") for _ in rows]
        rank = max(1, top_k)

        class RankRecorder(LogitsProcessor):
            def __init__(self) -> None:
                self.steps: list[list[list[int]]] = []  # [step][row] -> ids

            def __call__(self, input_ids: Any, scores: Any) -> Any:
                # The scores greedy argmaxes: float32 logits, no processor ran before this one.
                values = scores.float().cpu().numpy()
                self.steps.append([top_ids(row, rank)[:top_k] for row in values])
                return scores

        config = GenerationConfig(
            max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=self.stop_ids, pad_token_id=self.pad_id
        )
        stops = set(self.stop_ids)
        device = next(self.model.parameters()).device
        results: list[TokenGeneration | None] = [None] * len(rows)
        with torch.inference_mode():
            # Length-sorted batches pad to almost nothing; results go back in input order.
            for batch in batches(length_sorted([len(ids) for ids in rows]), self.batch_size):
                input_ids, attention = left_pad([rows[i] for i in batch], self.pad_id)
                recorder = RankRecorder()
                out = self.model.generate(
                    input_ids=input_ids.to(device), attention_mask=attention.to(device), generation_config=config,
                    logits_processor=LogitsProcessorList([recorder]),
                )
                for row, (index, generated) in enumerate(zip(batch, out[:, input_ids.shape[1]:].tolist())):
                    stop = next((i for i, tok in enumerate(generated) if tok in stops), None)
                    kept = generated if stop is None else generated[:stop]
                    n_ranked = len(kept) + (stop is not None)
                    results[index] = TokenGeneration(
                        ids=kept, stopped=stop is not None,
                        top_ids=[recorder.steps[i][row] for i in range(n_ranked)],
                        text=self.tokenizer.decode(kept, skip_special_tokens=False),
                    )
        return cast("list[TokenGeneration]", results)  # every index was filled by its batch

    def _ids(self, ids: Sequence[int], what: str) -> list[int]:
        """Plain ints, each an id the embedding has (torch would fail with an index error)."""
        out = [int(t) for t in ids]
        size = int(self.model.get_input_embeddings().num_embeddings)
        bad = next((t for t in out if not 0 <= t < size), None)
        if bad is not None:
            raise TuneGGUFError(f"the {what} holds token id {bad}, outside {self.name}'s vocabulary of {size}")
        return out

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
