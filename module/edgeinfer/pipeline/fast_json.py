"""A fast path for the common JSON reading: numbers copied straight into an array.

``{"features": [[...], ...], "id": ..., "ts": ...}`` (or a bare array) for a
model with one float input is most of what sensors send. orjson builds a Python
float for every number and numpy reads them back one by one: for a 600-value
window that is half the cost of answering it. simdjson parses the document and
copies its numbers into a buffer in C (flattening any nesting), so this module
first checks that the array is rectangular: one or two levels (the payload's
brackets are all the array's own), every row as long.

Anything else (other keys, duplicate keys, strings or ``null`` among the
numbers, deeper nesting, a document simdjson refuses) returns None and goes the
general way, which names what is wrong: the fast path never answers
differently, it only answers sooner (tests/test_properties.py compares them).
"""

from __future__ import annotations

import math
import typing
from typing import Any

import numpy as np
import simdjson

from edgeinfer.runtimes.base import Array

_KEYS = frozenset(("features", "id", "ts"))
_PROXIES = (simdjson.Array, simdjson.Object)


class FastReadings:
    """Reads the common JSON reading into float64 numbers. Not thread-safe (one per decoder)."""

    def __init__(self) -> None:
        self._parser = simdjson.Parser()

    def read(self, payload: bytes) -> tuple[Array, Any, Any] | None:
        """``(numbers, id, ts)``, the numbers shaped as the JSON nests them; None: not this case."""
        try:
            doc = self._parse(payload)
        except (ValueError, RuntimeError):  # UnicodeDecodeError is a ValueError
            return None
        # The proxies into the parser's buffer die with this call (the parser
        # refuses to parse again while any is alive): only copies leave.
        return _numbers(doc, payload)

    def _parse(self, payload: bytes) -> Any:
        try:
            return self._parser.parse(payload)
        except RuntimeError:
            # A proxy of an earlier document is still alive somewhere (an
            # exception's traceback): start afresh rather than fail.
            self._parser = simdjson.Parser()
            return self._parser.parse(payload)


def _numbers(doc: Any, payload: bytes) -> tuple[Array, Any, Any] | None:
    rid = ts = None
    if isinstance(doc, simdjson.Object):
        keys = list(doc.keys())
        if "features" not in keys or len(set(keys)) != len(keys) or not _KEYS.issuperset(keys):
            return None
        rid, ts = doc.get("id"), doc.get("ts")
        if not (_plain(rid) and _plain(ts)):
            return None
        features = doc["features"]
    elif isinstance(doc, simdjson.Array):
        features = doc
    else:
        return None
    if not isinstance(features, simdjson.Array) or len(features) == 0:
        return None
    # Every "[" in the payload is the array's own (the keys and id/ts hold none),
    # so their count says how deep it nests: 1, or one per row and the outer one.
    brackets = payload.count(b"[")
    if isinstance(features[0], simdjson.Array):
        if brackets != len(features) + 1:
            return None  # a row is not an array, or holds one
        try:
            # In C; a row that is not an array (a string or object has a length
            # too) is refused by as_buffer below.
            widths = set(map(len, typing.cast(Any, features)))
        except TypeError:  # a number has none
            return None
        if len(widths) != 1:
            return None
        shape: tuple[int, ...] = (len(features), widths.pop())
    else:
        if brackets != 1:
            return None
        shape = (len(features),)
    try:
        flat = np.frombuffer(features.as_buffer(of_type="d"), np.float64)
    except (TypeError, ValueError):  # a string, bool, null or object among the numbers
        return None
    if flat.size != math.prod(shape):
        return None
    return flat.reshape(shape), rid, ts


def _plain(value: Any) -> bool:
    """A scalar whose JSON text holds no "[" (a string may, written plainly or escaped)."""
    return not isinstance(value, _PROXIES) and not (isinstance(value, str) and "[" in value)
