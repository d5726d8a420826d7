"""The module graph, read from the source: no import cycle (imports inside functions count), and no
import runs back up a floor (the core never imports a front end, front ends never import each other)."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"

FRONT_ENDS = ("specgen.chat", "specgen.bench", "specgen.server", "specgen.cli")
"""Each consumes the library; none may be imported by the core, the outer packages below it, or another."""
BELOW_FRONT_ENDS = ("specgen.llama", "specgen.models", "specgen.drafters")


def _modules(root: Path = SRC) -> dict[str, Path]:
    mods = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Each module's imports of other specgen modules, wherever in the file they stand."""

    def known(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{up}.{base}" if base else up
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            found |= {m for m in map(known, names) if m and m != mod}
        graph[mod] = found
    return graph


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return _imports(_modules())


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    # A package imports its own submodules (cli registers its commands); those edges point down, not round.
    down = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in graph.items()}
    try:
        list(graphlib.TopologicalSorter(down).static_order())
    except graphlib.CycleError as e:
        return e.args[1]
    return None


def test_the_module_graph_has_no_cycle(graph):
    assert _cycle(graph) is None


def test_a_cycle_through_an_import_inside_a_function_is_found(tmp_path):
    pkg = tmp_path / "specgen"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from .a import g\n    return g\n")
    assert set(_cycle(_imports(_modules(tmp_path)))) == {"specgen.a", "specgen.b"}


def _floor(mod: str) -> str | None:
    return next((f for f in FRONT_ENDS if mod == f or mod.startswith(f + ".")), None)


def test_no_import_runs_back_up_a_floor(graph):
    wrong = []
    for mod, deps in graph.items():
        own = _floor(mod)
        for dep in deps:
            floor = _floor(dep)
            if floor is None or floor == own:
                continue
            if own != "specgen.cli" and mod != "specgen.__main__":  # the CLI alone sits above the others
                wrong.append(f"{mod} imports {dep}")
    assert not wrong, wrong
