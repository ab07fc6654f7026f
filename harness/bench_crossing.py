"""How records cross between Java and Python in the job, measured alone (part of `make bench-tuning`).

The job's records cross the JVM/Python boundary at three places: the Kafka source's rows into the
parse function, the keyed exchange before the mailbox, and the mailbox's outputs to the sinks. This
runs a small pipeline of the same shape on the mini cluster (thread mode, parallelism 1): a payload
made per record, parsed into a row, keyed by request id, then one keyed function. It compares the
encodings PyFlink offers at those crossings:

- ``typed``: explicit Row type info (what the job ships), so Flink serializes fields natively;
- ``pickled``: no output type, so every record crossing an exchange is a pickled Python object;
- ``string``: the payload handed over as STRING instead of BYTES.

Each variant runs twice, each in its own process (a small and a large count); the difference of the
two wall times per extra record is the cost of the path on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("typed", "pickled", "string")


def _run(n: int, variant: str) -> float:
    """Seconds env.execute() took for n records through the pipeline in this variant."""
    from pyflink.common import Configuration, Row, Types, WatermarkStrategy
    from pyflink.datastream import StreamExecutionEnvironment
    from pyflink.datastream.connectors.number_seq import NumberSequenceSource

    conf = Configuration()
    conf.set_string("python.execution-mode", "thread")
    conf.set_string("python.executable", sys.executable)
    conf.set_string("python.pythonpath", f"{sysconfig.get_paths()['purelib']}:{REPO_ROOT}")
    conf.set_string("parallelism.default", "1")
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    as_string = variant == "string"
    payload_type = Types.STRING() if as_string else Types.PRIMITIVE_ARRAY(Types.BYTE())
    row_type = Types.ROW_NAMED(["kind", "rid", "text"], [Types.STRING(), Types.STRING(), Types.STRING()])
    typed = variant != "pickled"

    def make(i: int) -> Any:
        text = json.dumps({"request_id": f"r{i}", "model_id": "gbt", "status": "ok", "output": {"p": 0.5}})
        return text if as_string else text.encode()

    def parse(value: Any) -> Row:
        text = value if isinstance(value, str) else bytes(value).decode()
        obj = json.loads(text)
        return Row("score", obj["request_id"], text)

    numbers = env.from_source(NumberSequenceSource(1, n), WatermarkStrategy.no_watermarks(), "numbers")
    payloads = numbers.map(make, output_type=payload_type)
    rows = payloads.map(parse, output_type=row_type) if typed else payloads.map(parse)
    keyed = rows.key_by(lambda r: r[1], key_type=Types.STRING())
    out = keyed.map(lambda r: len(r[2]), output_type=Types.INT()) if typed else keyed.map(lambda r: len(r[2]))
    out.filter(lambda x: x < 0).print()
    t0 = time.monotonic()
    env.execute(f"crossing-{variant}-{n}")
    return time.monotonic() - t0


def main(argv: list[str] | None = None) -> int:
    """One run in its own process (a thread-mode mini cluster runs one Python job per JVM reliably)."""
    ap = argparse.ArgumentParser(prog="python -m harness.bench_crossing", description=__doc__.split("\n")[0])
    ap.add_argument("--variant", choices=VARIANTS, required=True)
    ap.add_argument("--count", type=int, required=True)
    a = ap.parse_args(argv)
    os.environ.setdefault("FLINK_LOG_DIR", str(REPO_ROOT / "var" / "bench" / "work" / "crossing-log"))
    seconds = _run(a.count, a.variant)
    print(json.dumps({"variant": a.variant, "count": a.count, "seconds": round(seconds, 3)}))
    return 0


def measure(variant: str, small: int = 20_000, large: int = 120_000) -> dict[str, Any]:
    """Wall time per record for one variant: two runs in subprocesses, the difference of the two."""
    times = {}
    for n in (small, large):
        out = subprocess.run(
            [sys.executable, "-m", "harness.bench_crossing", "--variant", variant, "--count", str(n)],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=900, check=False,
        )  # fmt: skip
        line = next((x for x in reversed(out.stdout.splitlines()) if x.startswith("{")), None)
        if out.returncode != 0 or line is None:
            return {"variant": variant, "error": (out.stderr or out.stdout).strip().splitlines()[-1:]}
        times[n] = json.loads(line)["seconds"]
    return {
        "variant": variant,
        "seconds": {str(k): v for k, v in times.items()},
        "us_per_record": round((times[large] - times[small]) / (large - small) * 1e6, 1),
    }


if __name__ == "__main__":
    sys.exit(main())
