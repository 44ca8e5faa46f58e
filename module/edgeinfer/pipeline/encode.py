"""Encode stage: a reading's share of the outputs into the result payload."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from edgeinfer.manifest.document import ModelIdentity
from edgeinfer.pipeline.outputs import json_ready
from edgeinfer.runtimes.base import Value

# Maps keep their keys, also when they are numbers (a classifier's class ids).
_DUMP_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def encode_result(
    topic: str,
    identity: ModelIdentity,
    outputs: Mapping[str, Value],
    rid: Any,
    ts: Any,
    latency_ms: float,
    fields: Mapping[str, Any] | None = None,
    window: Mapping[str, Any] | None = None,
) -> bytes:
    """Return the JSON result for one reading (docs/reference.md, "Results").

    ``fields``: what the outputs say (``label``, ``score``, ``top``, ``detections``:
    :func:`edgeinfer.model.interpretation.interpret`) and the cascade's ``escalated``;
    ``window`` names the samples a windowed model's result answers.
    """
    doc: dict[str, Any] = {
        "id": rid,
        "ts": ts,
        "topic": topic,
        "model": identity.name,
        "version": identity.version,
        "outputs": {name: json_ready(value) for name, value in outputs.items()},
        "latency_ms": round(latency_ms, 3),
    }
    if fields:
        doc.update(fields)
    if window is not None:
        doc["window"] = window
    return _compact(orjson.dumps(doc, option=_DUMP_OPTIONS))


def encode_error(topic: str, code: str, reason: str, rid: Any) -> bytes:
    """Return the JSON error report for a rejected reading (docs/reference.md, "Error reports")."""
    return _compact(orjson.dumps({"topic": topic, "error": code, "reason": reason, "id": rid}))


def _compact(payload: bytes) -> bytes:
    # orjson hands back its 4 KiB working buffer, not shrunk: a 200-byte
    # result then costs 4 KiB for as long as it waits for the broker's ack,
    # which for a backlog of thousands is most of the module's memory.
    return bytes(memoryview(payload))
