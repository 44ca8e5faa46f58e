"""The cascade's budget and the escalated reading's payload.

The budget bounds escalations two ways, both held at every moment:

* a fraction: each reading earns ``max_fraction`` of a credit (banked up to
  one), an escalation spends one, so after N readings at most
  ``floor(N * max_fraction)`` were escalated;
* a rate: a token bucket of ``max(1, max_per_s)`` tokens refilled at
  ``max_per_s`` a second, so in any T seconds at most
  ``max(1, max_per_s) + T * max_per_s`` were escalated.

The escalated payload is a reading in a JSON envelope (docs/reference.md,
"Camera readings"): the original bytes in base64 under ``payload``, the
reading's ``id`` and ``ts``, and under ``escalation`` who escalated it and what
the edge answered. A module subscribed to the escalation topic decodes it as
a normal reading and answers with the same id.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson

_EPSILON = 1e-9  # the credit is a sum of floats: 10 x 0.1 must make one


class Budget:
    """How many uncertain readings may be escalated; owned by the serving thread."""

    def __init__(
        self, max_fraction: float, max_per_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._fraction = max_fraction
        self._rate = max_per_s
        self._capacity = max(1.0, max_per_s)
        self._tokens = self._capacity
        self._credit = 0.0
        self._clock = clock
        self._last = clock()

    def seen(self) -> None:
        """Count one reading answered (uncertain or not): it earns its share of the fraction."""
        self._credit = min(1.0, self._credit + self._fraction)

    def take(self) -> bool:
        """Spend one escalation if both the fraction and the rate allow it."""
        now = self._clock()
        self._tokens = min(self._capacity, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._credit + _EPSILON < 1.0 or self._tokens < 1.0:
            return False
        self._credit -= 1.0
        self._tokens -= 1.0
        return True


def escalation_id(module_id: str) -> str:
    """An id for an escalated reading that came without one (the edge result carries it too)."""
    return f"{module_id}-{uuid.uuid4().hex[:16]}"


def escalation_payload(
    payload: bytes, rid: Any, ts: Any, topic: str, source: dict[str, Any]
) -> bytes:
    """The envelope published on the escalation topic.

    ``source``: ``module_id``, ``model``, ``version`` and ``result`` (the edge's
    label, score and top classes, or its detections).
    """
    doc = {
        "payload": base64.b64encode(payload).decode("ascii"),
        "id": rid,
        "ts": ts,
        "escalation": {"topic": topic, **source},
    }
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
