"""Pins the upstream PyFlink behaviour behind ``udfs.flink_compat`` items 1, 2 and 6, from the installed
PyFlink's source files, without starting Flink or importing thread mode's modules (items 3 and 4: tests/integration/test_flink_compat.py).

Each test asserts the bug is still there: the day PyFlink fixes it, the test fails, and its workaround
(and the test) can go.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import textwrap
from pathlib import Path

# Thread mode's modules import pemja's in-JVM half at import time: read as source, never imported.
EMBEDDED = "pyflink.fn_execution.datastream.embedded"
CONVERTERS = "pyflink.fn_execution.embedded"


def _source(module: str, *qualname: str, package: str = EMBEDDED) -> str:
    """The source of ``module``'s ``qualname`` (a function, or a class's method) as installed."""
    spec = importlib.util.find_spec(f"{package}.{module}")
    assert spec is not None and spec.origin is not None, module
    text = Path(spec.origin).read_text(encoding="utf-8")
    body: list[ast.stmt] = ast.parse(text).body
    node: ast.AST | None = None
    for name in qualname:
        node = next(
            (n for n in body if isinstance(n, ast.FunctionDef | ast.ClassDef) and n.name == name), None
        )
        assert node is not None, f"{module}: no {'.'.join(qualname)}"
        body = node.body  # type: ignore[attr-defined]
    segment = ast.get_source_segment(text, node) if node is not None else None
    assert segment is not None
    return segment


def _branch(source: str, func_type: str) -> str:
    """The ``elif func_type == UserDefinedDataStreamFunction.<func_type>:`` branch of
    ``extract_process_function``, up to the next branch."""
    start = re.search(rf"func_type == UserDefinedDataStreamFunction\.{func_type}:\n", source)
    assert start is not None, f"no {func_type} branch in extract_process_function"
    end = re.search(r"\n    (el)?if func_type ==", source[start.end() :])
    return source[start.end() : start.end() + end.start() if end else len(source)]


def _on_timer_body(branch: str) -> str:
    found = re.search(r"def on_timer_func\(timestamp\):\n(.*?)\n\n", branch, re.S)
    assert found is not None, "no on_timer_func in the branch"
    return textwrap.dedent(found.group(1)).strip()


def test_thread_mode_get_index_of_this_subtask_calls_the_method_flink_2_moved_to_task_info() -> None:
    """Item 1 (``flink_compat.subtask_index``): the thread-mode runtime context asks the Java
    ``StreamingRuntimeContext`` for ``getIndexOfThisSubtask()``, which Flink 2 replaced by
    ``getTaskInfo().getIndexOfThisSubtask()``: calling it raises, hence the fallback."""
    source = _source("runtime_context", "StreamingRuntimeContext", "get_index_of_this_subtask")
    assert "self._runtime_context.getIndexOfThisSubtask()" in source
    assert "getTaskInfo" not in source


def test_keyed_broadcast_on_timer_skips_the_side_output_filter_the_keyed_process_on_timer_has() -> None:
    """Item 2 (a rule the job follows): in thread mode, ``extract_process_function`` wraps a keyed
    process function's ``on_timer`` output in ``process_func`` (which routes ``(OutputTag, value)``
    pairs to side outputs) but yields a keyed *broadcast* process function's ``on_timer`` output as it
    is: a side output yielded there never reaches its tag. So the mailbox, which decides in
    ``on_timer``, emits every Kafka record on its main output."""
    source = _source("operations", "extract_process_function")
    keyed = _on_timer_body(_branch(source, "KEYED_PROCESS"))
    keyed_broadcast = _on_timer_body(_branch(source, "KEYED_CO_BROADCAST_PROCESS"))
    assert keyed == "yield from process_func(on_timer(timestamp, timer_context))"
    assert keyed_broadcast == "yield from on_timer(timestamp, timer_context)"
    # process_func is the side-output filter: it collects (OutputTag, value) pairs into side outputs.
    assert "side_output_context.collect(output_tag.tag_id, value[1])" in source


def test_thread_mode_byte_array_state_converts_per_byte_and_fails_on_a_missing_value() -> None:
    """Item 6 (``flink_compat.text_state_type``): thread mode converts a ``PRIMITIVE_ARRAY`` state
    value with ``ArrayDataConverter``, a tuple built element by element, which also fails on the
    ``None`` of a key without state; ``PICKLED_BYTE_ARRAY`` goes through ``PickleDataConverter``,
    one ``pickle`` call each way and ``None`` kept, so a ``str`` crosses as one ``byte[]``."""
    choose = _source("converters", "from_type_info", package=CONVERTERS)
    assert "PrimitiveArrayTypeInfo" in choose and "return ArrayDataConverter(" in choose
    assert re.search(r"PickledBytesTypeInfo.*\n\s*return PickleDataConverter\(\)", choose)
    array = _source("converters", "ArrayDataConverter", "to_internal", package=CONVERTERS)
    assert "return tuple(super(ArrayDataConverter, self).to_internal(value))" in array
    pickled = _source("converters", "PickleDataConverter", package=CONVERTERS)
    assert "if value is None:\n            return None" in pickled
    assert "return pickle.loads(value)" in pickled and "return pickle.dumps(value)" in pickled
