"""The savepoint upgrade's staged client: ``flink run -py jobs/staged_upgrade.py --handoff FILE <job args>``.

Started by ``rendezvous cluster upgrade`` (ops/upgrade.py) while the old job still serves: builds the
new rendezvous job, writes ``FILE.ready``, waits for ``FILE`` to name the old job's savepoint, then
submits the new job restoring it. Building the graph is most of a submission's time, so it happens
before the old job stops. Nothing runs at import.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from jobs import rendezvous_job
from ops.upgrade import HANDOFF_TIMEOUT_S, write_atomic


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[0] != "--handoff":
        raise SystemExit("usage: jobs/staged_upgrade.py --handoff FILE <rendezvous job arguments>")
    handoff = Path(argv[1])
    from pyflink.common import Configuration  # pyflink's import is slow: only once the arguments are right

    env, cfg = rendezvous_job.prepare(argv[2:])
    write_atomic(handoff.with_name(handoff.name + ".ready"), "ready\n")
    deadline = time.monotonic() + HANDOFF_TIMEOUT_S
    while not handoff.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"no savepoint handed over in {HANDOFF_TIMEOUT_S:.0f} s; not submitting")
        time.sleep(0.05)
    msg = json.loads(handoff.read_text(encoding="utf-8"))
    if not msg.get("savepoint"):
        raise SystemExit(f"upgrade aborted ({msg.get('abort')}); not submitting")
    conf = Configuration()
    conf.set_string("execution.savepoint.path", str(msg["savepoint"]))
    env.configure(conf)
    print(f"rendezvous job: policy v{cfg.policy.version}, restoring {msg['savepoint']}", flush=True)
    env.execute(f"rendezvous policy-v{cfg.policy.version}")


if __name__ == "__main__":
    main(sys.argv[1:])
