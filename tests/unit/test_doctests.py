"""The examples in the core's docstrings run (``doctest``), so they stay true.

The core is the pure-Python half of the job (no pyflink): importing it here collects nothing from the
adapter (``udfs.flink_fn``, ``udfs.flink_compat``), which needs the PyFlink runtime.
"""

from __future__ import annotations

import doctest
import importlib

import pytest

CORE = (
    "udfs.bandit",
    "udfs.fastjson",
    "udfs.feedback",
    "udfs.mailbox",
    "udfs.model_metrics",
    "udfs.names",
    "udfs.policy",
    "udfs.policy_registry",
    "udfs.rendezvous_logic",
    "udfs.testing",
    "udfs.wire_in",
    "udfs.wire_out",
)
# Modules whose public functions carry examples (udfs.names holds names, not behaviour).
WITH_EXAMPLES = set(CORE) - {"udfs.names"}


@pytest.mark.parametrize("name", CORE)
def test_doctests(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    if name in WITH_EXAMPLES:
        assert result.attempted > 0, f"{name}: no doctest found"


def test_the_core_does_not_import_pyflink() -> None:
    """The core stays importable (and its doctests runnable) without the PyFlink runtime."""
    import subprocess
    import sys

    code = f"import sys; {'; '.join(f'import {m}' for m in CORE)}; print('pyflink' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
