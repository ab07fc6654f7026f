"""PyFlink 2.2.1 workarounds, in one place. Each names the upstream behaviour it works around and has a
test that pins that behaviour (tests/integration/test_flink_compat.py), so it can go the day it is fixed.

1. ``subtask_index``: the thread-mode runtime context calls ``getIndexOfThisSubtask``, which Flink 2
   moved to ``getTaskInfo()``.
2. (No code: a rule the job follows.) In thread mode, side outputs yielded from ``on_timer`` of a
   keyed *broadcast* process function are not routed (its ``on_timer`` skips the side-output filter
   that the keyed process function's has; ``fn_execution/datastream/embedded/operations.py``), and the
   mailbox decides deadlines, closes and orphans in ``on_timer``. So the mailbox emits every Kafka
   record on its main output, each row naming its topic, and only the archive, which is written when
   a request arrives (``process_element``), as a side output.
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
