"""Flink's configuration as the project reads it, in one place.

The job, the session cluster, the savepoint upgrade's compatibility check and the image's
configuration (docker/flink_conf.py) all read the same YAML files here; one reader means the check
sees the configuration the job really runs with. Flink's YAML may nest keys or write them dotted
(``a: {b: 1}`` and ``a.b: 1`` are one key); Flink's ``Configuration`` takes strings, lists as
``;``-separated items and booleans as ``true``/``false``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml


class FlinkConfError(ValueError):
    """A Flink configuration file that cannot be read or is not a mapping; the message names the file."""


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """Nested YAML -> ``{'a.b.c': 'value'}`` in the string form Flink parses.

    >>> flatten({"python": {"execution-mode": "thread"}, "a.b": True, "jars": ["x", "y"], "n": None})
    {'python.execution-mode': 'thread', 'a.b': 'true', 'jars': 'x;y'}
    """
    out: dict[str, str] = {}
    if isinstance(data, Mapping):
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(data, list):
        out[prefix[:-1]] = ";".join(str(x) for x in data)
    elif isinstance(data, bool):
        out[prefix[:-1]] = "true" if data else "false"
    elif data is not None:
        out[prefix[:-1]] = str(data)
    return out


def load_conf(path: Path) -> dict[str, Any]:
    """One YAML configuration file as written (nested or dotted, values as YAML typed them); an empty
    file is an empty configuration. For a writer that lays files over each other; readers take
    ``read_conf``."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise FlinkConfError(f"cannot read Flink configuration {path}: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict):
        raise FlinkConfError(f"{path}: a Flink configuration must be a YAML mapping")
    return data


def read_conf(path: Path) -> dict[str, str]:
    """One YAML configuration file, flattened (``flatten``); an empty file is an empty configuration."""
    return flatten(load_conf(path))


def parse_overrides(job_args: Sequence[str]) -> dict[str, str]:
    """The ``-D key=value`` / ``-Dkey=value`` items in job arguments, later ones winning (as the job does).

    >>> parse_overrides(["--group-id", "g", "-D", "a=1", "-Da=2", "-Db=x=y", "-D"])
    {'a': '2', 'b': 'x=y'}
    """
    out: dict[str, str] = {}
    items = list(job_args)
    i = 0
    while i < len(items):
        arg = items[i]
        item = None
        if arg == "-D" and i + 1 < len(items):
            item = items[i + 1]
            i += 1
        elif arg.startswith("-D") and len(arg) > 2:
            item = arg[2:]
        if item is not None:
            key, sep, value = item.partition("=")
            if sep:
                out[key.strip()] = value
        i += 1
    return out


def effective_conf(
    cluster_conf: Mapping[str, Any], flink_conf: Mapping[str, Any], job_args: Sequence[str]
) -> dict[str, str]:
    """What the job runs with: the cluster's conf, the job's ``--flink-conf`` over it, then its ``-D``
    items (the order ``jobs/rendezvous_job.py`` applies them)."""
    conf = flatten(cluster_conf)
    conf.update(flatten(flink_conf))
    conf.update(parse_overrides(job_args))
    return conf


PARALLELISM_KEY = "parallelism.default"


def job_parallelism(conf: Mapping[str, str]) -> int:
    """The parallelism a job runs with, from its effective configuration (Flink's default, 1, if unset).

    >>> job_parallelism({"parallelism.default": "2"}), job_parallelism({})
    (2, 1)
    """
    value = str(conf.get(PARALLELISM_KEY, "1"))
    if not value.isdigit() or int(value) < 1:
        raise FlinkConfError(f"{PARALLELISM_KEY}: a whole number of at least 1, got {value!r}")
    return int(value)
