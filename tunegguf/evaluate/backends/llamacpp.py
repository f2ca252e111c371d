"""llama.cpp backend: a GGUF file scored in its own process (see llamacpp_worker).

Two reasons for the separate process: a crash or abort inside llama.cpp (a corrupt file,
an assertion) must become a clean error for this one model instead of killing the run,
and llama.cpp beside a busy torch in one process runs 10-20x slower (NOTES.md).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tunegguf import processes
from tunegguf.processes import signal_name
from tunegguf.errors import TuneGGUFError
from tunegguf.evaluate.backends.base import TOP_K, TokenGeneration

_WORKER_MODULE = "tunegguf.evaluate.backends.llamacpp_worker"


class LlamaCppBackend:
    """One GGUF file behind the Backend protocol; every call is a request to the worker."""

    def __init__(
        self,
        gguf_path: str | Path,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        name: str | None = None,
        extra_buffers: bool = False,
        n_seq_max: int = 16,
    ) -> None:
        """n_seq_max: sequences per llama_decode (one unified KV cache shared by them); 1 is
        the one-at-a-time path (one prompt per decode, the shared prefix kept)."""
        if int(n_seq_max) < 1:
            raise TuneGGUFError(f"n_seq_max must be at least 1, not {n_seq_max}")
        self.path = Path(gguf_path)
        if not self.path.is_file():
            raise TuneGGUFError(f"GGUF file not found: {self.path}")
        self.name = name or self.path.stem
        self._proc: subprocess.Popen | None = None
        self._log = tempfile.TemporaryFile()
        self._start()
        settings = {
            "path": str(self.path), "n_ctx": n_ctx, "n_threads": n_threads or default_threads(),
            "extra_buffers": extra_buffers, "n_seq_max": int(n_seq_max),
        }
        try:
            self.info: dict[str, Any] = self._request(settings)
        except TuneGGUFError as exc:
            self.close()
            # llama.cpp says only "Failed to load model"; the header says what is wrong with the file.
            problem = gguf_problem(self.path)
            if problem is None:
                raise
            if isinstance(exc, _WorkerDied):
                raise TuneGGUFError(f"{exc}; the file: {problem}") from None
            raise TuneGGUFError(f"llama.cpp cannot load {self.path}: {problem}") from None

    # ---- protocol verbs ---------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        return self._request(("tokenize", (list(texts),)))

    def next_token_logprobs(self, prompts: Sequence[str]) -> np.ndarray:
        return self._request(("next_token_logprobs", (list(prompts),)))

    def generate(self, prompts: Sequence[str], max_new_tokens: int) -> list[tuple[str, bool]]:
        return self._request(("generate", (list(prompts), max_new_tokens)))

    def teacher_forced_logprobs(self, prompt_ids: Sequence[Sequence[int]],
                                answer_ids: Sequence[Sequence[int]]) -> np.ndarray:
        prompts = [[int(t) for t in ids] for ids in prompt_ids]
        answers = [[int(t) for t in ids] for ids in answer_ids]
        return self._request(("teacher_forced_logprobs", (prompts, answers)))

    def generate_ids(
        self, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int, top_k: int = TOP_K
    ) -> list[TokenGeneration]:
        rows = [[int(t) for t in ids] for ids in prompt_ids]
        # The worker answers plain tuples: it imports nothing of tunegguf's evaluator.
        replies = self._request(("generate_ids", (rows, int(max_new_tokens), int(top_k))))
        return [TokenGeneration(ids=ids, stopped=stopped, top_ids=tops, text=text)
                for ids, stopped, tops, text in replies]

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            try:
                self._send.send(("close", ()))
                self._recv.recv()
            except (EOFError, OSError):
                pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for conn in (self._send, self._recv):
            conn.close()
        self._log.close()

    def __enter__(self) -> "LlamaCppBackend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    @property
    def pid(self) -> int | None:
        """The worker's process id (tests kill it to check crash handling)."""
        return self._proc.pid if self._proc else None

    # ---- process plumbing -------------------------------------------------------------
    def _start(self) -> None:
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        # The worker must import this very tunegguf, installed or not.
        package_root = str(Path(__file__).resolve().parents[3])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        try:
            self._proc = processes.popen(  # dies with this process
                [sys.executable, "-m", _WORKER_MODULE, str(to_child_r), str(from_child_w)],
                pass_fds=(to_child_r, from_child_w),
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=self._log,
                env=env,
            )
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        self._send = Connection(to_child_w, readable=False)
        self._recv = Connection(from_child_r, writable=False)

    def _request(self, message: Any) -> Any:
        if self._proc is None:
            raise TuneGGUFError(f"the llama.cpp backend for {self.path} is closed")
        try:
            self._send.send(message)
            status, payload = self._recv.recv()
        except (EOFError, OSError):
            raise self._died() from None
        if status == "error":
            raise TuneGGUFError(payload)
        return payload

    def _died(self) -> "_WorkerDied":
        proc, self._proc = self._proc, None
        try:
            code = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        for conn in (self._send, self._recv):
            conn.close()
        last = self._last_log_line()
        self._log.close()
        detail = f": {last}" if last else ""
        if code < 0:
            return _WorkerDied(f"llama.cpp crashed on {self.path} (signal {-code}) [{signal_name(-code)}]{detail}")
        return _WorkerDied(f"the llama.cpp worker for {self.path} exited with status {code}{detail}")

    def _last_log_line(self) -> str:
        try:
            self._log.seek(0)
            lines = [ln.strip() for ln in self._log.read().decode("utf-8", "replace").splitlines() if ln.strip()]
        except (OSError, ValueError):
            return ""
        return lines[-1][:300] if lines else ""


class _WorkerDied(TuneGGUFError):
    """The worker process crashed or exited (as opposed to answering with an error)."""


def gguf_problem(path: str | Path) -> str | None:
    """Why `path` is no whole GGUF file (empty, not a GGUF, truncated), from its header alone
    (pure Python, no llama.cpp: safe in the caller's process); None when it looks whole."""
    from tunegguf.export.gguf_file import check_complete, read_header

    try:
        check_complete(read_header(Path(path)))
    except TuneGGUFError as exc:
        text = str(exc)
        prefix = f"{path}: "
        return text[len(prefix):] if text.startswith(prefix) else text
    return None


def default_threads() -> int:
    """Half the cores (at least one): oversubscribed llama.cpp threads spin-wait and crawl."""
    return max(1, (os.cpu_count() or 1) // 2)



