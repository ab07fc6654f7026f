"""Pins the PyFlink 2.2.1 behaviours that udfs/flink_compat.py works around, on the mini cluster.

When one of these tests fails after an upgrade, the behaviour changed: the workaround may go.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from udfs import flink_compat, flink_fn

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
QUERY = (
    "SELECT k AS `key`, ROW(k, CAST(v AS BYTES), 1, 0, CAST(7 AS BIGINT)) AS `record` "
    "FROM (VALUES ('a', 'x'), ('b', 'y'), ('a', 'z')) AS T(k, v)"
)


def _env() -> tuple[Any, Any]:
    from pyflink.common import Configuration
    from pyflink.datastream import StreamExecutionEnvironment
    from pyflink.table import StreamTableEnvironment

    conf = Configuration()
    site_packages = next(p for p in sys.path if p.endswith("site-packages"))
    for k, v in {
        "python.execution-mode": "thread",
        "python.executable": sys.executable,
        "python.pythonpath": f"{site_packages}:{REPO_ROOT}",
        "rest.port": "0",
        "parallelism.default": "1",
    }.items():
        conf.set_string(k, v)
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    return env, StreamTableEnvironment.create(env)


def _keyed_values(typed: bool, ask_the_key: bool = False) -> list[str]:
    """Rows of a Table keyed by their first field in Java, each as 'key:value:n' from a keyed function
    that counts each key's rows in keyed state (the key read from the row, or from the context)."""
    from pyflink.common import Types
    from pyflink.datastream import KeyedProcessFunction, RuntimeContext
    from pyflink.datastream.state import ValueStateDescriptor

    class Show(KeyedProcessFunction):  # type: ignore[misc]
        def open(self, runtime_context: RuntimeContext) -> None:
            self.seen = runtime_context.get_state(ValueStateDescriptor("seen", Types.INT()))

        def process_element(self, value: Any, ctx: Any) -> Any:
            n = (self.seen.value() or 0) + 1
            self.seen.update(n)
            key = ctx.get_current_key() if ask_the_key else value[0]
            yield f"{key}:{bytes(value[1]).decode()}:{n}"

    env, t_env = _env()
    stream = t_env.to_data_stream(t_env.sql_query(QUERY))
    if typed:
        stream = flink_compat.typed_rows(stream, flink_fn.KEYED_RECORD_TYPE)
    keyed = flink_compat.key_by_first_field(stream, flink_fn.RECORD_TYPE)
    with keyed.process(Show(), output_type=Types.STRING()).execute_and_collect() as it:
        return sorted(it)


def test_a_tables_rows_keyed_in_java_reach_the_keyed_function_with_their_keyed_state() -> None:
    assert _keyed_values(typed=True) == ["a:x:1", "a:z:2", "b:y:1"]


def test_a_key_by_field_position_refuses_a_tables_own_row_type() -> None:
    """Why ``typed_rows`` exists: a Table's DataStream has an ExternalTypeInfo, and Flink keys by a field
    position only a tuple type (a ``RowTypeInfo``; the keyed Python operators cast to it as well)."""
    from py4j.protocol import Py4JJavaError

    with pytest.raises(Py4JJavaError, match="field positions is only valid for tuple data types"):
        _keyed_values(typed=False)


def test_the_keyed_python_operator_cannot_give_back_a_string_key() -> None:
    """Why the mailbox reads its request id from its state (flink_compat item 3,
    ``udfs.mailbox.request_id_of``): the operator casts the current key to ``Row``. If this fails, PyFlink
    gives a ``String`` key back and the mailbox's timer may ask the context again."""
    from py4j.protocol import Py4JJavaError

    with pytest.raises(
        Py4JJavaError, match=r"String cannot be cast to (class )?org\.apache\.flink\.types\.Row"
    ):
        _keyed_values(typed=True, ask_the_key=True)
