"""The project's layering, read from the source with `ast` (nothing is imported):

- imports run server -> streaming -> models (bench/ and loadtests/ sit on top and may use all three);
- models/ is pure torch: no event loop, HTTP, WebRTC or metrics libraries;
- streaming/scheduler.py and streaming/messages.py hold no torch (they are planned and tested without it);
- no import cycles among the project's modules.

For the direction rules every import counts, also one inside a function or under `if TYPE_CHECKING:` (a lazy
import still couples the two); cycles are those of the imports that run when a module is imported.
"""

from __future__ import annotations

import ast
import itertools
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Layer of each top-level folder: a module may import its own layer and those below, never one above.
LAYERS = {"models": 0, "streaming": 1, "server": 2, "bench": 3, "loadtests": 3}
FORBIDDEN_IN_MODELS = ("asyncio", "fastapi", "starlette", "aiortc", "websockets", "uvicorn", "prometheus_client")
TORCH_FREE = ("streaming/scheduler.py", "streaming/messages.py")


@dataclass(frozen=True)
class Import:
    file: str  # relative to the repository root, e.g. "streaming/engine.py"
    line: int
    module: str  # absolute dotted name, e.g. "models.chat"
    eager: bool  # runs when the file is imported (not inside a function, not under `if TYPE_CHECKING:`)

    def __str__(self) -> str:
        return f"{self.file}:{self.line} imports {self.module}"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_files() -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the layered folders present in this tree."""
    files = {}
    for folder in LAYERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            files[module_name(path)] = path
    return files


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(path: Path, known: set[str]) -> list[Import]:
    """Every import in the file, relative ones resolved; `from pkg import sub` names the submodule `pkg.sub`."""
    rel = path.relative_to(ROOT).as_posix()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, eager: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend(Import(rel, node.lineno, alias.name, eager) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                target = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append(Import(rel, node.lineno, target, eager))
            subs = (f"{target}.{alias.name}" for alias in node.names)
            found.extend(Import(rel, node.lineno, sub, eager) for sub in subs if sub in known)
        lazy = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for field, value in ast.iter_fields(node):
            skipped = isinstance(node, ast.If) and field == "body" and _is_type_checking(node.test)
            for child in value if isinstance(value, list) else [value]:
                if isinstance(child, ast.AST):
                    visit(child, eager and not lazy and not skipped)

    visit(ast.parse(path.read_text(), filename=rel), eager=True)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, list[Import]]:
    files = project_files()
    assert {"models", "streaming", "server"} <= {name.partition(".")[0] for name in files}, "layout changed?"
    return {name: imports_of(path, set(files)) for name, path in files.items()}


def _top(module: str) -> str:
    return module.partition(".")[0]


def test_imports_run_server_streaming_models(graph):
    upward = [
        f"{imp} ({_top(name)} is below {_top(imp.module)})"
        for name, imps in graph.items() for imp in imps
        if _top(imp.module) in LAYERS and LAYERS[_top(imp.module)] > LAYERS[_top(name)]
    ]
    assert not upward, "imports must run server -> streaming -> models:\n" + "\n".join(upward)


def test_models_has_no_networking_or_event_loop(graph):
    bad = [str(imp) for name, imps in graph.items() if _top(name) == "models" for imp in imps
           if _top(imp.module) in FORBIDDEN_IN_MODELS]
    assert not bad, "models/ is pure torch:\n" + "\n".join(bad)


def test_scheduler_and_messages_have_no_torch(graph):
    bad = [str(imp) for imps in graph.values() for imp in imps
           if imp.file in TORCH_FREE and _top(imp.module) == "torch"]
    assert not bad, "no torch here:\n" + "\n".join(bad)
    for file in TORCH_FREE:
        assert (ROOT / file).exists(), f"{file} moved: update TORCH_FREE"


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph as [a, b, ..., a], or None (depth-first search, colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_no_import_cycles(graph):
    edges = {name: {imp.module for imp in imps if imp.eager and imp.module in graph and imp.module != name}
             for name, imps in graph.items()}
    cycle = find_cycle(edges)
    if cycle:
        where = [next(str(i) for i in graph[a] if i.eager and i.module == b) for a, b in itertools.pairwise(cycle)]
        pytest.fail("import cycle " + " -> ".join(cycle) + ":\n" + "\n".join(where))


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "d": {"a", "c"}}) is None
