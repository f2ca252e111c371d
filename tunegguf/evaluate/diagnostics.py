"""Parity diagnostics: which export step lost accuracy, and whether every runtime renders
the prompt, the BOS and the stop tokens the way the model was trained.

Stage attribution scores the chain base+adapter (unmerged) -> merged HF -> f16 GGUF ->
each quant and compares each ADJACENT pair, so a loss is pinned on "merge", "conversion"
or "quantization (Qx)" instead of on the GGUF as a whole. Template checks render one
conversation through the HF tokenizer, the template embedded in the GGUF (as
llama-cpp-python applies it) and the Ollama Modelfile, and diff them.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from tunegguf.evaluate.parity import NextTokenDivergence, prediction_parity

ADAPTER_KIND = "hf_adapter"
"""ModelScores.kind of the unmerged base + LoRA adapter (scored before the merged HF model)."""
ADAPTER_NAME = "hf+adapter"
UNQUANTIZED = ("f32", "f16", "bf16")


# ---- stage attribution ----------------------------------------------------------------


def is_unquantized(name: str, file: str | Path | None = None) -> bool:
    """f16 / bf16 / f32 by the model's name or the file's stem suffix."""
    if name.lower() in UNQUANTIZED:
        return True
    stem = Path(file).stem.lower() if file else ""
    return any(re.search(rf"(^|[-_.]){t}$", stem) for t in UNQUANTIZED)


def stage_parents(models: Sequence[tuple[str, str, Any]]) -> dict[str, str]:
    """child -> the model it was made from, for (name, kind, file) in chain order.

    adapter -> merged HF (merge); HF -> the unquantized GGUF (conversion); that GGUF ->
    each quant (quantization). Without an unquantized GGUF the quants hang off the HF model.
    """
    parents: dict[str, str] = {}
    adapter = next((n for n, k, _ in models if k == ADAPTER_KIND), None)
    hf = next((n for n, k, _ in models if k == "hf"), None)
    f16 = next((n for n, k, f in models if k == "gguf" and is_unquantized(n, f)), None)
    for name, kind, _ in models:
        if kind == "hf" and adapter is not None:
            parents[name] = adapter
        elif kind == "gguf" and hf is not None:
            parents[name] = hf if (name == f16 or f16 is None) else f16
    return parents


def step_name(parent_kind: str, child_name: str, child_file: Any = None) -> str:
    """What turned the parent into the child: "merge", "conversion", "quantization (Qx)"."""
    if parent_kind == ADAPTER_KIND:
        return "merge"
    if parent_kind == "hf":
        if is_unquantized(child_name, child_file):
            return "conversion"
        return f"conversion + quantization ({child_name})"
    return f"quantization ({child_name})"


class _Tee:
    """A Backend wrapper that hands each batch of next-token log-probs to `on_rows(start, rows)`.

    The scorer asks for the rows in order, so a running offset gives each batch's first row.
    Everything else passes through untouched.
    """

    def __init__(self, backend: Any, on_rows: Callable[[int, np.ndarray], None]) -> None:
        self._backend, self._on_rows, self._offset = backend, on_rows, 0

    def __getattr__(self, item: str) -> Any:
        return getattr(self._backend, item)

    def next_token_logprobs(self, prompts: Sequence[str]) -> np.ndarray:
        rows = self._backend.next_token_logprobs(prompts)
        self._on_rows(self._offset, rows)
        self._offset += len(rows)
        return rows


class StageDivergence:
    """KL(parent || child) of every adjacent pair, measured while the chain is scored.

    Models that are a parent keep their log-probs in a memory-mapped file under `scratch`
    until the run ends (the adapter, the merged HF model, the f16 GGUF: three at most).
    """

    def __init__(self, scratch: Path, n: int, parents: dict[str, str],
                 reserve: Callable[[int], None] | None = None) -> None:
        self.scratch, self.n, self.parents = Path(scratch), n, dict(parents)
        self._reserve = reserve
        self._stores: dict[str, Any] = {}
        self._divergence: dict[str, NextTokenDivergence] = {}
        self.mismatch: dict[str, str] = {}

    def wrap(self, name: str, open_backend: Callable[[], Any]) -> Callable[[], Any]:
        """An opener whose backend reports its log-probs to this tracker."""
        return lambda: _Tee(open_backend(), lambda start, rows: self._rows(name, start, rows))

    def _rows(self, name: str, start: int, rows: np.ndarray) -> None:
        from tunegguf.evaluate.scoring import ReferenceLogprobs

        if name in self.parents.values():
            if name not in self._stores:
                if self._reserve is not None:
                    self._reserve(self.n * rows.shape[1] * 4)
                self._stores[name] = ReferenceLogprobs(self.scratch / f"stage-{len(self._stores)}.npy",
                                                       self.n, rows.shape[1])
            self._stores[name].write(start, rows)
        parent = self.parents.get(name)
        store = self._stores.get(parent) if parent else None
        if store is None:
            return
        if rows.shape[1] != store.vocab:
            self.mismatch[name] = f"{parent} {store.vocab} vs {name} {rows.shape[1]}"
            return
        self._divergence.setdefault(name, NextTokenDivergence()).update(store.read(start, start + len(rows)), rows)

    def result(self, name: str) -> dict[str, Any] | None:
        if name in self.mismatch:
            return {"vocab_mismatch": self.mismatch[name]}
        tracker = self._divergence.get(name)
        return tracker.result() if tracker else None

    def close(self) -> None:
        for store in self._stores.values():
            store.close()
        self._stores.clear()


@dataclass
class StageStep:
    parent: str
    child: str
    step: str
    mode: str
    agreement: float | None
    accuracy_parent: float | None
    accuracy_child: float | None
    accuracy_difference: dict[str, Any]
    """parent − child accuracy, {"value", "ci"} (paired bootstrap, 95%); positive = a loss."""
    mean_kl: float | None
    top1_agreement: float | None


def stage_table(
    scored: Sequence[Any],
    y_true: Sequence[str],
    weights: np.ndarray,
    *,
    mode: str = "labels",
    divergence: dict[str, dict[str, Any] | None] | None = None,
) -> dict[str, Any]:
    """Adjacent-pair comparison of scored models (ModelScores) in chain order.

    Returns {"mode", "steps": [StageStep as dict], "largest_loss": step dict or None,
    "summary": one line}. The largest loss is the largest Δaccuracy, ties broken by KL.
    """
    by_name = {s.name: s for s in scored}
    parents = stage_parents([(s.name, s.kind, s.file) for s in scored])
    divergence = divergence or {}
    steps: list[StageStep] = []
    for child in scored:
        parent_name = parents.get(child.name)
        if parent_name is None:
            continue
        parent = by_name[parent_name]
        name = step_name(parent.kind, child.name, child.file)
        a, b = parent.predictions(mode), child.predictions(mode)
        if not (parent.ok and child.ok and a and len(a) == len(b)):
            steps.append(StageStep(parent.name, child.name, name, mode, None, None, None,
                                   {"value": None, "ci": None}, None, None))
            continue
        stats = prediction_parity(y_true, a, b, weights)
        truth = np.asarray(list(y_true), dtype=object)
        kl = divergence.get(child.name) or {}
        steps.append(StageStep(
            parent.name, child.name, name, mode, stats["agreement"],
            float((np.asarray(a, dtype=object) == truth).mean()), float((np.asarray(b, dtype=object) == truth).mean()),
            stats["accuracy_difference"], kl.get("mean_kl"), kl.get("top1_agreement"),
        ))
    rows = [asdict(s) for s in steps]
    measured = [r for r in rows if r["accuracy_difference"]["value"] is not None]
    largest = None
    if measured:
        largest = max(measured, key=lambda r: (r["accuracy_difference"]["value"], r["mean_kl"] or 0.0))
    return {"mode": mode, "steps": rows, "largest_loss": largest, "summary": _stage_summary(largest)}


def _stage_summary(largest: dict[str, Any] | None) -> str:
    if largest is None:
        return "No adjacent pair could be compared"
    diff = largest["accuracy_difference"]["value"]
    kl = largest["mean_kl"]
    kl_text = f", mean KL {kl:.3g}" if kl is not None else ""
    if diff <= 0:
        return f"No step lost accuracy on this split (largest divergence: {largest['step']}{kl_text})"
    return (f"The largest loss is at {largest['step']} ({largest['parent']} -> {largest['child']}): "
            f"accuracy {100 * diff:+.1f} pts lower, agreement {100 * largest['agreement']:.1f}%{kl_text}")


def open_unmerged_adapter(base: str | Path, adapter_dir: str | Path, *, device: str = "auto",
                          batch_size: int = 16) -> Any:
    """An HFBackend whose model is base + LoRA adapter, NOT merged (PEFT applies the
    low-rank update on the fly), so the merge itself is a measured step of the chain."""
    from tunegguf.evaluate.backends.hf import HFBackend, attach_adapter
    from tunegguf.errors import TuneGGUFError

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise TuneGGUFError(f"{adapter_dir} is not a LoRA adapter directory (no adapter_config.json)")
    backend = HFBackend(base, None, device=device, batch_size=batch_size, name=ADAPTER_NAME)
    backend.model = attach_adapter(backend.model, adapter_dir, merge=False,
                                    hint=f"the base model here is {base}; pass the base it was trained on")
    backend.info.update({"adapter": str(adapter_dir), "merged": False})
    return backend


# ---- Ollama Go templates (the subset Modelfiles use) ----------------------------------

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.DOTALL)
_TOKEN = re.compile(r'\s*(\(|\)|"(?:[^"\\]|\\.)*"|`[^`]*`|:=|,|\$\w*(?:\.\w+)*|\.\w+(?:\.\w+)*|\.|-?\d+|\w+)')


class GoTemplateError(ValueError):
    pass


def _go_tree(text: str) -> list:
    """Parse into nodes: str | ("out", expr) | ("set", var, expr) | ("if", [(expr, body)], else_body)
    | ("range", vars, expr, body)."""
    pieces: list = []
    pos = 0
    for m in _ACTION.finditer(text):
        pieces.append(text[pos:m.start()])
        pieces.append((m.group(2).strip(), bool(m.group(1)), bool(m.group(3))))
        pos = m.end()
    pieces.append(text[pos:])
    # Trim markers eat the whitespace of the neighbouring text.
    for i, piece in enumerate(pieces):
        if isinstance(piece, tuple):
            if piece[1]:
                pieces[i - 1] = pieces[i - 1].rstrip()
            if piece[2]:
                pieces[i + 1] = pieces[i + 1].lstrip()
    actions = iter(pieces)

    def block(stop: tuple[str, ...]) -> tuple[list, str]:
        nodes: list = []
        for piece in actions:
            if isinstance(piece, str):
                if piece:
                    nodes.append(piece)
                continue
            body = piece[0]
            word = body.split(None, 1)[0] if body else ""
            if body.startswith("/*"):
                continue
            if word in ("end", "else") and word in stop:
                return nodes, body
            if word == "if":
                branches, cond = [], body[2:].strip()
                while True:
                    inner, ended = block(("end", "else"))
                    branches.append((cond, inner))
                    if ended == "end":
                        nodes.append(("if", branches, []))
                        break
                    rest = ended[4:].strip()
                    if rest.startswith("if "):
                        cond = rest[3:].strip()
                        continue
                    other, _ = block(("end",))
                    nodes.append(("if", branches, other))
                    break
            elif word == "range":
                spec = body[5:].strip()
                names: list[str] = []
                if ":=" in spec:
                    left, spec = spec.split(":=", 1)
                    names = [v.strip() for v in left.split(",")]
                inner, ended = block(("end", "else"))
                other = block(("end",))[0] if ended.startswith("else") else []
                nodes.append(("range", names, spec.strip(), inner, other))
            elif re.match(r"^\$\w+\s*:?=", body):
                var, expr = re.split(r"\s*:?=\s*", body, maxsplit=1)
                nodes.append(("set", var, expr))
            elif word in ("end", "else"):
                raise GoTemplateError(f"unexpected {{{{ {word} }}}}")
            else:
                nodes.append(("out", body))
        if stop:
            raise GoTemplateError(f"missing {{{{ end }}}} (expected one of {stop})")
        return nodes, ""

    return block(())[0]


def _truthy(value: Any) -> bool:
    return bool(value) if value is not None else False


def _field(value: Any, name: str) -> Any:
    if isinstance(value, dict):
        if name not in value:
            raise GoTemplateError(f"no field .{name}")
        return value[name]
    if not hasattr(value, name):
        raise GoTemplateError(f"no field .{name}")
    return getattr(value, name)


_FUNCS: dict[str, Callable[..., Any]] = {
    "eq": lambda a, *bs: any(a == b for b in bs),
    "ne": lambda a, b: a != b,
    "not": lambda a: not _truthy(a),
    "and": lambda *xs: next((x for x in xs if not _truthy(x)), xs[-1]),
    "or": lambda *xs: next((x for x in xs if _truthy(x)), xs[-1]),
    "len": len,
    "slice": lambda x, *ij: x[ij[0]:ij[1]] if len(ij) > 1 else x[ij[0] if ij else 0:],
    "index": lambda x, *keys: _index(x, keys),
}


def _index(x: Any, keys: Sequence[Any]) -> Any:
    for key in keys:
        x = x[key]
    return x


def _eval(expr: str, dot: Any, scope: dict[str, Any]) -> Any:
    tokens = [t for t in _TOKEN.findall(expr)]
    if "".join(tokens).replace(" ", "") != expr.replace(" ", "").replace("\n", "").replace("\t", ""):
        raise GoTemplateError(f"cannot parse {expr!r}")
    value, rest = _command(tokens, dot, scope)
    if rest:
        raise GoTemplateError(f"unexpected {rest[0]!r} in {expr!r}")
    return value


def _command(tokens: list[str], dot: Any, scope: dict[str, Any]) -> tuple[Any, list[str]]:
    args: list[Any] = []
    head: str | None = None
    while tokens and tokens[0] != ")":
        token = tokens.pop(0)
        if token == "(":
            value, tokens = _command(tokens, dot, scope)
            if not tokens or tokens[0] != ")":
                raise GoTemplateError("unbalanced parentheses")
            tokens = tokens[1:]
            args.append(value)
        elif not args and head is None and token in _FUNCS:
            head = token
        else:
            args.append(_operand(token, dot, scope))
    if head is not None:
        return _FUNCS[head](*args), tokens
    if len(args) != 1:
        raise GoTemplateError(f"expected one value, got {len(args)}")
    return args[0], tokens


def _operand(token: str, dot: Any, scope: dict[str, Any]) -> Any:
    import json

    if token.startswith('"'):
        return json.loads(token)
    if token.startswith("`"):
        return token[1:-1]
    if re.fullmatch(r"-?\d+", token):
        return int(token)
    if token in ("true", "false"):
        return token == "true"
    if token == "nil":
        return None
    if token == ".":
        return dot
    if token.startswith("."):
        value = dot
        for name in token[1:].split("."):
            value = _field(value, name)
        return value
    if token.startswith("$"):
        var, *names = token.split(".")
        if var not in scope:
            raise GoTemplateError(f"undefined variable {var}")
        value = scope[var]
        for name in names:
            value = _field(value, name)
        return value
    raise GoTemplateError(f"unknown function or value {token!r}")


def _exec(nodes: list, dot: Any, scope: dict[str, Any], out: list[str]) -> None:
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif node[0] == "out":
            value = _eval(node[1], dot, scope)
            out.append("" if value is None else str(value))
        elif node[0] == "set":
            scope[node[1]] = _eval(node[2], dot, scope)
        elif node[0] == "if":
            for cond, body in node[1]:
                if _truthy(_eval(cond, dot, scope)):
                    _exec(body, dot, dict(scope), out)
                    break
            else:
                _exec(node[2], dot, dict(scope), out)
        elif node[0] == "range":
            _, names, expr, body, other = node
            items = _eval(expr, dot, scope) or []
            pairs = list(items.items()) if isinstance(items, dict) else list(enumerate(items))
            if not pairs:
                _exec(other, dot, dict(scope), out)
            for key, item in pairs:
                inner = dict(scope)
                if len(names) == 1:
                    inner[names[0]] = item
                elif len(names) == 2:
                    inner[names[0]], inner[names[1]] = key, item
                _exec(body, item, inner, out)


def render_go_template(template: str, data: dict[str, Any]) -> str:
    """Render the subset of Go's text/template that Ollama TEMPLATEs use: fields
    (`.System`, `.Prompt`, `.Response`, `.Messages`, `$.X`), if/else if/else/end,
    range with `$i, $x :=`, `$v :=`, trim markers, and eq/ne/not/and/or/len/slice/index."""
    out: list[str] = []
    _exec(_go_tree(template), data, {"$": data}, out)
    return "".join(out)


def ollama_data(messages: Sequence[dict[str, str]], modelfile_system: str | None = None) -> dict[str, Any]:
    """The values Ollama gives a TEMPLATE for one request (no response yet)."""
    system = next((m["content"] for m in messages if m["role"] == "system"), modelfile_system)
    prompt = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    msgs = list(messages)
    if system is not None and not any(m["role"] == "system" for m in msgs):
        msgs = [{"role": "system", "content": system}] + msgs
    return {
        "System": system or "", "Prompt": prompt, "Response": "",
        "Messages": [{"Role": m["role"], "Content": m["content"]} for m in msgs],
    }


@dataclass
class Modelfile:
    template: str | None
    system: str | None
    stops: list[str]


def read_modelfile(path: str | Path) -> Modelfile:
    """TEMPLATE, SYSTEM and `PARAMETER stop` lines of an Ollama Modelfile."""
    text = Path(path).read_text(encoding="utf-8")

    def directive(name: str) -> str | None:
        m = re.search(rf'^{name}\s+"""(.*?)"""', text, re.MULTILINE | re.DOTALL | re.IGNORECASE)
        if m:
            return m.group(1)
        m = re.search(rf'^{name}\s+(?!""")(.+)$', text, re.MULTILINE | re.IGNORECASE)
        return m.group(1).strip().strip('"') if m else None

    stops = [m.group(1) or m.group(2) for m in re.finditer(
        r'^PARAMETER\s+stop\s+(?:"((?:[^"\\]|\\.)*)"|(\S+))\s*$', text, re.MULTILINE | re.IGNORECASE)]
    return Modelfile(directive("TEMPLATE"), directive("SYSTEM"), stops)


