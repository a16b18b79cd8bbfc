"""The import rules that make the layers real: each package imports only the layers below it.

    cli ─► web ─► pipeline ─► domain ─► streaming
             └──────┴──────► infra ──► streaming        seed ─► domain
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = ("backend", "streaming", "seed", "loadtest", "bench", "frontend", "tests",
        "changecast_client")
# package -> the packages of ours it must not import (a prefix forbids its subpackages too)
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "streaming": ("backend", "seed", "loadtest", "bench", "tests", "starlette", "jinja2",
                  "uvicorn"),
    "backend.domain": ("backend.web", "backend.pipeline", "backend.infra", "backend.cli",
                       "seed", "loadtest", "bench", "starlette", "jinja2", "uvicorn"),
    "backend.pipeline": ("backend.web", "backend.infra", "backend.cli", "seed", "loadtest",
                         "bench", "starlette", "jinja2", "uvicorn"),
    "backend.infra": ("backend.web", "backend.pipeline", "backend.domain", "backend.cli",
                      "seed", "loadtest", "bench", "starlette", "jinja2"),
    "backend.web": ("backend.cli", "loadtest", "bench"),
    "seed": ("backend.web", "backend.pipeline", "backend.infra", "backend.cli", "loadtest",
             "bench", "starlette"),
    "loadtest": ("backend.web", "backend.pipeline", "backend.domain", "backend.cli", "seed",
                 "bench"),
    # The client library stands alone: websockets and the standard library only.
    "changecast_client": ("backend", "streaming", "seed", "loadtest", "bench", "tests",
                          "starlette", "pymongo", "httpx", "msgspec", "uvicorn"),
}


def module_of(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside functions (relative ones resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_of(path) if path.name == "__init__.py" else module_of(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def violations() -> list[str]:
    found = []
    for path in sorted(ROOT.glob("*/**/*.py")):
        if path.parts[len(ROOT.parts)] not in OURS:
            continue
        module = module_of(path)
        rules = [(pkg, banned) for pkg, banned in FORBIDDEN.items() if under(module, pkg)]
        for imported in sorted(imports_of(path)):
            for pkg, banned in rules:
                for prefix in banned:
                    if under(imported, prefix):
                        found.append(f"{module} imports {imported} ({pkg} must not use "
                                     f"{prefix})")
    return found


def circles(packages: tuple[str, ...] = ("backend", "streaming", "seed", "loadtest",
                                          "bench", "changecast_client")) -> list[list[str]]:
    """Modules of ours that import each other round a circle (Tarjan's strongly connected
    components of the import graph, imports under ``TYPE_CHECKING`` included: a circle of
    types is a circle of design too)."""
    modules = {module_of(p): p for p in sorted(ROOT.glob("*/**/*.py"))
               if p.parts[len(ROOT.parts)] in packages}
    graph = {m: sorted(i for i in imports_of(p) if i in modules and i != m)
             for m, p in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                found.append(sorted([v, *component]))

    for module in graph:
        if module not in index:
            visit(module)
    return found


def test_layers_no_modules_import_each_other_round_a_circle() -> None:
    assert circles() == []


def test_layers_circle_checker_finds_a_circle() -> None:
    # Two probe modules in one layer that import each other (through a third).
    probes = {name: ROOT / "backend" / "web" / f"_circle_probe_{name}.py" for name in "abc"}
    sources = {"a": "from backend.web._circle_probe_b import x\n",
               "b": "def f():\n    from backend.web._circle_probe_c import y\n",
               "c": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                    "    from backend.web._circle_probe_a import z\n"}
    try:
        for name, path in probes.items():
            path.write_text(sources[name])
        assert [f"backend.web._circle_probe_{n}" for n in "abc"] in circles()
    finally:
        for path in probes.values():
            path.unlink(missing_ok=True)


def test_layers_imports_point_one_way() -> None:
    assert violations() == []


def test_layers_only_the_cli_reaches_the_load_generator() -> None:
    users = {module_of(p) for p in ROOT.glob("backend/**/*.py")
             if any(under(i, "loadtest") for i in imports_of(p))}
    assert users == {"backend.cli"}


@pytest.mark.parametrize(("source", "expected"), [
    ("from backend.web.state import AppState\n", "backend.web.state"),
    ("def f():\n    from backend.pipeline import Pipeline\n", "backend.pipeline"),
    ("from ..web import app\n", "backend.web"),
])
def test_layers_checker_sees_every_kind_of_import(source: str, expected: str) -> None:
    # The rule test would pass vacuously if the parser missed an import form.
    path = ROOT / "backend" / "domain" / "_layers_probe.py"
    path.write_text(source)
    try:
        assert any(under(i, expected) for i in imports_of(path))
        assert any("_layers_probe" in v for v in violations())
    finally:
        path.unlink()
