"""JSON on the hot path: orjson where it gives the same answer as the standard library, the standard
library where it does not. Pure Python (no pyflink).

orjson parses and writes the job's small records 5-10x faster than ``json`` (README "Versions, and
why"), which matters at five parses and a dozen writes per request. Its few differences are kept out:
it refuses lone surrogate escapes, valid for ``json``, so a document it refuses is parsed again by
``json`` (which then accepts it, or refuses it with the message the dead letter has always carried);
and a value it cannot write (an integer beyond 64 bits) is written by ``json``. It writes non-ASCII characters as UTF-8 where ``json`` escapes them: the same JSON value.
One difference is not kept out: orjson 3.13 reads an integer beyond 64 bits as a float (``json``
keeps it exact), so such a number in a score's output or a request's features loses precision.
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
    >>> loads(b'["\\\\ud800"]')  # a lone surrogate escape: orjson refuses, json reads it
    ['\\ud800']
    """
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        text = data if isinstance(data, str) else data.decode("utf-8")
        return json.loads(text, parse_constant=_reject_constant)


def dumps_bytes(obj: Any, sort_keys: bool = False) -> bytes:
    """Compact JSON of ``obj`` as UTF-8 bytes, keys in insertion order unless ``sort_keys``: what a Kafka
    record's value carries, with no text decoded and encoded again on the way.

    >>> dumps_bytes({"b": 1, "a": [True, None]})
    b'{"b":1,"a":[true,null]}'
    >>> dumps_bytes({"big": 2**70})  # beyond 64 bits: json writes it
    b'{"big":1180591620717411303424}'
    """
    try:
        return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS if sort_keys else 0)
    except TypeError:  # e.g. an integer beyond 64 bits, which json writes
        text = json.dumps(obj, separators=(",", ":"), sort_keys=sort_keys, allow_nan=False)
        return text.encode("utf-8")


def dumps(obj: Any, sort_keys: bool = False) -> str:
    """Compact JSON text of ``obj`` (no spaces), keys in insertion order unless ``sort_keys``.

    >>> dumps({"b": 1, "a": [True, None]})
    '{"b":1,"a":[true,null]}'
    >>> dumps({"b": 1, "a": 2}, sort_keys=True)
    '{"a":2,"b":1}'
    """
    return dumps_bytes(obj, sort_keys).decode("utf-8")
