"""A running OpenAI-compatible llama.cpp server behind the Backend protocol (standard library only).

Works with llama-cpp-python's server (`python -m llama_cpp.server`, tokenize at
`/extras/tokenize`) and llama.cpp's `llama-server` (`/tokenize`). Use it to check the
deployed endpoint itself answers like the parity report says.

Next-token log-probs are APPROXIMATE: an OpenAI completion returns only the top-k
log-probs of the first generated token. The returned [n, vocab] rows hold those k values
exactly; every other token gets an equal share of the probability mass the top k leave
(log((1 − Σ top-k p) / (vocab − k))), so each row is a distribution and KL against the HF
model stays finite. KL is then an approximation over the top k; label scoring is exact
whenever the label tokens are among the top k (raise `top_k` for a weak model).
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request
from typing import Any, Sequence

import numpy as np

from tunegguf.errors import TuneGGUFError


class ServerBackend:
    """One model served at `base_url` (e.g. "http://127.0.0.1:8080")."""

    def __init__(
        self,
        base_url: str,
        name: str = "server",
        timeout: float = 120.0,
        *,
        top_k: int = 20,
        vocab_size: int | None = None,
        model: str | None = None,
        stop: Sequence[str] = (),
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.name = name
        self.timeout = timeout
        self.top_k = top_k
        self.stop = list(stop)
        self._tokenize_route: str | None = None
        self._piece_ids: dict[str, int | None] = {}
        models = self._get("/v1/models").get("data") or []
        self.model = model or (models[0].get("id") if models else None)
        self.vocab_size = vocab_size or self._vocab_from_server(models)
        if not self.vocab_size:
            raise TuneGGUFError(
                f"{self.base_url} does not report its vocabulary size; pass vocab_size= "
                "(the GGUF's tokenizer.ggml.tokens length)"
            )
        self.info: dict[str, Any] = {
            "runtime": "server", "url": self.base_url, "model": self.model, "vocab_size": self.vocab_size,
            "top_k": top_k, "next_token_logprobs": f"approximate: top-{top_k} exact, tail mass spread evenly",
        }

    # ---- protocol verbs ---------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        return [self._tokenize(t) for t in texts]

    def next_token_logprobs(self, prompts: Sequence[str]) -> np.ndarray:
        out = np.empty((len(prompts), self.vocab_size), dtype=np.float32)
        for row, prompt in enumerate(prompts):
            choice = self._complete(prompt, max_tokens=1, logprobs=self.top_k)
            out[row] = self._row(self._top_logprobs(choice))
        return out

    def generate(self, prompts: Sequence[str], max_new_tokens: int) -> list[tuple[str, bool]]:
        results = []
        for prompt in prompts:
            choice = self._complete(prompt, max_tokens=max_new_tokens)
            # "stop": an end-of-generation token (or a stop string) ended it; "length": max tokens.
            results.append((choice.get("text") or "", choice.get("finish_reason") == "stop"))
        return results

    def close(self) -> None:
        """Nothing to free: the server belongs to whoever started it."""

    # ---- requests -----------------------------------------------------------------------
    def _request(self, path: str, payload: dict[str, Any] | None = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode("utf-8")
        request = urllib.request.Request(self.base_url + path, data=data,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            body = exc.read().decode("utf-8", "replace")[:300]
            raise _HTTPStatus(exc.code, f"{self.base_url}{path}: HTTP {exc.code} {body}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TuneGGUFError(f"cannot reach the server at {self.base_url} ({reason}); is it running?") from None

    def _get(self, path: str) -> Any:
        return self._request(path)

    def _vocab_from_server(self, models: list[dict[str, Any]]) -> int | None:
        # llama-server reports it under /v1/models "meta"; llama-cpp-python's server does not.
        for entry in models:
            meta = entry.get("meta") or {}
            if meta.get("n_vocab"):
                return int(meta["n_vocab"])
        return None

    def _tokenize(self, text: str) -> list[int]:
        routes = [self._tokenize_route] if self._tokenize_route else ["/extras/tokenize", "/tokenize"]
        for route in routes:
            # Both servers add BOS here exactly when their completion endpoint would.
            payload = {"input": text} if route == "/extras/tokenize" else {"content": text, "add_special": True,
                                                                          "parse_special": True}
            if self.model and route == "/extras/tokenize":
                payload["model"] = self.model
            try:
                reply = self._request(route, payload)
            except _HTTPStatus as exc:
                if exc.status in (404, 405, 422) and not self._tokenize_route:
                    continue
                raise TuneGGUFError(str(exc)) from None
            self._tokenize_route = route
            return [int(t["id"]) if isinstance(t, dict) else int(t) for t in reply["tokens"]]
        raise TuneGGUFError(f"{self.base_url} has neither /extras/tokenize nor /tokenize")

    def _complete(self, prompt: str, *, max_tokens: int, logprobs: int | None = None) -> dict[str, Any]:
        payload: dict[str, Any] = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "top_k": 1,
                                   "seed": 0, "stream": False}
        if self.model:
            payload["model"] = self.model
        if self.stop:
            payload["stop"] = self.stop
        if logprobs is not None:
            payload["logprobs"] = logprobs
            payload["n_probs"] = logprobs  # llama-server's native name
        try:
            reply = self._request("/v1/completions", payload)
        except _HTTPStatus as exc:
            raise TuneGGUFError(str(exc)) from None
        choices = reply.get("choices") or []
        if not choices:
            raise TuneGGUFError(f"{self.base_url}/v1/completions returned no choices")
        return choices[0]

    # ---- log-probs --------------------------------------------------------------------
    def _top_logprobs(self, choice: dict[str, Any]) -> dict[int, float]:
        """{token id: log-prob} of the first generated position, from either reply shape."""
        logprobs = choice.get("logprobs") or {}
        content = logprobs.get("content")
        if content:  # llama-server (OpenAI chat-style): entries carry ids
            return {int(e["id"]): float(e["logprob"]) for e in content[0].get("top_logprobs", []) if "id" in e}
        tops = logprobs.get("top_logprobs") or []
        if not tops or tops[0] is None:
            raise TuneGGUFError(
                f"{self.base_url} returned no log-probs; llama-cpp-python's server needs --logits_all true"
            )
        out: dict[int, float] = {}
        for piece, value in tops[0].items():
            token = self._piece_id(piece)
            if token is not None and token not in out:
                out[token] = float(value)
        return out

    def _piece_id(self, piece: str) -> int | None:
        """The id of a token given as text; None when the text is not one token (dropped)."""
        if piece not in self._piece_ids:
            ids = self._tokenize(piece) if piece else []
            bos = self._bos_id()
            if bos is not None and ids[:1] == [bos] and piece != "":
                ids = ids[1:]
            self._piece_ids[piece] = ids[0] if len(ids) == 1 else None
        return self._piece_ids[piece]

    def _bos_id(self) -> int | None:
        if "_bos" not in self.__dict__:
            # What the server adds in front of an empty text is its BOS (nothing when it adds none).
            empty = self._tokenize("")
            self._bos = empty[0] if empty else None
        return self._bos

    def _row(self, top: dict[int, float]) -> np.ndarray:
        row = np.empty(self.vocab_size, dtype=np.float64)
        mass = sum(math.exp(v) for v in top.values())
        rest = self.vocab_size - len(top)
        tail = 1.0 - mass
        row.fill(math.log(tail / rest) if rest > 0 and tail > 1e-12 else -np.inf)
        for token, value in top.items():
            if 0 <= token < self.vocab_size:
                row[token] = value
        return row.astype(np.float32)


class _HTTPStatus(TuneGGUFError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
