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
from typing import Any, Callable, Iterator, Sequence

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

    `use_extra_bufts` says whether llama.cpp repacks weights for its CPU "extra buffer"
    kernels (CPU_REPACK, AMX): on one AMX Xeon that path segfaulted in the first decode of
    quantized SmolLM2 files, on AVX2 and AVX-512 EPYCs it runs, so the caller decides per
    host (evaluate.backends.kernels probes it). Only this worker process is patched, and
    only while the model loads.
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


@contextlib.contextmanager
def _context_params(**overrides: Any) -> Iterator[None]:
    """Set llama_context_params fields that `Llama()` has no argument for (n_seq_max,
    kv_unified), during one load, the way `_model_params` sets the model's.

    Patching keeps the one `Llama()` load for both paths: the same tokenizer, detokenizer,
    vocabulary and close handling, and n_seq_max=1 is today's context untouched.
    """
    import llama_cpp.llama_cpp as lib

    original = lib.llama_context_default_params

    def patched() -> Any:
        params = original()
        for key, value in overrides.items():
            if not hasattr(params, key):
                raise ValueError(f"this llama-cpp-python build has no context parameter {key!r}")
            setattr(params, key, value)
        return params

    lib.llama_context_default_params = patched
    try:
        yield
    finally:
        lib.llama_context_default_params = original


