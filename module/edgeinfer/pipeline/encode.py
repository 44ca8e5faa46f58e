"""Encode stage: a reading's slice of the batch outputs into the result payload."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from edgeinfer.manifest import ModelIdentity
from edgeinfer.runtimes.base import Array

_DUMP_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def encode_result(
    topic: str,
    identity: ModelIdentity,
    outputs: dict[str, Array],
    rid: Any,
    ts: Any,
    latency_ms: float,
) -> bytes:
    """Return the JSON result for one reading (SPEC.md, "Results").

    ``label`` and ``score`` (the argmax of the first output) are added when the
    model has labels: a single value for a one-row reading, lists otherwise.
    """
    doc: dict[str, Any] = {
        "id": rid,
        "ts": ts,
        "topic": topic,
        "model": identity.name,
        "version": identity.version,
        "outputs": {name: np.ascontiguousarray(value) for name, value in outputs.items()},
        "latency_ms": round(latency_ms, 3),
    }
    if identity.labels:
        scores = np.asarray(next(iter(outputs.values())))
        flat = scores.reshape(len(scores), -1)
        best = flat.argmax(axis=1)
        labels = [identity.labels[i] if i < len(identity.labels) else str(i) for i in best]
        values = [float(flat[row, i]) for row, i in enumerate(best)]
        doc["label"] = labels[0] if len(labels) == 1 else labels
        doc["score"] = values[0] if len(values) == 1 else values
    return _compact(orjson.dumps(doc, option=_DUMP_OPTIONS))


def encode_error(topic: str, code: str, reason: str, rid: Any) -> bytes:
    """Return the JSON error report for one rejected reading (SPEC.md, "Topics")."""
    return _compact(orjson.dumps({"topic": topic, "error": code, "reason": reason, "id": rid}))


def _compact(payload: bytes) -> bytes:
    # orjson hands back its 4 KiB working buffer, not shrunk: a 200-byte
    # result then costs 4 KiB for as long as it waits for the broker's ack,
    # which for a backlog of thousands is most of the module's memory.
    return bytes(memoryview(payload))