# ---- templates and tokens end to end --------------------------------------------------


@dataclass
class Check:
    name: str
    passed: bool | None
    """None: could not be checked here (the detail says why)."""
    detail: str


@dataclass
class TemplateChecks:
    gguf: str
    modelfile: str | None
    renderings: dict[str, str]
    """Source -> the prompt text it renders for the same conversation."""
    diffs: dict[str, str]
    """"A vs B" -> unified diff, for every rendering that differs from the training prompt."""
    token_ids: dict[str, list[int]]
    """Source -> the first token ids each runtime would feed."""
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed is not False for c in self.checks)

    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.passed is False]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["passed"] = self.passed
        return data


TRAINING = "training prompt"
HF_TEMPLATE = "HF apply_chat_template"
GGUF_TEMPLATE = "GGUF template (llama-cpp-python)"
MODELFILE = "Ollama Modelfile TEMPLATE"


def _unified(a_name: str, a: str, b_name: str, b: str) -> str:
    lines = difflib.unified_diff(a.splitlines(keepends=True), b.splitlines(keepends=True), a_name, b_name)
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


def _leading(ids: Sequence[int], token: int | None) -> int:
    count = 0
    while token is not None and count < len(ids) and ids[count] == token:
        count += 1
    return count


def _conversation(renderer: Any, example: Any) -> list[dict[str, str]]:
    # The same messages the renderer builds for chat formats (see PromptRenderer.render).
    instruction, input_text = renderer._instruction_and_input(example)
    user = f"{instruction}\n{input_text}" if input_text else instruction
    system = renderer.config.system_prompt
    return ([{"role": "system", "content": system}] if system is not None else []) + [{"role": "user", "content": user}]


