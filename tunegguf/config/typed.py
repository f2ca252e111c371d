"""Typed configs from plain dicts: defaults < YAML < CLI overrides, unknown keys rejected.

Every stage config is a dataclass. `from_dict` builds one from a (nested) dict and fails
with a one-line error naming the key path and the closest valid key; `to_dict` is the
inverse and is what gets saved as the resolved config in a run directory.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tunegguf.errors import TuneGGUFError, closest
from tunegguf.io import require_path

T = TypeVar("T")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check (and gently convert) one value against a type hint."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except TuneGGUFError as exc:
                errors.append(str(exc))
        raise TuneGGUFError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            hint = closest(str(value), [str(a) for a in args])
            raise TuneGGUFError(f"{where}: {value!r} is not one of {choices}{hint}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise TuneGGUFError(f"{where}: expected a mapping of settings, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise TuneGGUFError(f"{where}: expected a list, got {value!r}")
        item_type = args[0] if args else Any
        return [_coerce(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise TuneGGUFError(f"{where}: expected a mapping, got {value!r}")
        key_type, value_type = args if args else (Any, Any)
        return {
            _coerce(k, key_type, f"{where}.{k}"): _coerce(v, value_type, f"{where}.{k}")
            for k, v in value.items()
        }
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise TuneGGUFError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TuneGGUFError(f"{where}: expected a whole number, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads "5e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise TuneGGUFError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise TuneGGUFError(f"{where}: expected text, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass `cls` from `data`; unknown keys are an error with a suggestion."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in (data or {}).items():
        path = f"{where}.{key}" if where else str(key)
        if key not in fields:
            raise TuneGGUFError(f"unknown setting '{path}'{closest(str(key), fields)}")
        kwargs[key] = _coerce(value, hints[key], path)
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise TuneGGUFError(f"{where or cls.__name__}: {exc}") from None
    except ValueError as exc:  # a __post_init__ check; its message names the setting
        raise TuneGGUFError(str(exc)) from None


def to_dict(obj: Any) -> Any:
    """Plain, YAML-safe dict of a dataclass tree (Paths become strings)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def parse_override(assignment: str) -> tuple[list[str], Any]:
    """'finetune.max_steps=60' -> (['finetune', 'max_steps'], 60); values parsed as YAML."""
    if "=" not in assignment:
        raise TuneGGUFError(f"--set {assignment!r}: expected KEY=VALUE, e.g. finetune.max_steps=60")
    key, raw = assignment.split("=", 1)
    path = [part for part in key.strip().split(".") if part]
    if not path:
        raise TuneGGUFError(f"--set {assignment!r}: the key is empty")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return path, value


def set_setting(data: dict[str, Any], path: list[str], value: Any, source: str) -> None:
    """Set data[a][b][c] = value for path ['a', 'b', 'c'], creating groups on the way.

    `source` names where the value came from (`--set KEY=VALUE`, `--quants`) for the error.
    """
    node = data
    for part in path[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise TuneGGUFError(f"{source}: '{part}' is not a group of settings")
        node = child
    node[path[-1]] = value


def apply_overrides(data: dict[str, Any], assignments: list[str]) -> dict[str, Any]:
    """Apply dotted KEY=VALUE overrides to a nested dict (in place; returned for chaining)."""
    for assignment in assignments:
        path, value = parse_override(assignment)
        set_setting(data, path, value, f"--set {assignment!r}")
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with one-line errors for a missing or malformed file."""
    path = require_path(path, "config file", kind="file")
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TuneGGUFError(f"{path}: not valid YAML{_yaml_problem(exc, text)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise TuneGGUFError(f"{path}: expected a mapping of settings at the top level")
    return data


_OPENED_EARLIER = ("while scanning", "while parsing a flow sequence", "while parsing a flow mapping")


def _yaml_problem(exc: yaml.YAMLError, text: str) -> str:
    """' at line N: what is wrong' for the line to fix. An unclosed quote, [ or {, or a key
    without its ':' is only noticed lines later (problem_mark, often the end of the file); the
    line to fix is where that token started (context_mark). Block errors point at the spot."""
    problem = getattr(exc, "problem_mark", None)
    start = getattr(exc, "context_mark", None)
    context = getattr(exc, "context", None) or ""
    what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if problem is None:
        return f": {what}"
    line = problem.line
    if start is not None and context.startswith(_OPENED_EARLIER):
        line, what = start.line, f"{what} {context}"
    elif what == "mapping values are not allowed here":
        # A `key` without its ':' runs on as plain text into the next line's `key:`.
        lines = text.splitlines()
        while line > 0 and _no_colon(lines[line - 1]):
            line -= 1
        if line != problem.line:
            what = "no ':' after the key, so the text runs on into the next key"
    noticed = f" (noticed at line {problem.line + 1})" if line != problem.line else ""
    return f" at line {line + 1}: {what}{noticed}"


def _no_colon(line: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and ":" not in stripped and not stripped.startswith(("#", "-"))


def write_yaml(path: str | Path, data: dict[str, Any]) -> None:
    """Write YAML atomically (temp file, then rename)."""
    from tunegguf.io import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
