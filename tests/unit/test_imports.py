"""Imports sit at the top of their module; one inside a function only defers a module that is costly to
import or an optional dependency (issue 12, item 3).

A project import inside a function hides a dependency (and a cycle: tests/unit/test_layers.py counts it
all the same); a standard-library one saves nothing. ``HEAVY`` lists what may be imported late, each
with its reason; anything else inside a function fails the test with ``file:line``. Costs measured with
``python -X importtime -c 'import X'`` on the benchmark machine (2 cores).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = sorted(p.parent.name for p in ROOT.glob("*/__init__.py") if p.parent.name != "tests")

# Module (or package: its submodules too) -> why a function may import it late.
HEAVY: dict[str, str] = {
    "pyflink": "PyFlink: 0.1-1 s and a Java gateway; only the job's and Flink's own code paths need it",
    "udfs.flink_fn": "imports pyflink at module level (the job's Flink functions)",
    "sklearn": "scikit-learn: ~1 s; only training and compiling a loaded model need it",
    "runners.train": "imports scikit-learn at module level (~1 s); harnesses need it only to train models",
    "runners.data": "imports pandas at module level (~0.3 s); harness.loadgen, under every harness and "
    "e2e test, needs it only when no features are injected",
    "matplotlib": "~0.2 s; only the plots of the evaluation report and the bench need it",
    "duckdb": "~0.1 s; only SQL over the archive needs it",
    "jsonschema": "~65 ms; only the load generator's result check needs it, and it does without",
    "kafka": "kafka-python, the optional `bench` extra: only the bench's client comparison imports it",
}


def _matches(name: str, entry: str) -> bool:
    return name == entry or name.startswith(entry + ".")


def allowed(name: str) -> bool:
    return any(_matches(name, entry) for entry in HEAVY)


def function_level_imports(source: str) -> Iterator[tuple[int, str, str]]:
    """(line, imported name, function) for each import inside a function or method, at any depth.

    ``from a import b`` yields ``a.b`` (``b`` may be a module or a name in ``a``: either way the
    entry ``a`` or ``a.b`` allows it); a relative import keeps its dots.
    """

    def visit(node: ast.AST, function: str | None) -> Iterator[tuple[int, str, str]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                yield from visit(child, child.name)
                continue
            if function is not None and isinstance(child, ast.Import):
                for alias in child.names:
                    yield child.lineno, alias.name, function
            elif function is not None and isinstance(child, ast.ImportFrom):
                module = "." * child.level + (child.module or "")
                for alias in child.names:
                    yield (
                        child.lineno,
                        f"{module}.{alias.name}" if child.module else module + alias.name,
                        function,
                    )
            yield from visit(child, function)

    yield from visit(ast.parse(source), None)


def violations(source: str, where: str) -> list[str]:
    return [
        f"{where}:{line}: {name} imported inside {function}(); move it to the top of the module, or add "
        "it to HEAVY with the reason"
        for line, name, function in function_level_imports(source)
        if not allowed(name)
    ]


def modules() -> list[Path]:
    return [m for package in PACKAGES for m in sorted((ROOT / package).glob("*.py"))]


def test_the_checker_sees_every_import_inside_a_function() -> None:
    source = (
        "import json\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from ops import cluster\n"
        "def f():\n"
        "    import sys\n"
        "    from pyflink.common import Types\n"
        "    from udfs import flink_fn, names\n"
        "    def inner():\n"
        "        from ops.kafka_admin import require_broker\n"
        "class C:\n"
        "    import re\n"
        "    async def m(self):\n"
        "        from runners.train import ensure_trained\n"
        "        from . import sibling\n"
        "        if True:\n"
        "            import sklearn.tree, threading\n"
    )
    assert list(function_level_imports(source)) == [
        (6, "sys", "f"),
        (7, "pyflink.common.Types", "f"),
        (8, "udfs.flink_fn", "f"),
        (8, "udfs.names", "f"),
        (10, "ops.kafka_admin.require_broker", "inner"),
        (14, "runners.train.ensure_trained", "m"),
        (15, ".sibling", "m"),
        (17, "sklearn.tree", "m"),
        (17, "threading", "m"),
    ]
    assert [v.split(" imported")[0] for v in violations(source, "m.py")] == [
        "m.py:6: sys",
        "m.py:8: udfs.names",
        "m.py:10: ops.kafka_admin.require_broker",
        "m.py:15: .sibling",
        "m.py:17: threading",
    ]
    assert violations("import numpy\n\ndef f():\n    return numpy\n", "m.py") == []


def test_an_entry_allows_its_submodules_not_its_namesakes() -> None:
    assert allowed("pyflink") and allowed("pyflink.datastream.connectors.number_seq")
    assert allowed("udfs.flink_fn.MailboxFunction")
    assert not allowed("pyflinkx") and not allowed("udfs.flink_compat") and not allowed("kafka_admin")


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_inside_functions_only_defer_heavy_modules(package: str) -> None:
    found = [
        v
        for m in sorted((ROOT / package).glob("*.py"))
        for v in violations(m.read_text(encoding="utf-8"), str(m.relative_to(ROOT)))
    ]
    assert found == [], "\n".join(found)


def test_every_heavy_entry_is_still_needed() -> None:
    used = {
        entry
        for m in modules()
        for _, name, _ in function_level_imports(m.read_text(encoding="utf-8"))
        for entry in HEAVY
        if _matches(name, entry)
    }
    assert set(HEAVY) - used == set(), "no function imports these late any more: drop them from HEAVY"


def module_graph() -> dict[str, set[str]]:
    """Each project module -> the project modules it imports when it is imported (its top level, and
    not under ``if TYPE_CHECKING:``)."""
    names = {f"{m.parent.name}.{m.stem}" for m in modules() if m.stem != "__init__"}

    def targets(nodes: list[ast.stmt]) -> Iterator[str]:
        for node in nodes:
            if isinstance(node, ast.Import):
                yield from (a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                yield node.module
                yield from (f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
                yield from targets(node.body + node.orelse)
            elif isinstance(node, ast.Try):
                yield from targets(node.body + node.orelse + node.finalbody)
                for handler in node.handlers:
                    yield from targets(handler.body)

    graph = {}
    for m in modules():
        if m.stem != "__init__":
            name = f"{m.parent.name}.{m.stem}"
            graph[name] = {
                t for t in targets(ast.parse(m.read_text(encoding="utf-8")).body) if t in names
            } - {name}
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle in ``graph`` (its modules in order, the first again at the end), or None."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            found = visit(nxt)
            if found:
                return found
        path.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        found = visit(start)
        if found:
            return found
    return None


def test_the_cycle_finder_finds_one() -> None:
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_module_imports_itself_through_others() -> None:
    assert cycle(module_graph()) is None
