"""Ollama's Go templates: the subset of Go's text/template a Modelfile TEMPLATE uses.

modelfile.py writes those templates; this renders one in Python, with the values Ollama
hands it for a request, so a written (or any other) Modelfile can be checked against the
training prompt without Ollama.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable, Sequence

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
