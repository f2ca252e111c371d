"""The package's import graph: no cycles, and no layer imports a layer above it.

Lazy imports inside functions count (they are the same dependency, paid later), imports
under `if TYPE_CHECKING:` do not. Run on its own to print the graph's problems:

    python -m pytest tests/test_import_graph.py -q
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "tunegguf"

# Bottom to top. A module may import its own package and anything ranked lower; above the
# core (whose small modules use each other), a package never imports one of its own rank
# (the stages stay independent) or one above it.
LAYERS: list[tuple[str, ...]] = [
    ("tunegguf", "tunegguf.errors", "tunegguf.io", "tunegguf.processes", "tunegguf.console",
     "tunegguf.config", "tunegguf.config.typed"),
    ("tunegguf.models", "tunegguf.data"),
    ("tunegguf.prompts",),
    ("tunegguf.scoring",),
    ("tunegguf.finetune",),
    ("tunegguf.export",),
    ("tunegguf.evaluate",),
    ("tunegguf.config.run", "tunegguf.doctor"),
    ("tunegguf.pipeline",),
    ("tunegguf.cli",),
]


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    return {id(n) for block in ast.walk(tree)
            if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.dump(block.test) for n in ast.walk(block)}


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (the deepest existing module named)."""
    modules = module_names()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = _type_checking_nodes(tree)
        targets: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                    base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
                # `from pkg import sub` imports the submodule; `from mod import name` the module.
                targets.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                               for alias in node.names)
        resolved = set()
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                resolved.add(target)
        graph[name] = resolved
    return graph


def layer_of(module: str) -> tuple[int, str]:
    """(rank, the layer entry that owns the module): the longest matching prefix."""
    best = None
    for rank, entries in enumerate(LAYERS):
        for entry in entries:
            if module == entry or module.startswith(entry + "."):
                if best is None or len(entry) > len(best[1]):
                    best = (rank, entry)
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_no_layer_imports_upward_or_sideways():
    wrong = []
    for module, targets in sorted(import_graph().items()):
        rank, owner = layer_of(module)
        for target in sorted(targets):
            target_rank, target_owner = layer_of(target)
            if target_owner == owner or target_rank < rank or target_rank == rank == 0:
                continue
            wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_the_checker_sees_lazy_imports_and_cycles():
    """The checks above can fail: a lazy upward import and a two-module cycle are found."""
    graph = {"tunegguf.data.a": {"tunegguf.data.b"}, "tunegguf.data.b": {"tunegguf.data.a"}}
    assert cycles(graph) == [["tunegguf.data.a", "tunegguf.data.b"]]
    assert layer_of("tunegguf.evaluate.runner") > layer_of("tunegguf.finetune.stage")
    assert layer_of("tunegguf.config.typed")[0] == 0 and layer_of("tunegguf.config.run")[0] == 7
    tree = ast.parse("def f():\n    from tunegguf.evaluate import metrics\n")
    assert any(isinstance(n, ast.ImportFrom) for n in ast.walk(tree))
    assert "tunegguf.finetune.callbacks" in import_graph()
