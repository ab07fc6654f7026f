"""PyFlink 2.2.1 workarounds, in one place. Each names the upstream behaviour it works around, and a test
pins that behaviour, failing the day it changes, so the workaround can go then: items 1 and 2 from the
installed PyFlink's source (tests/unit/test_flink_compat_pins.py:
``test_thread_mode_get_index_of_this_subtask_calls_the_method_flink_2_moved_to_task_info``,
``test_keyed_broadcast_on_timer_skips_the_side_output_filter_the_keyed_process_on_timer_has``,
``test_thread_mode_byte_array_state_converts_per_byte_and_fails_on_a_missing_value``), items 3 and 4 on
the mini cluster (tests/integration/test_flink_compat.py).

1. ``subtask_index``: the thread-mode runtime context calls ``getIndexOfThisSubtask``, which Flink 2
   moved to ``getTaskInfo()``.
2. (No code: a rule the job follows.) In thread mode, side outputs yielded from ``on_timer`` of a
   keyed *broadcast* process function are not routed (its ``on_timer`` skips the side-output filter
   that the keyed process function's has; ``fn_execution/datastream/embedded/operations.py``), and the
   mailbox decides deadlines, closes and orphans in ``on_timer``. So the mailbox emits every Kafka
   record on its main output, each row naming its topic, and only the archive, which is written when
   a request arrives (``process_element``), as a side output.
3. ``key_by_first_field``: ``DataStream.key_by`` always runs a Python key selector (an operator of its
   own, ``_stream_key_by_map_operator``: a Java/Python crossing and a thread hand-over per record), and
   keys by ``Row(key)``. The key is already a column of the Kafka source's query, so the stream is
   keyed by that field in Java, by Flink's own one-field selector (``KeySelectorUtil.OneKeySelector``),
   and the key is the ``String`` itself: a ``Row`` key is written by ``RowSerializer`` and hashed by
   ``RowUtils.deepHashCode`` on every state and timer lookup, 109 of the snapshot thread's 145 JFR
   samples and 45 of the mailbox thread's 250 Java ones at 833/s (docs/performance-history.md). The price:
   PyFlink's keyed operators cast the current key to ``Row`` in ``get_current_key``
   (``EmbeddedPythonKeyedCoProcessOperator$ContextImpl``), so a function keyed this way never calls it;
   the mailbox reads its request id from its own state (``udfs.mailbox.request_id_of``).
4. ``typed_rows``: a Table's DataStream has an ``ExternalTypeInfo``, and both Flink's key by a field
   position (item 3) and the keyed Python operators (``EmbeddedPythonKeyedProcessOperator.open``) want a
   ``RowTypeInfo``; the rows are the same ``Row`` objects, so the stream is declared with the equal
   ``RowTypeInfo``.
5. (JVM side, no Python code.) The Kafka connector's table sink (flink-connector-kafka 5.0.0) asks for
   every record's topic's partitions, and its ``DefaultKafkaSinkContext`` makes and closes a producer
   for each topic it has not seen, on the task thread. ``deps/kafka-sink-context`` replaces that class
   (one lookup producer), and ``jobs.rendezvous_job.connector_jars`` puts it first in ``pipeline.jars``;
   tests/integration/test_sink_context.py pins the upstream behaviour.
6. ``text_state_type``: keyed state of ``Types.STRING()`` is checkpointed by Java's ``StringSerializer``,
   which writes one character at a time through a synchronized ``DataOutputStream.write(int)``: a lock
   per byte, 130 of the snapshot thread's 163 JFR samples at 833/s (docs/performance-history.md). A byte array
   is written in one call, but thread mode converts ``PRIMITIVE_ARRAY(BYTE)`` state element by element
   into a tuple of ints and fails on a missing value (``fn_execution/embedded/converters.py``,
   ``ArrayDataConverter``). ``PICKLED_BYTE_ARRAY`` is a ``byte[]`` in Java that PyFlink fills with the
   pickle of the Python value: a built-in ``str`` stays a ``str`` (no project class is pickled) and
   crosses, and is checkpointed, as one array.
"""

from __future__ import annotations

from typing import Any


def subtask_index(runtime_context: Any) -> int:
    """This parallel instance's index, also where PyFlink asks Flink 2 for a method it no longer has."""
    try:
        return int(runtime_context.get_index_of_this_subtask())
    except AttributeError:
        java = getattr(runtime_context, "_runtime_context", None)
        if java is None:
            return 0  # a context without the method at all (the unit tests' fakes): one instance
        return int(java.getTaskInfo().getIndexOfThisSubtask())


def text_state_type() -> Any:
    """The type of keyed state that holds one Python ``str``, checkpointed as one byte array (item 6)."""
    from pyflink.common import Types

    return Types.PICKLED_BYTE_ARRAY()


def typed_rows(stream: Any, type_info: Any) -> Any:
    """``stream`` (fresh from ``to_data_stream``, its type not read yet) declared as ``type_info``."""
    stream._j_data_stream.getTransformation().setOutputType(type_info.get_java_type_info())
    return stream


def key_by_first_field(stream: Any, value_type: Any) -> Any:
    """A stream of ``Row(key STRING, value)`` keyed by ``key`` (a ``String``) in Java; its functions get
    ``value`` and must not call ``ctx.get_current_key()`` (item 3)."""
    from pyflink.common import Types
    from pyflink.datastream.data_stream import KeyedStream
    from pyflink.java_gateway import get_gateway

    jvm = get_gateway().jvm
    j_stream = stream._j_data_stream
    row_type = j_stream.getType()
    first_field = getattr(jvm.org.apache.flink.api.common.operators, "Keys$ExpressionKeys")(0, row_type)
    selector = jvm.org.apache.flink.streaming.util.keys.KeySelectorUtil.getSelectorForOneKey(
        first_field, None, row_type, j_stream.getExecutionConfig()
    )
    j_keyed = j_stream.keyBy(selector, Types.STRING().get_java_type_info())
    return KeyedStream(j_keyed, value_type, stream)
