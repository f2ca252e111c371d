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

import http.client
import json
import math
import re
import urllib.error
import urllib.request
from typing import Any, Callable, Sequence, TypeVar

import numpy as np

from tunegguf.errors import TuneGGUFError


_NO_ANSWERS = (
    "{url} is a server backend: it returns no full distributions over given token ids, and the answers "
    "parity needs the GGUF file; pass --gguf NAME=FILE with the file it serves instead of --server"
)


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
        ids, server_vocab = self._request("/v1/models", read=_models)
        self.model = model or (ids[0] if ids else None)
        self.vocab_size = vocab_size or server_vocab
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
            text = choice.get("text") or ""
            if not isinstance(text, str):
                raise TuneGGUFError(f"{self.base_url}/v1/completions: the choice's text is not a string: "
                                    f"{excerpt(json.dumps(choice))}")
            results.append((text, choice.get("finish_reason") == "stop"))
        return results

    def teacher_forced_logprobs(self, prompt_ids: Sequence[Sequence[int]],
                                answer_ids: Sequence[Sequence[int]]) -> np.ndarray:
        """Not offered: the answers parity needs the full distribution at every answer
        position, and neither server returns it. An OpenAI completion's `echo` + `logprobs`
        gives at most the top-k per prompt token (llama-server has no echo at all), and it
        takes text, which the server re-tokenizes, not the given ids; the KL over the full
        vocabulary would be an approximation of an approximation."""
        raise TuneGGUFError(_NO_ANSWERS.format(url=self.base_url))

    def generate_ids(self, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int, top_k: int = 5) -> list[Any]:
        """Not offered, for the same reason: the per-step top-k of a greedy answer from
        given ids would need token-id prompts and per-step log-probs, which the servers
        handle differently (or not), and the answers parity needs the teacher-forced rows
        anyway."""
        raise TuneGGUFError(_NO_ANSWERS.format(url=self.base_url))

    def close(self) -> None:
        """Nothing to free: the server belongs to whoever started it."""

    # ---- requests -----------------------------------------------------------------------
    def _request(self, path: str, payload: dict[str, Any] | None = None,
                 read: Callable[[Any], T] = lambda reply: reply) -> T:
        """POST `payload` (GET without one) and return `read(JSON reply)`.

        Whatever the server answers, a failure is one TuneGGUFError line naming the URL, the
        HTTP status and a short excerpt of the body: an error status (often an HTML page), a
        body that is not JSON, or JSON that `read` cannot take apart (a different shape).
        """
        url = self.base_url + path
        data = None if payload is None else json.dumps(payload).encode("utf-8")
        request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                status, body = response.status, response.read()
        except urllib.error.HTTPError as exc:
            raise _HTTPStatus(exc.code, f"{url}: HTTP {exc.code} {exc.reason}: {excerpt(_body(exc))}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", None) or type(exc).__name__
            raise TuneGGUFError(f"cannot reach the server at {self.base_url} ({reason}); is it running?") from None
        try:
            reply = json.loads(body)
        except ValueError:  # JSONDecodeError, or bytes that are not UTF-8
            raise TuneGGUFError(f"{url}: HTTP {status}, but the body is not JSON: {excerpt(body)}") from None
        return shaped(f"{url}: HTTP {status}", body, lambda: read(reply))

    def _tokenize(self, text: str) -> list[int]:
        routes = [self._tokenize_route] if self._tokenize_route else ["/extras/tokenize", "/tokenize"]
        for route in routes:
            # Both servers add BOS here exactly when their completion endpoint would.
            payload = {"input": text} if route == "/extras/tokenize" else {"content": text, "add_special": True,
                                                                          "parse_special": True}
            if self.model and route == "/extras/tokenize":
                payload["model"] = self.model
            try:
                ids = self._request(route, payload, read=_token_ids)
            except _HTTPStatus as exc:
                if exc.status in (404, 405, 422) and not self._tokenize_route:
                    continue
                raise TuneGGUFError(str(exc)) from None
            self._tokenize_route = route
            return ids
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
            choices = self._request("/v1/completions", payload, read=_choices)
        except _HTTPStatus as exc:
            raise TuneGGUFError(str(exc)) from None
        if not choices:
            raise TuneGGUFError(f"{self.base_url}/v1/completions returned no choices")
        return choices[0]

    # ---- log-probs --------------------------------------------------------------------
    def _top_logprobs(self, choice: dict[str, Any]) -> dict[int, float]:
        """{token id: log-prob} of the first generated position, from either reply shape."""
        where = f"{self.base_url}/v1/completions: the log-probs"
        logprobs = shaped(where, choice, lambda: choice.get("logprobs") or {})
        content = shaped(where, choice, lambda: logprobs.get("content"))
        if content:  # llama-server (OpenAI chat-style): entries carry ids
            return shaped(where, choice, lambda: {int(e["id"]): float(e["logprob"])
                                                  for e in content[0].get("top_logprobs", []) if "id" in e})
        tops = shaped(where, choice, lambda: logprobs.get("top_logprobs") or [])
        if not tops or tops[0] is None:
            raise TuneGGUFError(
                f"{self.base_url} returned no log-probs; llama-cpp-python's server needs --logits_all true"
            )
        pieces = shaped(where, choice, lambda: [(str(piece), float(value)) for piece, value in tops[0].items()])
        out: dict[int, float] = {}
        for piece, value in pieces:
            token = self._piece_id(piece)
            if token is not None and token not in out:
                out[token] = value
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


# ---- reading replies ------------------------------------------------------------------------

T = TypeVar("T")


def excerpt(body: Any, limit: int = 120) -> str:
    """A short single line of a reply body: markup, scripts and styles dropped, whitespace
    collapsed, cut at `limit` characters (an error page is often a whole HTML document)."""
    text = body.decode("utf-8", "replace") if isinstance(body, (bytes, bytearray)) else str(body)
    text = re.sub(r"(?is)<(script|style)\b.*?</\1\s*>", " ", text)
    text = " ".join(re.sub(r"<[^>]*>", " ", text).split())
    if not text:
        return "(empty body)"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def shaped(where: str, shown: Any, read: Callable[[], T]) -> T:
    """`read()`, with a reply of another shape than expected as one line naming `where`."""
    try:
        return read()
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        text = shown if isinstance(shown, (bytes, bytearray, str)) else json.dumps(shown, default=str)
        raise TuneGGUFError(f"{where}, but the reply is not in the expected shape: {excerpt(text)}") from None


def _body(exc: urllib.error.HTTPError) -> bytes:
    try:
        return exc.read()
    except (OSError, http.client.HTTPException):
        return b""


def _models(reply: Any) -> tuple[list[str], int | None]:
    """/v1/models: the model ids and, when the server says (llama-server's "meta"), the vocabulary."""
    entries = reply.get("data") or []
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise TypeError("data is not a list of objects")
    ids = [str(e["id"]) for e in entries if e.get("id") is not None]
    # llama-server reports it under "meta"; llama-cpp-python's server does not.
    vocab = next((int(e["meta"]["n_vocab"]) for e in entries if (e.get("meta") or {}).get("n_vocab")), None)
    return ids, vocab


def _token_ids(reply: Any) -> list[int]:
    tokens = reply["tokens"]
    if not isinstance(tokens, list):
        raise TypeError("tokens is not a list")
    return [int(t["id"]) if isinstance(t, dict) else int(t) for t in tokens]


def _choices(reply: Any) -> list[dict[str, Any]]:
    choices = reply.get("choices") or []
    if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
        raise TypeError("choices is not a list of objects")
    return choices


class _HTTPStatus(TuneGGUFError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
