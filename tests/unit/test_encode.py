"""The encode stage: result and error payloads (the fields a result's outputs give it are
read by :func:`edgeinfer.model.interpretation.interpret`, as the engine reads them)."""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from edgeinfer.manifest.document import Manifest
from edgeinfer.model.interpretation import interpret
from edgeinfer.model.loaded import LoadedModel
from edgeinfer.pipeline.encode import encode_error, encode_result
from edgeinfer.runtimes.fake import sum_model

LOADED = LoadedModel(
    sum_model(),
    Manifest("har", "1.0.0", labels=("standing", "walking", "running", "badminton")),
    Path("har"),
    "",
)
HAR = LOADED.identity


def encode(topic: str, outputs: dict[str, Any], rid: Any, ts: Any, latency_ms: float) -> bytes:
    """The result the engine publishes for these outputs of the HAR model."""
    fields = interpret(LOADED, outputs).fields
    return encode_result(topic, HAR, outputs, rid, ts, latency_ms, fields)


def test_a_result_carries_outputs_label_score_and_the_echoed_id_and_ts() -> None:
    probs = np.array([[0.1, 0.7, 0.15, 0.05]], np.float32)
    doc = orjson.loads(encode("sensors/a", {"probabilities": probs}, "r1", 17.5, 0.12345))
    assert doc == {
        "id": "r1",
        "ts": 17.5,
        "topic": "sensors/a",
        "model": "har",
        "version": "1.0.0",
        "outputs": {"probabilities": [[0.1, 0.7, 0.15, 0.05]]},
        "latency_ms": 0.123,
        "label": "walking",
        "score": float(np.float32(0.7)),
    }


def test_a_multi_row_reading_gets_a_label_and_score_per_row() -> None:
    probs = np.array([[0.9, 0.1, 0, 0], [0, 0, 0.2, 0.8]], np.float32)
    doc = orjson.loads(encode("t", {"p": probs}, None, None, 1.0))
    assert doc["label"] == ["standing", "badminton"]
    assert doc["score"] == [float(np.float32(0.9)), float(np.float32(0.8))]


def test_an_error_report_names_topic_error_reason_and_id() -> None:
    assert orjson.loads(encode_error("sensors/a", "bad_json", "not JSON", 4)) == {
        "topic": "sensors/a",
        "error": "bad_json",
        "reason": "not JSON",
        "id": 4,
    }


def test_results_waiting_for_their_ack_cost_their_size_not_a_4k_buffer() -> None:
    probs = np.array([[0.1, 0.7, 0.15, 0.05]], np.float32)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [
            encode("sensors/x/imu", {"probabilities": probs}, i, None, 0.5) for i in range(1000)
        ]
        per_result = (tracemalloc.get_traced_memory()[0] - before) / len(kept)
    finally:
        tracemalloc.stop()
    assert len(kept[0]) < 250
    assert per_result < 400, f"{per_result:.0f} bytes held per {len(kept[0])}-byte result"