def _common_length(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    """How many leading ids a and b share (at most `limit`)."""
    n = min(len(a), len(b), limit)
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class LlamaWorker:
    """One Llama model answering the protocol verbs.

    With n_seq_max > 1 (what LlamaCppBackend asks for) the context has a unified KV cache
    shared by up to n_seq_max sequences: a request's sequences are packed into groups, each
    group starts from an empty cache, its shared prefix is decoded once, and every
    sequence's suffix goes into the same llama_decode calls under its own sequence id.
    With n_seq_max=1 prompts are fed one per decode with the shared prefix kept: the exact
    one-at-a-time path, the baseline batched results are compared with, and the path of
    recurrent/hybrid models, whose state cannot be shared between sequences this way.
    """

    def __init__(self, path: str, n_ctx: int, n_threads: int, extra_buffers: bool = False,
                 n_seq_max: int = 1) -> None:
        # n_seq_max defaults to 1 here, the exact path that tests of the worker's internals
        # build directly; LlamaCppBackend (and so every evaluation) asks for 16.
        import llama_cpp

        from tunegguf.console import quiet_llama_cpp

        quiet_llama_cpp()
        self._lib = llama_cpp
        if not os.path.isfile(path):
            raise ValueError(f"GGUF file not found: {path}")
        if int(n_seq_max) < 1:
            raise ValueError(f"n_seq_max must be at least 1, not {n_seq_max}")
        n_batch = min(512, n_ctx)
        # llama.cpp caps the sequences of one context (LLAMA_MAX_SEQ); a generation step puts
        # one token of every sequence in a decode, so they must also fit one batch.
        n_seq_max = max(1, min(int(n_seq_max), n_batch, int(llama_cpp.llama_max_parallel_sequences())))
        self.llm = self._load(path, n_ctx, n_batch, n_threads, extra_buffers, n_seq_max)
        # Recurrent/hybrid models keep state that cannot be cut back to a prefix.
        recurrent = bool(getattr(self.llm, "_is_recurrent", False) or getattr(self.llm, "_is_hybrid", False))
        if recurrent and n_seq_max > 1:
            # Their per-sequence state cannot share a prefix through seq_cp of KV cells: load
            # again as today's one-sequence context (rare, and exact beats fast here).
            self.llm.close()
            n_seq_max = 1
            self.llm = self._load(path, n_ctx, n_batch, n_threads, extra_buffers, n_seq_max)
        self.reuse_prefix = not recurrent
        self.n_seq_max = n_seq_max
        self.batched = n_seq_max > 1
        self.n_vocab = int(self.llm.n_vocab())
        self.n_ctx = int(self.llm.n_ctx())
        self.n_batch = int(self.llm.n_batch)
        vocab = self.llm._model.vocab
        self.eog_ids = [t for t in range(self.n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t)]
        # The batched path's own state: a batch whose tokens can each carry every sequence id.
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, n_seq_max) if self.batched else None
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
            "n_seq_max": n_seq_max,
            "batched": self.batched,
        }

    def _load(self, path: str, n_ctx: int, n_batch: int, n_threads: int, extra_buffers: bool,
              n_seq_max: int) -> Any:
        # kv_unified: the sequences share one pool of n_ctx cells (so n_ctx keeps its meaning
        # for a single prompt), a prefix cell decoded for the whole group is one cell tagged with many
        # sequence ids (no copy), and suffixes of unequal length are not split into streams.
        context = {"n_seq_max": n_seq_max, "kv_unified": True} if n_seq_max > 1 else {}
        # No flash attention, in either context. llama.cpp's CPU flash-attention kernel sums
        # the values in half precision: on SmolLM2 (SST-2 dev, 160 rows, 1 thread) it moved the
        # demo's Q8_0 label log-probs by up to 0.99 against the one-at-a-time path and flipped
        # 2 near-tie predictions; without it the batched path flipped none (max |delta| 0.57)
        # at the same speed (28.7 s vs 28.0 s for the 160 rows).
        try:
            with _model_params(use_extra_bufts=extra_buffers), _context_params(**context):
                llm = self._lib.Llama(
                    model_path=path,
                    n_ctx=n_ctx,
                    n_batch=n_batch,
                    n_threads=n_threads,
                    n_threads_batch=n_threads,
                    logits_all=False,  # logits are read where asked for, via llama_get_logits_ith
                    flash_attn=False,
                    verbose=False,
                    seed=0,
                )
        except ValueError as exc:
            raise ValueError(
                f"llama.cpp cannot load {path} ({exc}); the file is truncated, corrupt or not a GGUF model"
            ) from None
        return llm

    def close(self) -> None:
        if self._batch is not None:
            self._lib.llama_batch_free(self._batch)
            self._batch = None
        self.llm.close()

    # ---- protocol verbs ---------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.llm.tokenize(t.encode("utf-8"), add_bos=False, special=True) for t in texts]

    def next_token_logprobs(self, prompts: Sequence[str]) -> np.ndarray:
        rows = self.tokenize(prompts)
        out = np.empty((len(rows), self.n_vocab), dtype=np.float32)
        if not self.batched:
            for row, ids in enumerate(rows):
                out[row] = _log_softmax(self._feed(ids))
            return out
        for ids in rows:
            self._check_prompt(ids)

        def keep(j: int, pos: int, logits: np.ndarray) -> None:
            out[j] = _log_softmax(logits)

        self._batched(rows, [len(ids) - 1 for ids in rows], keep)
        return out

    def generate(self, prompts: Sequence[str], max_new_tokens: int) -> list[tuple[str, bool]]:
        # The same greedy loop as generate_ids (argmax, the lowest id on ties, as torch.argmax).
        return [(text, stopped) for _, stopped, _, text in self.generate_ids(self.tokenize(prompts), max_new_tokens, 1)]

    def teacher_forced_logprobs(self, prompt_ids: Sequence[Sequence[int]],
                                answer_ids: Sequence[Sequence[int]]) -> np.ndarray:
        """Every pair's answer rows, one after the other (the Backend protocol's shape)."""
        if len(prompt_ids) != len(answer_ids):
            raise ValueError(f"{len(prompt_ids)} prompts but {len(answer_ids)} answers")
        if not self.batched:
            blocks = [self._teacher_forced_one(p, a) for p, a in zip(prompt_ids, answer_ids)]
            return np.concatenate(blocks) if blocks else np.zeros((0, self.n_vocab), dtype=np.float32)
        pairs = [self._check_pair(p, a) for p, a in zip(prompt_ids, answer_ids)]
        offsets = np.cumsum([0] + [len(a) for _, a in pairs])
        out = np.empty((int(offsets[-1]), self.n_vocab), dtype=np.float32)
        # Pairs with an empty answer have no row and are not decoded at all.
        scored = [i for i, (_, a) in enumerate(pairs) if a]
        # Row j of a pair predicts answer[j] after prompt + answer[:j]: logits at the last
        # prompt position and every answer position but the last; the last answer token
        # predicts nothing here, so it is not decoded.
        fed = [pairs[i][0] + pairs[i][1][:-1] for i in scored]
        firsts = [len(pairs[i][0]) - 1 for i in scored]

        def keep(j: int, pos: int, logits: np.ndarray) -> None:
            out[offsets[scored[j]] + pos - firsts[j]] = _log_softmax(logits)

        self._batched(fed, firsts, keep)
        return out

    def _teacher_forced_one(self, prompt_ids: Sequence[int], answer_ids: Sequence[int]) -> np.ndarray:
        """Log-softmax at every answer position: row j predicts answer_ids[j] after
        prompt_ids + answer_ids[:j] (the one-at-a-time path).

        The context keeps logits for one position only (logits_all=False, so a long prompt
        costs no n_ctx x vocab buffer); this decodes with the low-level batch instead and
        asks for logits exactly at the positions that predict an answer token: the last
        prompt position and every answer position but the last. The last answer token
        predicts nothing here, so it is not decoded at all.
        """
        prompt, answer = self._check_pair(prompt_ids, answer_ids)
        if not answer:
            return np.zeros((0, self.n_vocab), dtype=np.float32)
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
        if self.batched:
            return self._generate_batched(prompt_ids, max_new_tokens, top_k)
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
            results.append((new, stopped, tops, self._text(new)))
        return results

    def _generate_batched(
        self, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int, top_k: int
    ) -> list[tuple[list[int], bool, list[list[int]], str]]:
        """generate_ids with every unfinished sequence of a group advancing one token per
        llama_decode; a sequence leaves its group at an end-of-generation id or its budget.
        Each step is the one-at-a-time loop's step, so the contract is the same."""
        rows = [self._ids(raw, "prompt") for raw in prompt_ids]
        budget = max(0, int(max_new_tokens))
        for ids in rows:
            self._check_prompt(ids, reserve=max_new_tokens)
        new: list[list[int]] = [[] for _ in rows]
        tops: list[list[list[int]]] = [[] for _ in rows]
        stopped = [False] * len(rows)
        if budget == 0 or not rows:
            return [([], False, [], "") for _ in rows]
        eog = set(self.eog_ids)
        ranks = max(1, top_k)
        pending: dict[int, np.ndarray] = {}  # group slot -> the logits its next step reads

        def step(index: int, logits: np.ndarray) -> int | None:
            """One greedy step of rows[index]: the token to decode next, or None when done."""
            ranked = _top_ids(logits, ranks)
            tops[index].append(ranked[:top_k])
            token = ranked[0]  # argmax, the lowest id on ties
            if token in eog:
                stopped[index] = True
                return None
            new[index].append(token)
            return token if len(new[index]) < budget else None

        # The last generated token is never decoded, so a sequence needs budget - 1 cells
        # after its prompt; reserving budget keeps the same bound as the n_ctx check.
        for group in self._groups(rows, [len(ids) - 1 for ids in rows], reserve=budget):
            seqs = [rows[i] for i in group]
            try:
                self._prefill(seqs, [len(ids) - 1 for ids in seqs],
                              lambda j, pos, logits: pending.__setitem__(j, logits.copy()))
                positions = {j: len(seqs[j]) for j in range(len(seqs))}
                active = {}
                for j in range(len(seqs)):
                    token = step(group[j], pending.pop(j))
                    if token is not None:
                        active[j] = token
                while active:
                    entries = [(token, positions[j], [j], True, j) for j, token in active.items()]
                    self._decode(entries, lambda j, pos, logits: pending.__setitem__(j, logits.copy()))
                    for j in list(active):
                        positions[j] += 1
                        token = step(group[j], pending.pop(j))
                        if token is None:
                            del active[j]
                        else:
                            active[j] = token
            except Exception:
                self._forget()
                raise
        return [(new[i], stopped[i], tops[i], self._text(new[i])) for i in range(len(rows))]

    # ---- the batched path -------------------------------------------------------------
    def _batched(self, seqs: list[list[int]], firsts: list[int],
                 on_row: Callable[[int, int, np.ndarray], None]) -> None:
        """Decode every sequence in groups; on_row(j, pos, logits) for each j of seqs and
        each position pos >= firsts[j] (the logits are llama.cpp's buffer: copy to keep)."""
        for group in self._groups(seqs, firsts, reserve=0):
            try:
                self._prefill([seqs[i] for i in group], [firsts[i] for i in group],
                              lambda j, pos, logits: on_row(group[j], pos, logits))
            except Exception:
                self._forget()
                raise

    def _groups(self, seqs: list[list[int]], firsts: list[int], reserve: int) -> list[list[int]]:
        """Indices of seqs packed into groups of at most n_seq_max whose cells fit n_ctx:
        the shared prefix once, then each suffix and its `reserve` (tokens to generate).

        Sequences are taken in token order, so neighbours share the longest prefixes (more
        of each group is decoded once) and consecutive groups share the cached one. Every
        sequence alone fits (checked before), so a group is never empty.
        """
        order = sorted(range(len(seqs)), key=lambda i: seqs[i])
        groups: list[list[int]] = []
        group: list[int] = []
        prefix = total = 0  # the group's shared prefix length and its members' total length
        for i in order:
            if group:
                shared = min(_common_length(seqs[group[0]], seqs[i], prefix), firsts[i])
                size = len(group) + 1
                # The cells with seq i added: the (possibly shorter) prefix once, then every
                # member's suffix after it and its reserve.
                cells = shared + (total + len(seqs[i])) - size * shared + size * reserve
                if size <= self.n_seq_max and cells <= self.n_ctx:
                    group.append(i)
                    prefix, total = shared, total + len(seqs[i])
                    continue
                groups.append(group)
            group, prefix, total = [i], firsts[i], len(seqs[i])
        if group:
            groups.append(group)
        return groups

    def _prefill(self, seqs: list[list[int]], firsts: list[int],
                 on_row: Callable[[int, int, np.ndarray], None]) -> None:
        """Put one group in an empty KV cache (sequence j under seq id j) with logits read at
        positions >= firsts[j]: the group's shared prefix decoded once, tagged with every
        sequence id, and each suffix at positions P.. under its own id, in the same calls.

        Every group starts from an empty cache, so a request's rows depend on its own
        prompts only, never on what was scored before: a prefix kept from the previous
        group leaves the new suffixes' cells wherever the cache's head has got to, which
        changes the order attention adds them up in. Measured with the shipped Q4_1 file:
        `predict --workers 2` (each worker with its own history) gave probabilities up to
        0.0064 away from `--workers 1`; with a fresh cache per group, the same file. The
        price is one prefix decode per n_seq_max prompts."""
        self._lib.llama_memory_clear(self._memory(), True)
        prefix_len = min(firsts)
        for ids in seqs[1:]:
            prefix_len = _common_length(seqs[0], ids, prefix_len)
        everyone = list(range(len(seqs)))
        entries = [(seqs[0][p], p, everyone, False, None) for p in range(prefix_len)]
        # Sequences come sorted by their ids (see _groups), so a sequence often shares more
        # than the group prefix with the one before it: those tokens are decoded once too,
        # tagged with both ids (never where a sequence reads logits: those stay its own).
        at: dict[tuple[int, int], int] = {}
        for j, ids in enumerate(seqs):
            shared = prefix_len
            if j:
                shared = max(prefix_len, min(_common_length(seqs[j - 1], ids, len(ids)), firsts[j], firsts[j - 1]))
                for p in range(prefix_len, shared):
                    index = at[(j - 1, p)]
                    entries[index][2].append(j)
                    at[(j, p)] = index
            for p in range(shared, len(ids)):
                at[(j, p)] = len(entries)
                entries.append((ids[p], p, [j], p >= firsts[j], j))
        self._decode(entries, on_row)

    def _forget(self) -> None:
        """After a failure mid-request the cache holds an unknown state: empty it, so the
        next request starts clean and correct."""
        mem = self._memory()
        if mem is not None:
            self._lib.llama_memory_clear(mem, True)
        self.llm.n_tokens = 0

    def _memory(self) -> Any:
        return self._lib.llama_get_memory(self.llm._ctx.ctx)

    def _decode(self, entries: list[tuple[int, int, list[int], bool, Any]],
                on_row: Callable[[int, int, np.ndarray], None]) -> None:
        """Decode (token, pos, seq_ids, wanted, tag) entries in calls of at most n_batch
        tokens, in order (a sequence's earlier positions never come later); on_row(tag,
        pos, logits) for each wanted entry, read before the next call overwrites them."""
        lib, batch, ctx = self._lib, self._batch, self.llm._ctx.ctx
        for start in range(0, len(entries), self.n_batch):
            chunk = entries[start : start + self.n_batch]
            batch.n_tokens = len(chunk)
            for i, (token, pos, seq_ids, wanted, _) in enumerate(chunk):
                batch.token[i] = token
                batch.pos[i] = pos
                batch.n_seq_id[i] = len(seq_ids)
                for m, s in enumerate(seq_ids):
                    batch.seq_id[i][m] = s
                batch.logits[i] = wanted
            # As in _teacher_forced_one: every decode asks for at least its last row.
            batch.logits[len(chunk) - 1] = True
            code = lib.llama_decode(ctx, batch)
            if code == 1:
                # Cannot happen by construction (groups fit the n_ctx cells); say so if it does.
                raise RuntimeError(f"llama.cpp found no KV cache slot for {len(chunk)} tokens "
                                   f"(n_ctx={self.n_ctx}, n_seq_max={self.n_seq_max})")
            if code != 0:
                raise RuntimeError(f"llama_decode returned {code}")
            for i, (_, pos, _, wanted, tag) in enumerate(chunk):
                if wanted:
                    pointer = lib.llama_get_logits_ith(ctx, i)
                    if not pointer:
                        raise RuntimeError(f"llama.cpp kept no logits for position {pos}")
                    on_row(tag, pos, np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)))

    # ---- internals --------------------------------------------------------------------
    def _ids(self, ids: Sequence[int], what: str) -> list[int]:
        """Plain ints, each a token of this vocabulary (llama.cpp may abort on others)."""
        out = [int(t) for t in ids]
        bad = next((t for t in out if not 0 <= t < self.n_vocab), None)
        if bad is not None:
            raise ValueError(f"the {what} holds token id {bad}, outside this GGUF's vocabulary of {self.n_vocab}")
        return out

    def _check_prompt(self, ids: list[int], reserve: int = 0) -> None:
        """The one-at-a-time path's checks (same errors), made before anything is decoded."""
        if not ids:
            raise ValueError("an empty prompt has no answer position")
        if len(ids) + reserve > self.n_ctx:
            raise ValueError(
                f"a prompt of {len(ids)} tokens (+{reserve} to generate) does not fit n_ctx={self.n_ctx}; "
                "raise evaluate.n_ctx"
            )

    def _check_pair(self, prompt_ids: Sequence[int], answer_ids: Sequence[int]) -> tuple[list[int], list[int]]:
        prompt, answer = self._ids(prompt_ids, "prompt"), self._ids(answer_ids, "answer")
        if not prompt:
            raise ValueError("an empty prompt has no answer position")
        if answer and len(prompt) + len(answer) > self.n_ctx:
            raise ValueError(
                f"a prompt of {len(prompt)} tokens + an answer of {len(answer)} does not fit n_ctx={self.n_ctx}; "
                "raise evaluate.n_ctx"
            )
        return prompt, answer

    def _text(self, ids: list[int]) -> str:
        return self.llm.detokenize(ids, special=True).decode("utf-8", errors="replace")

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
        """Evaluate a prompt and return the logits at its last position (one-at-a-time path).

        The KV cache still holds the previous prompt: keep the common prefix (template,
        system prompt, instruction) and evaluate only the rest. At least one token is
        always evaluated, so there are fresh logits to read.
        """
        self._check_prompt(ids, reserve)
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
