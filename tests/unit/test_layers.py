"""The packages form layers, and an import may only go down: the product never imports its harnesses.

Every import counts, those inside functions too (they hide a cycle, they do not break it). The order,
bottom first: the core (``udfs``); the operations the product needs (``ops``: Kafka clients, broker,
cluster, upgrade, archive); the product's processes (``jobs``, ``runners``, side by side, neither
importing the other); ``evaluation``; the harnesses (``harness``: entry point, demo, load generator,
bench, faults, profile). A module is always free to import its own package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS: tuple[tuple[str, ...], ...] = (
    ("udfs",),
    ("ops",),
    ("jobs", "runners"),
    ("evaluation",),
    ("harness",),
)
LEVEL = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}


def imported_packages(source: str) -> list[tuple[int, str]]:
    """(line, top-level package) of every absolute import in a module, at any depth."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def violations(package: str, source: str, where: str) -> list[str]:
    """Each import of a project package at the same level (another one) or above ``package``."""
    out = []
    for line, target in imported_packages(source):
        if target in LEVEL and target != package and LEVEL[target] >= LEVEL[package]:
            out.append(f"{where}:{line}: {package} imports {target}")
    return out


def test_the_checker_sees_imports_inside_functions_and_sideways() -> None:
    source = (
        "import json\nfrom udfs import names\n\ndef f():\n    from harness import demo\n    import jobs.x\n"
    )
    assert violations("runners", source, "m.py") == [
        "m.py:5: runners imports harness",
        "m.py:6: runners imports jobs",
    ]
    assert violations("harness", source, "m.py") == []


@pytest.mark.parametrize("package", sorted(LEVEL))
def test_imports_only_go_down(package: str) -> None:
    modules = sorted((ROOT / package).glob("*.py"))
    assert modules, f"no modules in {package}/"
    found = [
        v
        for m in modules
        for v in violations(package, m.read_text(encoding="utf-8"), str(m.relative_to(ROOT)))
    ]
    assert found == [], "\n".join(found)


def test_every_package_has_a_layer() -> None:
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests"}
    assert packages == set(LEVEL), f"give {sorted(packages - set(LEVEL))} a layer in LAYERS"
