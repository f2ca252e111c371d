"""Answer prompts with an exported GGUF, greedy, stopping at end-of-turn.

The prompt goes through the one renderer (the run's prompt settings and the GGUF's own
template tokens) and generation through the llama.cpp backend in its own process, so an
answer here is what the answers evaluation generates for the same prompt and file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from tunegguf.config.run import load_run_config
from tunegguf.data.example import Example
from tunegguf.errors import TuneGGUFError
from tunegguf.pipeline.predict import run_model
from tunegguf.pipeline.stagebook import read_stages
from tunegguf.prompts import PromptConfig, PromptRenderer, TemplateTokens

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Request:
    """One prompt to answer: a bare prompt, an Alpaca instruction (+ input) or a conversation."""

    id: str
    where: str
    """How errors name it: "prompt 2", "prompts.jsonl, line 3"."""
    example: Example
    system: str | None = None
    """A system message of its own (a conversation's single-turn system turn)."""
    reference: str | None = None
    """A conversation's final assistant turn, kept beside the answer (never fed)."""
    given: Any = None
    """What the user gave (the text, or the row), echoed in JSONL output."""


@dataclass
class Answerer:
    """What answering needs: a GGUF file and the prompt settings it was trained with."""

    gguf: Path
    prompt: PromptConfig
    n_ctx: int = 2048
    n_threads: int | None = None
    config_path: Path | None = None
    extra_buffers: Any = "auto"
    """evaluate.llama_extra_buffers (auto, true, false), resolved when the GGUF is opened."""


@dataclass
class Answer:
    id: str
    prompt: str
    """The rendered prompt fed to llama.cpp (template tokens included)."""
    text: str
    stopped: bool
    """True when an end-of-turn/EOS token ended it; False when max_new_tokens did."""
    reference: str | None = None
    given: Any = None

    def to_dict(self) -> dict[str, Any]:
        row = {"id": self.id, "input": self.given, "answer": self.text, "stopped": self.stopped}
        if self.reference is not None:
            row["reference"] = self.reference
        return row


def answerer_from_run(run_dir: Path, model: str | None = None) -> Answerer:
    """The run's prompt settings and a GGUF of it: `model` (a quant name or a path), else the
    default `tunegguf predict` also uses (pipeline.predict.choose_run_model: the quant the
    last evaluation recommended, else Q4_K_M, else the smallest exported file)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise TuneGGUFError(f"{run_dir} is not a tunegguf run directory (no config.yaml); run `tunegguf run` first")
    config = load_run_config(run_dir / "config.yaml")
    stages = read_stages(run_dir)
    exported = stages.get("export") or {}
    chosen = run_model(run_dir, exported, model, stages.get("evaluate") or {})
    if not (chosen.is_file() and chosen.suffix == ".gguf"):
        raise TuneGGUFError(f"{run_dir}: {chosen} is not a GGUF file; `tunegguf answer` runs exported GGUFs "
                            "(give --model Q4_K_M or another exported quant)")
    return Answerer(gguf=chosen, prompt=config.prompt, n_ctx=config.evaluate.n_ctx,
                    n_threads=config.evaluate.n_threads, config_path=run_dir / "config.yaml",
                    extra_buffers=config.evaluate.llama_extra_buffers)


def require_gguf(path: str | Path, option: str = "--gguf") -> Path:
    """`path` as a loadable-looking GGUF file, or a one-line error saying what it is instead."""
    from tunegguf.evaluate.backends.llamacpp import gguf_problem

    path = Path(path).expanduser()
    if not path.exists():
        raise TuneGGUFError(f"{option} {path}: no such file; give an exported .gguf file (run/export/gguf/model-*.gguf)")
    if path.is_dir():
        raise TuneGGUFError(f"{option} {path} is a directory; give a .gguf file (or --run-dir for a run directory)")
    problem = gguf_problem(path)
    if problem is not None:
        raise TuneGGUFError(f"{option} {path} is not a usable GGUF file: {problem}")
    return path


# ---- requests ------------------------------------------------------------------------------


def requests_from_texts(texts: Sequence[str], where: str = "prompt") -> list[Request]:
    out = []
    for index, text in enumerate(texts):
        name = f"{where} {index + 1}"
        if not str(text).strip():
            raise TuneGGUFError(f"{name} is empty; give the text to answer")
        out.append(Request(id=str(index + 1), where=name, example=Example(id=str(index + 1), instruction=str(text)),
                           given=str(text)))
    return out


def read_requests(path: str | Path) -> list[Request]:
    """Prompts from a file: .txt, one prompt a line (blank lines skipped); .jsonl, one a line:
    a JSON string, or an object with "prompt", "instruction" (+ "input"), or "messages"
    (role/content turns; optional "id")."""
    path = Path(path).expanduser()
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise TuneGGUFError(f"--input {path} {what}; give a .txt or .jsonl file of prompts")
    suffix = path.suffix.lower()
    if suffix not in (".txt", ".jsonl"):
        raise TuneGGUFError(f"--input {path} has type '{suffix or '(none)'}'; give a .txt (a prompt a line) "
                            "or .jsonl (prompt, instruction/input or messages a line) file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise TuneGGUFError(f"--input {path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    requests = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path.name}, line {number}"
        if suffix == ".txt":
            row: Any = line
        else:
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TuneGGUFError(f"{where}: not JSON ({exc.msg} at column {exc.colno}); write one JSON object a line") from None
        requests.append(_request(row, str(len(requests) + 1), where))
    if not requests:
        raise TuneGGUFError(f"--input {path} holds no prompts; write one prompt a line")
    return requests


def _request(row: Any, default_id: str, where: str) -> Request:
    if isinstance(row, str):
        if not row.strip():
            raise TuneGGUFError(f"{where}: the prompt is empty")
        return Request(default_id, where, Example(id=default_id, instruction=row), given=row)
    if not isinstance(row, dict):
        raise TuneGGUFError(f"{where}: expected a JSON object or string, got {type(row).__name__}")
    row_id = str(row.get("id", default_id))
    if "messages" in row:
        return _conversation(row["messages"], row_id, where, row)
    text = row.get("prompt", row.get("instruction"))
    if not isinstance(text, str) or not text.strip():
        key = "prompt" if "prompt" in row else "instruction"
        problem = "is empty" if isinstance(text, str) else ("is missing" if text is None else "is not a string")
        raise TuneGGUFError(f"{where}: \"{key}\" {problem}; give \"prompt\", \"instruction\" (+ \"input\") or \"messages\"")
    extra = row.get("input") if "prompt" not in row else None
    if extra is not None and not isinstance(extra, str):
        raise TuneGGUFError(f"{where}: \"input\" is not a string")
    return Request(row_id, where, Example(id=row_id, instruction=text, input=extra or None), given=row)


def _conversation(messages: Any, row_id: str, where: str, given: Any) -> Request:
    if not isinstance(messages, list) or not messages:
        raise TuneGGUFError(f"{where}: \"messages\" must be a non-empty list of {{\"role\", \"content\"}} turns")
    turns = []
    for index, turn in enumerate(messages, start=1):
        if not isinstance(turn, dict) or not isinstance(turn.get("content"), str):
            raise TuneGGUFError(f"{where}: message {index} needs \"role\" and a string \"content\"")
        if turn.get("role") not in ROLES:
            raise TuneGGUFError(f"{where}: message {index} has role {turn.get('role')!r}; use one of {', '.join(ROLES)}")
        if not turn["content"].strip():
            raise TuneGGUFError(f"{where}: message {index} ({turn['role']}) is empty")
        turns.append({"role": turn["role"], "content": turn["content"]})
    reference = None
    if turns[-1]["role"] == "assistant":
        reference = turns[-1]["content"]  # the renderer's prompt stops before it: kept as the reference
    body = turns[:-1] if reference is not None else turns
    if not body or body[-1]["role"] != "user":
        raise TuneGGUFError(f"{where}: the conversation must end with a user turn (optionally followed by the "
                            "reference assistant turn)")
    system = [t for t in body if t["role"] == "system"]
    rest = [t for t in body if t["role"] != "system"]
    if len(system) > 1 or (system and body[0]["role"] != "system"):
        raise TuneGGUFError(f"{where}: at most one system message, and only as the first turn")
    if len(rest) == 1:
        # One user turn: the same Example as a bare prompt, so every prompt format renders it.
        return Request(row_id, where, Example(id=row_id, instruction=rest[0]["content"]),
                       system=system[0]["content"] if system else None, reference=reference, given=given)
    # A conversation ending with the user renders as the whole prompt, ready for the answer.
    return Request(row_id, where, Example(id=row_id, messages=body), reference=reference, given=given)


# ---- answering -----------------------------------------------------------------------------


def render_requests(answerer: Answerer, requests: Sequence[Request], system: str | None = None) -> list[str]:
    """Each request's prompt text through the one renderer: the GGUF's template tokens, the
    prompt settings, and `system` (or the request's own system turn) as the system prompt."""
    tokens = TemplateTokens.from_gguf(answerer.gguf)
    if system is not None and answerer.prompt.format == "alpaca":
        raise TuneGGUFError("--system: prompt.format alpaca has no system turn; drop --system or use a chat format")
    renderers: dict[str | None, PromptRenderer] = {}
    prompts = []
    for request in requests:
        own = request.system if request.system is not None else system
        if own is not None and answerer.prompt.format == "alpaca":
            raise TuneGGUFError(f"{request.where}: a system message, but prompt.format alpaca has no system turn")
        if own not in renderers:
            config = answerer.prompt if own is None else replace(answerer.prompt, system_prompt=own)
            renderers[own] = PromptRenderer(config, tokens)
        try:
            prompts.append(renderers[own].render(request.example).prompt)
        except TuneGGUFError as exc:
            raise TuneGGUFError(f"{request.where}: {exc}") from None
    return prompts


def answer(answerer: Answerer, requests: Sequence[Request], *, system: str | None = None,
           max_new_tokens: int = 256, temperature: float = 0.0) -> list[Answer]:
    """Greedy answers, one per request, each ending at end-of-turn or after max_new_tokens."""
    from tunegguf.evaluate.backends import BackendOptions, BackendSpec, ModelKind, open_backend
    from tunegguf.evaluate.backends.kernels import resolve_extra_buffers

    if max_new_tokens < 1:
        raise TuneGGUFError(f"--max-new-tokens {max_new_tokens}: give at least 1")
    if temperature != 0:
        # The backends' generation verb is greedy only (what the parity report compares);
        # sampling would need a sampling verb there, not a second generation loop here.
        raise TuneGGUFError(f"--temperature {temperature}: only greedy decoding (0) is available")
    if not requests:
        return []
    prompts = render_requests(answerer, requests, system)
    spec = BackendSpec(ModelKind.GGUF, answerer.gguf.stem, answerer.gguf)
    extra = resolve_extra_buffers(answerer.extra_buffers, answerer.n_threads)
    backend = open_backend(spec, BackendOptions(n_ctx=answerer.n_ctx, n_threads=answerer.n_threads, extra_buffers=extra))
    answers = []
    try:
        # One request per prompt, so an error (a prompt over n_ctx) names the prompt.
        for request, prompt in zip(requests, prompts):
            try:
                [(text, stopped)] = backend.generate([prompt], max_new_tokens)
            except TuneGGUFError as exc:
                fix = "; raise --n-ctx, lower --max-new-tokens or shorten it" if "n_ctx" in str(exc) else ""
                raise TuneGGUFError(f"{request.where}: {str(exc).split('; raise')[0]}{fix}") from None
            answers.append(Answer(id=request.id, prompt=prompt, text=text, stopped=bool(stopped),
                                  reference=request.reference, given=request.given))
    finally:
        backend.close()
    return answers


def budget_warning(answer_: Answer, max_new_tokens: int) -> str | None:
    """The "never stops" symptom in words, or None when the answer ended at end-of-turn."""
    if answer_.stopped:
        return None
    return (f"answer {answer_.id} did not stop within {max_new_tokens} tokens: the GGUF's EOS/template may be "
            "wrong (see the report's template checks), or raise --max-new-tokens")
