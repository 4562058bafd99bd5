"""The package's layering, read from the source: imports follow the dependency direction of ARCHITECTURE.md,
every rsvlm import is at the top of its module (none hidden in a function to dodge the layering), only the
modules that must import ray do, and no function is 80 lines or more."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "platform" / "rsvlm"

# A package may import those of a lower or equal layer (equal: only within itself, or the pairs below).
LAYERS = {
    "redaction": -1, "errors": 0,
    "config": 1,
    "data": 2,
    "tracking": 3, "model": 3,
    "strategies": 4,
    "ray_session": 5,
    "train": 6, "eval": 6,
    "tune": 7,
    "pipeline_steps": 8, "dev": 8,
}
RAY_IMPORTERS = ("ray_session.py", "train/", "tune/", "data/ingest.py", "eval/answering.py")
MAX_FUNCTION_LINES = 80


def _modules() -> list[tuple[str, ast.Module]]:
    return [(path.relative_to(PACKAGE).as_posix(), ast.parse(path.read_text(), str(path)))
            for path in sorted(PACKAGE.rglob("*.py"))]


def _layer(relative: str) -> str:
    return relative.split("/")[0].removesuffix(".py")


def _rsvlm_imports(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "rsvlm":
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.split(".")[0] == "rsvlm"]
    return found


def test_every_module_has_a_layer():
    unknown = sorted({_layer(name) for name, _ in _modules()} - set(LAYERS) - {"__init__"})
    assert not unknown, f"give these a layer in LAYERS (and ARCHITECTURE.md): {unknown}"


def test_imports_follow_the_dependency_direction():
    wrong = []
    for name, tree in _modules():
        own = _layer(name)
        for line, module in _rsvlm_imports(tree):
            target = module.split(".")[1] if "." in module else "__init__"
            if own in ("__init__",) or target == own:
                continue
            if LAYERS.get(target, -1) >= LAYERS[own]:
                wrong.append(f"{name}:{line} ({own}) imports {module} ({target})")
    assert not wrong, "\n".join(wrong)


def test_no_rsvlm_import_hides_in_a_function():
    hidden = []
    for name, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                hidden += [f"{name}:{line} imports {module} inside {node.name}()"
                           for line, module in _rsvlm_imports(node)]
    assert not hidden, "\n".join(hidden)


def test_only_the_ray_modules_import_ray():
    importers = []
    for name, tree in _modules():
        for node in ast.walk(tree):
            modules = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                       else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(module.split(".")[0] == "ray" for module in modules):
                importers.append(name)
    stray = sorted({name for name in importers if not name.startswith(RAY_IMPORTERS)})
    assert not stray, f"only {RAY_IMPORTERS} may import ray; also: {stray}"


@pytest.mark.parametrize("limit", [MAX_FUNCTION_LINES])
def test_no_function_is_too_long_to_read(limit):
    long = []
    for name, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines >= limit:
                    long.append(f"{name}:{node.lineno} {node.name}: {lines} lines")
    assert not long, "split these into named steps:\n" + "\n".join(long)
