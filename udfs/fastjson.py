"""JSON on the hot path: orjson where it gives the same answer as the standard library, the standard
library where it does not. Pure Python (no pyflink).

orjson parses and writes the job's small records 5-10x faster than ``json`` (README "Versions, and
why"), which matters at five parses and a dozen writes per request. Its few differences are kept out:
it refuses integers beyond 64 bits and lone surrogate escapes, both valid for ``json``, so a document
it refuses is parsed again by ``json`` (which then accepts it, or refuses it with the message the dead
letter has always carried); and a value it cannot write (an integer beyond 64 bits) is written by
``json``. It writes non-ASCII characters as UTF-8 where ``json`` escapes them: the same JSON value.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

# json.loads accepts NaN/Infinity by default; they are not JSON and no model output may be NaN.


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def loads(data: bytes | str) -> Any:
    """A JSON document; ``ValueError`` (or ``RecursionError``) with ``json``'s message if it is not one.

    >>> loads(b'{"a": [1, 2.5, "x"]}')
    {'a': [1, 2.5, 'x']}
    >>> loads(b"[" + b"9" * 30 + b"]")  # beyond 64 bits: orjson refuses, json reads it
    [999999999999999999999999999999]
    """
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        text = data if isinstance(data, str) else data.decode("utf-8")
        return json.loads(text, parse_constant=_reject_constant)


def dumps(obj: Any, sort_keys: bool = False) -> str:
    """Compact JSON text of ``obj`` (no spaces), keys in insertion order unless ``sort_keys``.

    >>> dumps({"b": 1, "a": [True, None]})
    '{"b":1,"a":[true,null]}'
    >>> dumps({"b": 1, "a": 2}, sort_keys=True)
    '{"a":2,"b":1}'
    """
    try:
        return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS if sort_keys else 0).decode("utf-8")
    except TypeError:  # e.g. an integer beyond 64 bits, which json writes
        return json.dumps(obj, separators=(",", ":"), sort_keys=sort_keys, allow_nan=False)
