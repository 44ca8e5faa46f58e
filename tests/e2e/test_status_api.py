"""``/api/status`` (what the status page shows): figures, the update timeline, outages."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry, Histogram

from edgeinfer.observability.samples import read_registry
from edgeinfer.observability.status import StatusBoard, quantile
from edgeinfer.tools.broker import LocalBroker
from edgeinfer.tools.recordings import Recordings
from tests.support import ONNX_MODEL, ModuleProcess
from tests.updates_support import (
    HAR_LABELS,
    HAR_SELF_TEST,
    TFLITE,
    ModelServer,
    Rig,
    desired_for,
    update_is,
    wait_reported,
)


def status_of(module: ModuleProcess) -> dict[str, Any]:
    code, body = module.http_get("/api/status")
    assert code == 200, body
    doc: dict[str, Any] = orjson.loads(body)
    return doc


def wait_status(module: ModuleProcess, check: Any, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    doc = status_of(module)
    while not check(doc) and time.monotonic() < deadline:
        time.sleep(0.1)
        doc = status_of(module)
    assert check(doc), doc
    return doc


def test_quantiles_read_from_buckets_as_prometheus_does() -> None:
    registry = CollectorRegistry()
    hist = Histogram("h_seconds", "h", buckets=(0.001, 0.002, 0.005, 0.01), registry=registry)
    values = np.random.default_rng(3).uniform(0.0, 0.01, 4000)
    for v in values:
        hist.observe(float(v))
    flat = read_registry(registry)
    buckets = sorted(
        (float(dict(labels)["le"]), count)
        for (name, labels), count in flat.items()
        if name == "h_seconds_bucket"
    )
    # Uniform within each bucket: linear interpolation is exact up to sampling noise.
    assert quantile(0.5, buckets) == pytest.approx(np.quantile(values, 0.5), abs=2.5e-4)
    assert quantile(0.99, buckets) == pytest.approx(np.quantile(values, 0.99), abs=2.5e-4)
    assert quantile(0.5, [(0.1, 0.0), (float("inf"), 0.0)]) is None


def test_rates_come_from_the_counters_between_samples() -> None:
    registry = CollectorRegistry()
    from prometheus_client import Counter

    received = Counter("edgeinfer_messages_received", "r", registry=registry)
    board = StatusBoard(registry, dict)
    board.sample(now=100.0)
    received.inc(50)
    board.sample(now=102.0)
    series = board.snapshot()["series"]
    assert series["readings_per_s"] == [25.0]
    assert series["t"] == [102.0]


def test_the_status_follows_readings_and_an_update_step_by_step(
    rig: Rig, server: ModelServer, recordings: Recordings
) -> None:
    module = rig.module
    for i in range(60):
        rig.reading(recordings, i)
    rig.sink.wait_for(60)
    doc = wait_status(module, lambda d: d["totals"]["results"] == 60)
    assert doc["totals"]["readings"] == module.metric("edgeinfer_messages_received_total") == 60
    assert doc["model"]["version"] == "1.0.0"
    assert doc["ready"] == {"ready": True, "reason": "ok"}
    assert doc["broker"]["connected"] is True
    assert doc["batch"]["max_batch"] >= 1
    assert doc["queue"]["capacity"] > 0
    # Every reading is in the per-second rates once the sampler has seen it.
    doc = wait_status(
        module, lambda d: sum(d["series"]["readings_per_s"]) * d["sample_interval_s"] >= 59
    )
    assert any(p is not None for p in doc["series"]["p99_ms"])

    url = server.add("/har-1.1.0.tflite", TFLITE)
    rig.desire(desired_for(url, TFLITE, labels=HAR_LABELS, self_test=HAR_SELF_TEST, sequence=1))
    wait_reported(rig.sink, update_is("active", "1.1.0"))
    doc = wait_status(module, lambda d: d["update"]["state"] == "active")
    steps = [(s["state"], (s["target"] or {}).get("version")) for s in doc["history"]]
    assert steps[0] == ("idle", None)
    assert [s for s, _ in steps[1:]] == [
        "downloading",
        "verifying",
        "testing",
        "probation",
        "active",
    ]
    assert {v for _, v in steps[1:]} == {"1.1.0"}
    assert doc["model"]["version"] == "1.1.0"
    assert module.metric('edgeinfer_update_state{state="active"}') == 1
    assert module.metric('edgeinfer_update_state{state="probation"}') == 0


def test_the_status_answers_through_a_broker_outage(own_broker: LocalBroker, tmp_path: Any) -> None:
    module = ModuleProcess(own_broker.url, ONNX_MODEL, tmp_path).start()
    own_broker.stop()
    doc = wait_status(module, lambda d: not d["broker"]["connected"])
    assert doc["ready"]["ready"] is False
    assert "not connected to the broker" in doc["ready"]["reason"]
    doc = wait_status(module, lambda d: d["series"]["connected"][-1:] == [0])
    own_broker.start()
    wait_status(module, lambda d: d["ready"]["ready"], timeout=20)
