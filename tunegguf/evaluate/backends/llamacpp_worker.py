"""The child process behind LlamaCppBackend: it owns one llama.cpp model and answers requests.

Run as `python -m tunegguf.evaluate.backends.llamacpp_worker READ_FD WRITE_FD`. Requests
and replies are pickled over two pipes (multiprocessing Connections), never over stdout,
because llama.cpp's C code may print there. Only llama_cpp and numpy are imported here:
no torch competing for the cores (NOTES.md: 10-20x slower in a busy torch process).
"""

from __future__ import annotations

import contextlib
import os
import sys
from multiprocessing.connection import Connection
from typing import Any, Iterator, Sequence

import numpy as np


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    # Same as backends.base.log_softmax; repeated to keep this process's imports minimal.
    x = np.asarray(logits, dtype=np.float64)
    top = x.max(axis=-1, keepdims=True)
    return (x - top - np.log(np.exp(x - top).sum(axis=-1, keepdims=True))).astype(np.float32)


def _top_ids(logits: np.ndarray, k: int) -> list[int]:
    # Same as backends.base.top_ids (argsort(-x, kind="stable")[:k] without a full sort).
    x = np.asarray(logits).ravel()
    k = max(0, min(int(k), x.size))
    if k == 0:
        return []
    candidates = np.flatnonzero(x >= np.partition(x, x.size - k)[x.size - k])
    return [int(t) for t in candidates[np.argsort(-x[candidates], kind="stable")[:k]]]


@contextlib.contextmanager
def _model_params(**overrides: Any) -> Iterator[None]:
    """Set llama_model_params fields that `Llama()` has no argument for, during one load.

    `use_extra_bufts=False` keeps llama.cpp from repacking weights for its CPU "extra
    buffer" kernels: with llama-cpp-python 0.3.36 on an AMX/AVX-512 CPU that path
    segfaults in the first decode of a Q8_0 or Q4_K_M SmolLM2 file (f16 is unaffected).
    Only this worker process is patched, and only while the model loads.
    """
    import llama_cpp.llama_cpp as lib

    original = lib.llama_model_default_params

    def patched() -> Any:
        params = original()
        for key, value in overrides.items():
            if hasattr(params, key):  # older builds lack the field: keep their default
                setattr(params, key, value)
        return params

    lib.llama_model_default_params = patched
    try:
        yield
    finally:
        lib.llama_model_default_params = original


