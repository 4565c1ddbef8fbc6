"""The package's import picture: layers from the CLI down to the frozen harness, arrows pointing down only,
no circle (imports inside functions count). A module that is not placed in a layer fails the test, so a new
module is placed on purpose."""

from __future__ import annotations

import ast
from pathlib import Path

import autoresearch

PACKAGE = Path(autoresearch.__file__).parent

# Highest first. A module may import from its own layer (without a circle) or from any layer below.
LAYERS = [
    ["cli"],
    ["swarm"],
    ["loop", "status", "report", "plot", "mlflow_export"],
    ["history"],
    ["experiment", "noise"],
    ["agents"],
    ["trial", "guard", "recovery"],
    ["ledger", "workspace", "sandbox", "tripwire"],
    ["layout", "git", "procs", "selection", "logs", "hardware", "task"],
    ["harness", "template", "tasks", "__init__"],
]


def layer_of(module: str) -> int:
    """`agents.claude_code` is in the layer of `agents`, `harness.loader` in that of `harness`."""
    top = module.split(".")[0]
    for depth, names in enumerate(LAYERS):
        if top in names:
            return len(LAYERS) - depth
    raise AssertionError(f"autoresearch.{module} is in no layer of tests/test_layers.py: place it")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "template" not in p.parts}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Every package module `path` imports, at the top or inside a function (`from .x import y` counts as
    an import of x.y when that is a module, else of x)."""
    me = module_name(path)
    package = me.split(".") if path.name == "__init__.py" and me != "__init__" else me.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.removeprefix("autoresearch.") for a in node.names if a.name.startswith("autoresearch.")}
            found |= {"__init__" for a in node.names if a.name == "autoresearch"}
            continue
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = package[:len(package) - node.level + 1]
            target = ".".join([*base, *(node.module.split(".") if node.module else [])])
        elif node.module and (node.module == "autoresearch" or node.module.startswith("autoresearch.")):
            target = node.module.removeprefix("autoresearch").lstrip(".")
        else:
            continue
        for alias in node.names:
            sub = f"{target}.{alias.name}" if target else alias.name
            found.add(sub if sub in known else (target or "__init__"))
    return found - {me}


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports_of(path, set(found)) for name, path in found.items()}


def test_every_import_points_down_or_across():
    upward = [f"{a} -> {b}" for a, targets in graph().items() for b in targets if layer_of(b) > layer_of(a)]
    assert not upward, "imports that point to a higher layer: " + ", ".join(upward)


def test_no_import_circle():
    g = graph()
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = "open"
        stack.append(m)
        for t in sorted(g.get(m, ())):
            if state.get(t) == "open":
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(t):] + [t]))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = "done"

    for module in g:
        if module not in state:
            visit(module)
