"""Write the FLINK_CONF_DIR baked into the rendezvous image (run once, at image build time).

The directory holds one config.yaml, layered:

1. PyFlink's bundled ``pyflink/conf/config.yaml``: the distribution defaults, among them the
   ``env.java.opts.all`` --add-opens/--add-exports flags Flink needs on Java 17;
2. the project's ``flink-conf/config.yaml`` (thread mode, checkpoints, restarts, memory, ...);
3. the container overrides below: bind to all interfaces, reach the JobManager by its compose
   service name ``jobmanager``, use the image's Python, keep state on the shared volume;

plus the log4j/logback files from ``pyflink/conf``. Usage (the Dockerfile does this, once the project
is installed: the files are read and flattened by the project's one reader, ``ops/flink_conf.py``)::

    python docker/flink_conf.py --app-dir /opt/rendezvous/app --out /opt/rendezvous/flink-conf
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import shutil
import sys
import sysconfig
from pathlib import Path
from typing import Any

import yaml

try:
    from ops.flink_conf import FlinkConfError, flatten, load_conf
except ModuleNotFoundError:  # run from a source tree where the project is not installed: it is one up
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from ops.flink_conf import FlinkConfError, flatten, load_conf

JOBMANAGER_HOST = "jobmanager"  # the compose service name; every container resolves it
STATE_DIR = "/opt/rendezvous/state"  # named volume, same path on the JobManager and TaskManager

CONTAINER_OVERRIDES: dict[str, Any] = {
    "jobmanager.bind-host": "0.0.0.0",
    "jobmanager.rpc.address": JOBMANAGER_HOST,
    "jobmanager.rpc.port": 6123,
    "taskmanager.bind-host": "0.0.0.0",
    "rest.address": JOBMANAGER_HOST,
    "rest.bind-address": "0.0.0.0",
    "rest.port": 8081,
    "blob.server.port": 6124,
    "execution.checkpointing.dir": f"file://{STATE_DIR}/checkpoints",
    "execution.checkpointing.savepoint-dir": f"file://{STATE_DIR}/savepoints",
}

# taskmanager.host is left unset so each TaskManager registers with its own container address.
REMOVED_KEYS = ("taskmanager.host",)

# What the project's thread-mode setup depends on: a build that loses it must fail, not run slower
# (switching modes across a savepoint silently drops Python keyed state).
REQUIRED: dict[str, str] = {"python.execution-mode": "thread"}

LOG_FILE_PATTERNS = ("log4j*.properties", "logback*.xml")


def python_settings(python: str, app_dir: str, site_packages: str) -> dict[str, str]:
    """The image's interpreter for the client and the workers; the project importable in thread mode."""
    return {
        "python.executable": python,
        "python.client.executable": python,
        "python.pythonpath": f"{site_packages}:{app_dir}",
    }


def nest(conf: dict[str, Any]) -> dict[str, Any]:
    """Dotted keys as sections, at any depth, as Flink reads them: {'a.b': 1, 'c': {'d.e': 2}} ->
    {'a': {'b': 1}, 'c': {'d': {'e': 2}}}. A key written both ways is one key (the later one wins, as in ``flatten``)."""
    out: dict[str, Any] = {}
    for key, value in conf.items():
        *parents, leaf = str(key).split(".")
        section: dict[str, Any] = {leaf: nest(value) if isinstance(value, dict) else value}
        for part in reversed(parents):
            section = {part: section}
        out = merge(out, section)
    return out


def merge(base: dict[str, Any], top: dict[str, Any], path: str = "") -> dict[str, Any]:
    """Deep merge, ``top`` wins. A key that is a value on one side and a section on the other is an error."""
    out = copy.deepcopy(base)
    for key, value in top.items():
        here = f"{path}{key}"
        if key in out and isinstance(out[key], dict) != isinstance(value, dict):
            raise ValueError(f"{here}: a section on one side and a value on the other")
        if isinstance(value, dict):
            out[key] = merge(out.get(key, {}), value, here + ".")
        else:
            out[key] = copy.deepcopy(value)
    return out


def remove(conf: dict[str, Any], dotted: str) -> None:
    """Delete a nested key (and sections it leaves empty); absent keys are fine."""
    *parents, leaf = dotted.split(".")
    chain = [conf]
    for part in parents:
        node = chain[-1].get(part)
        if not isinstance(node, dict):
            return
        chain.append(node)
    chain[-1].pop(leaf, None)
    for parent, part in zip(reversed(chain[:-1]), reversed(parents), strict=True):
        if parent[part]:
            break
        del parent[part]


def build_config(
    distribution: dict[str, Any], project: dict[str, Any], python: dict[str, str]
) -> dict[str, Any]:
    """The layered configuration (see the module docstring); each layer may write keys nested or dotted."""
    conf = merge(nest(distribution), nest(project))
    conf = merge(conf, nest({**CONTAINER_OVERRIDES, **python}))
    for key in REMOVED_KEYS:
        remove(conf, key)
    flat = flatten(conf)
    for key, want in REQUIRED.items():
        if flat.get(key) != want:
            raise ValueError(f"{key} must be {want!r}, the layered configuration has {flat.get(key)!r}")
    return conf


def pyflink_conf_dir() -> Path:
    spec = importlib.util.find_spec("pyflink")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("error: pyflink is not installed in this interpreter")
    return Path(next(iter(spec.submodule_search_locations))) / "conf"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--app-dir", type=Path, required=True, help="the project's source tree in the image")
    ap.add_argument("--out", type=Path, required=True, help="the FLINK_CONF_DIR to write")
    ap.add_argument("--python", default=sys.executable, help="interpreter for the client and the workers")
    a = ap.parse_args(argv)

    dist_dir = pyflink_conf_dir()
    site_packages = sysconfig.get_paths()["purelib"]
    try:
        conf = build_config(
            load_conf(dist_dir / "config.yaml"),
            load_conf(a.app_dir / "flink-conf" / "config.yaml"),
            python_settings(a.python, str(a.app_dir), site_packages),
        )
    except FlinkConfError as e:
        raise SystemExit(f"error: {e}") from None
    a.out.mkdir(parents=True, exist_ok=True)
    header = "# Generated at image build time by docker/flink_conf.py: PyFlink defaults + flink-conf/config.yaml + container overrides.\n"
    body = yaml.safe_dump(conf, sort_keys=False, default_flow_style=False, width=100_000)
    (a.out / "config.yaml").write_text(header + body, encoding="utf-8")
    copied = []
    for pattern in LOG_FILE_PATTERNS:
        for src in sorted(dist_dir.glob(pattern)):
            shutil.copy2(src, a.out / src.name)
            copied.append(src.name)
    flat = flatten(conf)
    print(f"wrote {a.out}/config.yaml ({len(flat)} keys) and {', '.join(copied)}")
    for key in sorted(REQUIRED) + sorted(CONTAINER_OVERRIDES) + sorted(python_settings("", "", "")):
        print(f"  {key}: {flat.get(key)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