class LlamaWorker:
    """One Llama model; prompts are fed with the KV cache of the shared prefix kept."""

    def __init__(self, path: str, n_ctx: int, n_threads: int, extra_buffers: bool = False) -> None:
        import llama_cpp

        from tunegguf.console import quiet_llama_cpp

        quiet_llama_cpp()
        self._lib = llama_cpp
        if not os.path.isfile(path):
            raise ValueError(f"GGUF file not found: {path}")
        try:
            with _model_params(use_extra_bufts=extra_buffers):
                self.llm = llama_cpp.Llama(
                    model_path=path,
                    n_ctx=n_ctx,
                    n_batch=min(512, n_ctx),
                    n_threads=n_threads,
                    n_threads_batch=n_threads,
                    logits_all=False,  # only the last position is read, via llama_get_logits_ith
                    verbose=False,
                    seed=0,
                )
        except ValueError as exc:
            raise ValueError(
                f"llama.cpp cannot load {path} ({exc}); the file is truncated, corrupt or not a GGUF model"
            ) from None
        self.n_vocab = int(self.llm.n_vocab())
        self.n_ctx = int(self.llm.n_ctx())
        # Recurrent/hybrid models keep state that cannot be cut back to a prefix.
        self.reuse_prefix = not (getattr(self.llm, "_is_recurrent", False) or getattr(self.llm, "_is_hybrid", False))
        vocab = self.llm._model.vocab
        self.eog_ids = [t for t in range(self.n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t)]
        self.info = {
            "runtime": "llama.cpp",
            "llama_cpp_python": llama_cpp.__version__,
            "file": path,
            "n_ctx": self.n_ctx,
            "n_threads": n_threads,
            "vocab_size": self.n_vocab,
            "stop_token_ids": self.eog_ids,
            "prefix_cache": self.reuse_prefix,
            "extra_buffers": extra_buffers,
        }

    # ---- protocol verbs ---------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.llm.tokenize(t.encode("utf-8"), add_bos=False, special=True) for t in texts]

    def next_token_logprobs(self, prompts: Sequence[str]) -> np.ndarray:
        out = np.empty((len(prompts), self.n_vocab), dtype=np.float32)
        for row, ids in enumerate(self.tokenize(prompts)):
            out[row] = _log_softmax(self._feed(ids))
        return out

    def generate(self, prompts: Sequence[str], max_new_tokens: int) -> list[tuple[str, bool]]:
        # The same greedy loop as generate_ids (argmax, the lowest id on ties, as torch.argmax).
        return [(text, stopped) for _, stopped, _, text in self.generate_ids(self.tokenize(prompts), max_new_tokens, 1)]

    def teacher_forced_logprobs(self, prompt_ids: Sequence[Sequence[int]],
                                answer_ids: Sequence[Sequence[int]]) -> np.ndarray:
        """Every pair's answer rows, one after the other (the Backend protocol's shape)."""
        if len(prompt_ids) != len(answer_ids):
            raise ValueError(f"{len(prompt_ids)} prompts but {len(answer_ids)} answers")
        blocks = [self._teacher_forced_one(p, a) for p, a in zip(prompt_ids, answer_ids)]
        return np.concatenate(blocks) if blocks else np.zeros((0, self.n_vocab), dtype=np.float32)

    def _teacher_forced_one(self, prompt_ids: Sequence[int], answer_ids: Sequence[int]) -> np.ndarray:
        """Log-softmax at every answer position: row j predicts answer_ids[j] after
        prompt_ids + answer_ids[:j].

        The context keeps logits for one position only (logits_all=False, so a long prompt
        costs no n_ctx x vocab buffer); this decodes with the low-level batch instead and
        asks for logits exactly at the positions that predict an answer token: the last
        prompt position and every answer position but the last. The last answer token
        predicts nothing here, so it is not decoded at all.
        """
        prompt, answer = self._ids(prompt_ids, "prompt"), self._ids(answer_ids, "answer")
        if not prompt:
            raise ValueError("an empty prompt has no answer position")
        if not answer:
            return np.zeros((0, self.n_vocab), dtype=np.float32)
        if len(prompt) + len(answer) > self.n_ctx:
            raise ValueError(
                f"a prompt of {len(prompt)} tokens + an answer of {len(answer)} does not fit n_ctx={self.n_ctx}; "
                "raise evaluate.n_ctx"
            )
        fed = prompt + answer[:-1]
        first = len(prompt) - 1  # the first position whose logits are a row
        keep = self._keep_prefix(fed, limit=first)
        out = np.empty((len(answer), self.n_vocab), dtype=np.float32)
        llm, batch = self.llm, self.llm._batch.batch
        try:
            for start in range(keep, len(fed), llm.n_batch):
                chunk = fed[start : start + llm.n_batch]
                batch.n_tokens = len(chunk)
                for i, token in enumerate(chunk):
                    batch.token[i] = token
                    batch.pos[i] = start + i
                    batch.n_seq_id[i] = 1
                    batch.seq_id[i][0] = 0
                    batch.logits[i] = start + i >= first
                # Without any output requested some llama.cpp builds still compute the last
                # row; asking for it keeps every build on the same, documented path.
                batch.logits[len(chunk) - 1] = True
                llm._ctx.decode(llm._batch)
                # The Llama object's bookkeeping, as Llama.eval keeps it, so the next
                # _feed sees exactly what the KV cache holds.
                llm.input_ids[start : start + len(chunk)] = chunk
                llm.n_tokens = start + len(chunk)
                for i in range(max(0, first - start), len(chunk)):
                    pointer = self._lib.llama_get_logits_ith(llm._ctx.ctx, i)
                    if not pointer:
                        raise RuntimeError(f"llama.cpp kept no logits for position {start + i}")
                    row = np.ctypeslib.as_array(pointer, shape=(self.n_vocab,))
                    out[start + i - first] = _log_softmax(row)
        except Exception:
            # A half-decoded chunk leaves the cache in an unknown state: start clean next time.
            llm.reset()
            llm._ctx.kv_cache_seq_rm(-1, 0, -1)
            raise
        return out

    def generate_ids(
        self, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int, top_k: int = 5
    ) -> list[tuple[list[int], bool, list[list[int]], str]]:
        """Greedy continuation of each id list, with each step's top_k ids (before that
        step's token is chosen), as (ids, stopped, top_ids, text) tuples."""
        results = []
        eog = set(self.eog_ids)
        for raw in prompt_ids:
            ids = self._ids(raw, "prompt")
            logits = self._feed(ids, reserve=max_new_tokens)
            new: list[int] = []
            tops: list[list[int]] = []
            stopped = False
            while len(new) < max_new_tokens:
                ranked = _top_ids(logits, max(1, top_k))
                tops.append(ranked[:top_k])
                token = ranked[0]  # argmax, the lowest id on ties
                if token in eog:
                    stopped = True
                    break
                new.append(token)
                if len(new) >= max_new_tokens:
                    break
                self.llm.eval([token])
                logits = self._last_logits()
            text = self.llm.detokenize(new, special=True).decode("utf-8", errors="replace")
            results.append((new, stopped, tops, text))
        return results

    # ---- internals --------------------------------------------------------------------
    def _ids(self, ids: Sequence[int], what: str) -> list[int]:
        """Plain ints, each a token of this vocabulary (llama.cpp may abort on others)."""
        out = [int(t) for t in ids]
        bad = next((t for t in out if not 0 <= t < self.n_vocab), None)
        if bad is not None:
            raise ValueError(f"the {what} holds token id {bad}, outside this GGUF's vocabulary of {self.n_vocab}")
        return out

    def _keep_prefix(self, ids: list[int], limit: int) -> int:
        """How many leading ids the KV cache already holds (at most `limit`), with the
        cache and the bookkeeping cut back to them."""
        keep = 0
        if self.reuse_prefix:
            cached = self.llm.input_ids[: self.llm.n_tokens]
            limit = min(len(cached), limit)
            while keep < limit and cached[keep] == ids[keep]:
                keep += 1
        if keep == 0:
            self.llm.reset()
        self.llm.n_tokens = keep
        self.llm._ctx.kv_cache_seq_rm(-1, keep, -1)
        return keep

    def _last_logits(self) -> np.ndarray:
        # With logits_all=False `llm.scores` stays zero; read the context's last row instead.
        pointer = self._lib.llama_get_logits_ith(self.llm._ctx.ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).copy()

    def _feed(self, ids: list[int], reserve: int = 0) -> np.ndarray:
        """Evaluate a prompt and return the logits at its last position.

        The KV cache still holds the previous prompt: keep the common prefix (template,
        system prompt, instruction) and evaluate only the rest. At least one token is
        always evaluated, so there are fresh logits to read.
        """
        if not ids:
            raise ValueError("an empty prompt has no answer position")
        if len(ids) + reserve > self.n_ctx:
            raise ValueError(
                f"a prompt of {len(ids)} tokens (+{reserve} to generate) does not fit n_ctx={self.n_ctx}; "
                "raise evaluate.n_ctx"
            )
        keep = self._keep_prefix(ids, limit=len(ids) - 1)
        self.llm.eval(ids[keep:])
        return self._last_logits()


OPS = ("tokenize", "next_token_logprobs", "generate", "teacher_forced_logprobs", "generate_ids")


def serve(requests: Connection, replies: Connection) -> int:
    """Load the model named by the first request, then answer until "close" or EOF."""
    try:
        settings: dict[str, Any] = requests.recv()
        worker = LlamaWorker(**settings)
    except EOFError:
        return 0
    except Exception as exc:  # the parent turns this into a TuneGGUFError
        replies.send(("error", str(exc)))
        return 1
    replies.send(("ok", worker.info))
    while True:
        try:
            op, args = requests.recv()
        except EOFError:
            return 0
        if op == "close":
            replies.send(("ok", None))
            return 0
        if op not in OPS:
            replies.send(("error", f"unknown request {op!r}"))
            continue
        try:
            result = getattr(worker, op)(*args)
        except Exception as exc:
            replies.send(("error", str(exc)))
        else:
            replies.send(("ok", result))


def main(argv: list[str]) -> int:
    read_fd, write_fd = int(argv[1]), int(argv[2])
    # Anything printed to stdout (by C code too) goes to the log instead.
    os.dup2(2, 1)
    return serve(Connection(read_fd, writable=False), Connection(write_fd, readable=False))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