def _gguf_vocab(gguf_path: Path) -> dict[str, Any]:
    """Tokenizer facts of a GGUF as llama.cpp sees them (vocab-only load: no weights, no compute)."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)
    try:
        vocab = llm._model.vocab
        n = int(llm.n_vocab())
        meta = dict(llm.metadata)
        eos, bos = int(llm.token_eos()), int(llm.token_bos())
        eog = [t for t in range(n) if llama_cpp.llama_vocab_is_eog(vocab, t)]
        text = lambda t: llm._model.token_get_text(t) if t >= 0 else ""  # noqa: E731
        return {
            "llm": llm, "metadata": meta, "eos_id": eos, "bos_id": bos, "eos_token": text(eos), "bos_token": text(bos),
            "eog_ids": eog, "eog_tokens": [text(t) for t in eog],
            "add_bos": str(meta.get("tokenizer.ggml.add_bos_token", "false")).lower() == "true",
            "chat_template": meta.get("tokenizer.chat_template"),
        }
    except Exception:
        llm.close()
        raise


def template_checks(
    hf_dir: str | Path,
    gguf_path: str | Path,
    modelfile_path: str | Path | None,
    prompt_config: Any,
    labels: Sequence[str],
    sample_example: Any,
) -> TemplateChecks:
    """Render one conversation through every runtime's template and check BOS and stops.

    The reference is the training prompt (PromptRenderer, what fine-tuning and the parity
    scores fed). Each runtime's rendering is diffed against it; the token ids each runtime
    would feed are checked for a doubled BOS; the end-of-turn token the targets end with
    must be among each runtime's stop tokens.
    """
    from transformers import AutoTokenizer

    from tunegguf.prompts.renderer import PromptRenderer, TemplateTokens

    tokenizer = AutoTokenizer.from_pretrained(str(hf_dir))
    tokens = TemplateTokens.from_hf_tokenizer(tokenizer)
    renderer = PromptRenderer(prompt_config, tokens, list(labels))
    messages = _conversation(renderer, sample_example)
    renderings = {TRAINING: renderer.render(sample_example).prompt}
    checks: list[Check] = []
    if isinstance(tokenizer.chat_template, str):
        renderings[HF_TEMPLATE] = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    gguf = _gguf_vocab(Path(gguf_path))
    llm = gguf.pop("llm")
    try:
        added_special = True
        if gguf["chat_template"]:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            # Built exactly as Llama.__init__ builds its default chat handler.
            formatter = Jinja2ChatFormatter(template=gguf["chat_template"], eos_token=gguf["eos_token"],
                                            bos_token=gguf["bos_token"], stop_token_ids=[gguf["eos_id"]])
            result = formatter(messages=messages)
            renderings[GGUF_TEMPLATE] = result.prompt
            added_special = bool(result.added_special)
            chat_stops = list(result.stop if isinstance(result.stop, list) else [result.stop])
        else:
            checks.append(Check("gguf_has_chat_template", False,
                                "the GGUF embeds no tokenizer.chat_template: chat runtimes fall back to a guess"))
            chat_stops = []
        modelfile = read_modelfile(modelfile_path) if modelfile_path else None
        if modelfile is not None and modelfile.template is not None:
            try:
                renderings[MODELFILE] = render_go_template(modelfile.template, ollama_data(messages, modelfile.system))
            except (GoTemplateError, TypeError, IndexError, KeyError) as exc:
                checks.append(Check("modelfile_template_renders", None, f"could not render the TEMPLATE here: {exc}"))

        # 1. Every runtime's text equals the training prompt.
        diffs: dict[str, str] = {}
        training = renderings[TRAINING]
        for source, text in renderings.items():
            if source == TRAINING:
                continue
            same = text == training
            if not same:
                diffs[f"{TRAINING} vs {source}"] = _unified(TRAINING, training, source, text)
            checks.append(Check(f"{_slug(source)}_matches_training", same,
                                "identical" if same else f"renders differently (see diff '{TRAINING} vs {source}')"))
        if modelfile is not None and modelfile.template is None:
            checks.append(Check("modelfile_has_template", None,
                                "no TEMPLATE: Ollama uses the GGUF's template if it recognizes it"))

        # 2. Leading BOS in the ids each runtime feeds.
        hf_bos = tokenizer.bos_token_id
        ids = {TRAINING + " (HF ids)": tokenizer(training, add_special_tokens=False)["input_ids"]}
        if GGUF_TEMPLATE in renderings:
            text = renderings[GGUF_TEMPLATE].encode("utf-8")
            # llama-cpp-python's chat path: add_bos = not added_special (True for Jinja2 templates).
            ids["llama-cpp-python chat"] = llm.tokenize(text, add_bos=not added_special, special=True)
            # llama.cpp honouring the file's add_bos_token (llama-server, llama-cli, Ollama).
            # The same text sent as a raw prompt to llama.cpp honouring the file's add_bos_token
            # (llama-server /completion, llama-cli -p).
            ids["raw prompt, add_bos from metadata"] = llm.tokenize(text, add_bos=gguf["add_bos"], special=True)
        if MODELFILE in renderings:
            ids["Ollama (Modelfile, add_bos from metadata)"] = llm.tokenize(
                renderings[MODELFILE].encode("utf-8"), add_bos=gguf["add_bos"], special=True)
        trained_bos = _leading(ids[TRAINING + " (HF ids)"], hf_bos if hf_bos is not None else gguf["bos_id"])
        for source, seq in ids.items():
            bos_id = gguf["bos_id"] if source != TRAINING + " (HF ids)" else (hf_bos if hf_bos is not None else gguf["bos_id"])
            count = _leading(seq, bos_id)
            ok = count <= 1 and count == trained_bos
            what = "double BOS" if count > 1 else ("BOS missing" if count < trained_bos else
                                                    ("BOS added" if count > trained_bos else "as trained"))
            checks.append(Check(f"bos_{_slug(source)}", ok,
                                f"{count} leading BOS (training fed {trained_bos}): {what}; first ids {list(seq[:6])}"))

        # 3. The training targets' end-of-turn token stops every runtime.
        eos = tokens.eos_token
        checks.append(Check("stop_gguf_eog", eos in gguf["eog_tokens"],
                            f"{eos!r} {'is' if eos in gguf['eog_tokens'] else 'is NOT'} an end-of-generation token of "
                            f"the GGUF (EOS {gguf['eos_token']!r}, EOG {gguf['eog_tokens']})"))
        if gguf["chat_template"]:
            checks.append(Check("stop_llama_cpp_python_chat", eos in chat_stops or eos in gguf["eog_tokens"],
                                f"chat stop strings {chat_stops}, stop ids = EOG tokens"))
        if modelfile is not None:
            ok = eos in modelfile.stops
            checks.append(Check("stop_modelfile", ok, f"PARAMETER stop lines {modelfile.stops}"
                                + ("" if ok else f"; add PARAMETER stop \"{eos}\"")))
    finally:
        llm.close()
    return TemplateChecks(
        gguf=str(gguf_path), modelfile=str(modelfile_path) if modelfile_path else None, renderings=renderings,
        diffs=diffs, token_ids={k: list(v[:12]) for k, v in ids.items()}, checks=checks,
    )


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def template_checks_for_run(hf_dir: str | Path, files: dict[str, Path], modelfiles: dict[str, Path],
                            prompt_config: Any, labels: Sequence[str], sample_example: Any) -> dict[str, Any] | None:
    """Template checks on one GGUF of the run (the unquantized one when there is one: every
    quant shares its tokenizer and template); a failure to check is reported, not raised."""
    if not files:
        return None
    name = next((n for n, p in files.items() if is_unquantized(n, p)), next(iter(files)))
    modelfile = modelfiles.get(name) or next(iter(modelfiles.values()), None)
    try:
        result = template_checks(hf_dir, files[name], modelfile, prompt_config, labels, sample_example)
    except Exception as exc:  # a diagnostic must never sink the evaluation it annotates
        return {"gguf": str(files[name]), "error": f"{type(exc).__name__}: {exc}", "passed": None, "checks": []}
    data = result.to_dict()
    data["name"] = name
    return data
