"""End to end through a real mosquitto: readings in, results and error reports out."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson
import pytest

from edgeinfer.tools.broker import LocalBroker
from edgeinfer.tools.recordings import Recordings
from tests.support import ONNX_MODEL, TFLITE_MODEL, Collector, ModuleProcess, Publisher
from tests.updates_support import busy_model


def reference(windows: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(ONNX_MODEL), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(["probabilities"], {"window": windows})[0])


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def start(
    modules: list[ModuleProcess],
    broker: LocalBroker,
    tmp_path: Path,
    model: Path = ONNX_MODEL,
    ready_s: float = 20.0,
    **env: str,
) -> ModuleProcess:
    module = ModuleProcess(broker.url, model, tmp_path, env=env).start(timeout=ready_s)
    modules.append(module)
    return module


def test_every_payload_format_gets_the_models_answer_with_id_and_ts_echoed(
    collector: Callable[..., Collector],
    publisher: Callable[..., Publisher],
    broker: LocalBroker,
    modules: list[ModuleProcess],
    tmp_path: Path,
    recordings: Recordings,
) -> None:
    module = start(modules, broker, tmp_path)
    window = recordings.windows[12]
    expected = reference(window[np.newaxis])
    sink = collector([module.result_topic("+")])
    pub = publisher()
    pub.send(module.topic("nested"), {"id": "a-1", "ts": 1700000000.5, "features": window.tolist()})
    pub.send(module.topic("flat"), window.ravel().tolist())
    pub.send(module.topic("npy"), npy_bytes(window))
    pub.send(module.topic("named"), {"id": 7, "inputs": {"window": window.tolist()}})
    pub.send(module.topic("batched"), {"id": 8, "features": window[np.newaxis].tolist()})
    sink.wait_for(5)
    by_topic = {d["topic"].rsplit("/", 1)[1]: d for d in sink.docs()}
    assert sorted(by_topic) == ["batched", "flat", "named", "nested", "npy"]
    truth = recordings.label_names[recordings.labels[12]]
    for doc in by_topic.values():
        assert doc["model"] == "har"
        assert doc["version"] == "1.0.0"
        np.testing.assert_allclose(doc["outputs"]["probabilities"], expected, atol=1e-6)
        assert doc["label"] == truth
        assert doc["score"] == pytest.approx(float(expected.max()), abs=1e-6)
        assert doc["latency_ms"] >= 0
    assert by_topic["nested"]["id"] == "a-1"
    assert by_topic["nested"]["ts"] == 1700000000.5
    assert by_topic["nested"]["topic"] == module.topic("nested")
    assert by_topic["named"]["id"] == 7
    assert by_topic["flat"]["id"] is None
    pub.flush()


def test_a_multi_input_model_takes_named_inputs_with_int64_and_several_rows(
    collector: Callable[..., Collector],
    publisher: Callable[..., Publisher],
    broker: LocalBroker,
    modules: list[ModuleProcess],
    tmp_path: Path,
    multi_input_model: Path,
) -> None:
    module = start(modules, broker, tmp_path, model=multi_input_model)
    sink = collector([module.result_topic("+"), module.errors_topic])
    pub = publisher()
    pub.send(module.topic("one"), {"id": 1, "inputs": {"x": [1, 2, 3], "k": 4}})
    pub.send(
        module.topic("two"), {"id": 2, "inputs": {"x": [[1, 2, 3], [4, 5, 6]], "k": [[1], [2]]}}
    )
    pub.send(module.topic("bad"), {"id": 3, "inputs": {"x": [1, 2, 3], "k": 1.5}})
    pub.send(module.topic("missing"), {"id": 4, "inputs": {"x": [1, 2, 3]}})
    sink.wait_for(4)
    results = {d["id"]: d for d in sink.docs("/inference/")}
    errors = {d["id"]: d for d in sink.docs("/errors")}
    assert results[1]["outputs"] == {"y": [[10.0]]}
    assert results[2]["outputs"] == {"y": [[7.0], [17.0]]}
    assert "label" not in results[1]
    assert errors[3]["error"] == "wrong_dtype"
    assert errors[3]["reason"] == "input 'k' holds non-integer values: expected integers for int64"
    assert errors[4]["error"] == "bad_payload"
    assert errors[4]["reason"] == "inputs ['x'] do not match the model: expected exactly ['x', 'k']"
    pub.flush()


def test_the_tflite_model_serves_the_same_answers_as_the_onnx_model(
    collector: Callable[..., Collector],
    publisher: Callable[..., Publisher],
    broker: LocalBroker,
    modules: list[ModuleProcess],
    tmp_path: Path,
    recordings: Recordings,
) -> None:
    module = start(modules, broker, tmp_path, model=TFLITE_MODEL)
    sink = collector([module.result_topic("+")])
    pub = publisher()
    for i, window in enumerate(recordings.windows):
        pub.send(module.topic("imu"), {"id": i, "features": window.tolist()})
    sink.wait_for(len(recordings.windows))
    docs = sorted(sink.docs(), key=lambda d: d["id"])
    got = np.array([d["outputs"]["probabilities"][0] for d in docs])
    np.testing.assert_allclose(got, reference(recordings.windows), atol=1e-5)
    labels = [d["label"] for d in docs]
    assert labels == [recordings.label_names[i] for i in recordings.labels]
    pub.flush()


def test_batching_on_and_off_give_identical_results(
    broker: LocalBroker, modules: list[ModuleProcess], tmp_path: Path, recordings: Recordings
) -> None:
    single = start(modules, broker, tmp_path, EDGEINFER_PIPELINE_MAX_BATCH="1")
    batched = start(
        modules,
        broker,
        tmp_path,
        EDGEINFER_PIPELINE_MAX_BATCH="16",
        EDGEINFER_PIPELINE_MAX_DELAY_MS="20",
    )
    answers = {}
    for module in (single, batched):
        sink = Collector(broker.url, [module.result_topic("+")])
        pub = Publisher(broker.url)
        for i, window in enumerate(recordings.windows):
            pub.send(module.topic("imu"), {"id": i, "features": window.tolist()})
        sink.wait_for(len(recordings.windows))
        answers[module] = {d["id"]: d["outputs"]["probabilities"] for d in sink.docs()}
        sink.close()
        pub.close()
    assert len(answers[single]) == len(answers[batched]) == len(recordings.windows)
    for i in answers[single]:
        np.testing.assert_allclose(answers[batched][i], answers[single][i], rtol=0, atol=1e-6)
    runs_single = single.metric("edgeinfer_batch_size_count")
    runs_batched = batched.metric("edgeinfer_batch_size_count")
    assert runs_single == len(recordings.windows)
    assert batched.metric("edgeinfer_batch_size_sum") == len(recordings.windows)
    assert runs_batched < runs_single / 2, (
        "the batched module should have run fewer, larger batches"
    )


BAD_READINGS: list[tuple[bytes, str, str]] = [
    (b'{"features": [1, 2', "bad_json", "payload is not JSON"),
    (b"\xff\xfe\x00garbage", "bad_encoding", "payload is not valid UTF-8"),
    (b'{"features": [NaN, 1]}', "bad_json", "payload is not JSON"),
    (
        orjson.dumps({"features": [1.0] * 599}),
        "wrong_shape",
        "input 'window' got shape [599] (599 values): expected 600 values shaped [100, 6]",
    ),
    (
        orjson.dumps({"features": ["a"] * 600}),
        "wrong_dtype",
        "input 'window' holds strings: expected numbers for float32",
    ),
    (orjson.dumps({"features": [[1, 2], [3]]}), "wrong_shape", "input 'window' is a ragged array"),
    (
        orjson.dumps({"id": "big", "features": [0.5] * 40_000}),
        "oversize",
        "expected at most 65536 (pipeline.max_payload_bytes)",
    ),
    (
        npy_bytes(np.full((100, 6), np.nan, np.float32)),
        "not_finite",
        "input 'window' holds NaN or infinity: expected finite numbers",
    ),
    (b"\x93NUMPYbroken", "bad_npy", "cannot read .npy payload"),
    (b'"just a string"', "bad_payload", "payload is a JSON str: expected an object"),
    (
        orjson.dumps({"id": 99, "readings": [1]}),
        "bad_payload",
        'payload has neither "features" nor "inputs"',
    ),
]


def test_a_flood_of_malformed_readings_is_reported_and_the_module_keeps_serving(
    collector: Callable[..., Collector],
    publisher: Callable[..., Publisher],
    broker: LocalBroker,
    modules: list[ModuleProcess],
    tmp_path: Path,
    recordings: Recordings,
) -> None:
    module = start(modules, broker, tmp_path, EDGEINFER_PIPELINE_MAX_PAYLOAD_BYTES="65536")
    sink = collector([module.result_topic("+"), module.errors_topic])
    pub = publisher()
    rounds = 20
    for r in range(rounds):
        for payload, _, _ in BAD_READINGS:
            pub.send(module.topic("bad"), payload)
        pub.send(module.topic("good"), {"id": r, "features": recordings.windows[r].tolist()})
    total = rounds * (len(BAD_READINGS) + 1)
    sink.wait_for(total, timeout=30)
    errors = sink.docs("/errors")
    results = sink.docs("/inference/")
    assert len(errors) == rounds * len(BAD_READINGS)
    assert sorted(d["id"] for d in results) == list(range(rounds))
    for i, (_, code, reason) in enumerate(BAD_READINGS):
        report = errors[i]
        assert report["topic"] == module.topic("bad")
        assert report["error"] == code
        assert reason in report["reason"]
    assert errors[6]["id"] == "big"
    assert errors[10]["id"] == 99
    assert module.http_get("/readyz")[0] == 200
    assert module.metric("edgeinfer_reading_errors_total") == rounds * len(BAD_READINGS)
    assert module.wait_metric("edgeinfer_results_published_total", rounds) == rounds
    pub.flush()


def test_health_readiness_and_metrics_endpoints(
    broker: LocalBroker, modules: list[ModuleProcess], tmp_path: Path
) -> None:
    module = start(modules, broker, tmp_path)
    assert module.http_get("/healthz") == (200, b'{"status":"alive"}')
    status, body = module.http_get("/readyz")
    assert (status, orjson.loads(body)) == (200, {"ready": True, "reason": "ok"})
    status, body = module.http_get("/metrics")
    text = body.decode()
    for name in (
        "edgeinfer_messages_received_total",
        "edgeinfer_results_published_total",
        "edgeinfer_inference_seconds_bucket",
        "edgeinfer_end_to_end_seconds_bucket",
        "edgeinfer_batch_size_bucket",
        "edgeinfer_queue_depth",
        "edgeinfer_backpressure_waits_total",
        "edgeinfer_broker_connected 1.0",
        'edgeinfer_model_info{format="onnx"',
    ):
        assert name in text, name
    assert module.http_get("/nope")[0] == 404


def test_readyz_reports_503_with_the_reason_while_the_broker_is_away(
    own_broker: LocalBroker, modules: list[ModuleProcess], tmp_path: Path
) -> None:
    module = start(modules, own_broker, tmp_path)
    own_broker.stop()
    deadline = time.monotonic() + 10
    status, body = module.http_get("/readyz")
    while status == 200 and time.monotonic() < deadline:
        status, body = module.http_get("/readyz")
    assert status == 503
    doc = orjson.loads(body)
    assert doc["ready"] is False
    assert doc["reason"].startswith("not connected to the broker")
    own_broker.start()
    module.wait_ready(15)


def test_mqtt_3_1_1_is_selectable_and_serves_the_same(
    collector: Callable[..., Collector],
    publisher: Callable[..., Publisher],
    broker: LocalBroker,
    modules: list[ModuleProcess],
    tmp_path: Path,
    recordings: Recordings,
) -> None:
    module = start(modules, broker, tmp_path, EDGEINFER_BROKER_PROTOCOL="3.1.1")
    sink = collector([module.result_topic("+")])
    pub = publisher()
    for i in range(20):
        pub.send(module.topic("imu"), {"id": i, "features": recordings.windows[i].tolist()})
    sink.wait_for(20)
    assert sorted(d["id"] for d in sink.docs()) == list(range(20))
    pub.flush()


def test_a_full_queue_applies_back_pressure_and_drops_nothing(
    collector: Callable[..., Collector],
    publisher: Callable[..., Publisher],
    broker: LocalBroker,
    modules: list[ModuleProcess],
    tmp_path: Path,
    recordings: Recordings,
) -> None:
    module = start(
        modules,
        broker,
        tmp_path,
        EDGEINFER_PIPELINE_QUEUE_SIZE="2",
        EDGEINFER_PIPELINE_MAX_BATCH="1",
        EDGEINFER_TOPICS_INPUT_QOS="0",
    )
    sink = collector([module.result_topic("+")])
    pub = publisher()
    for i in range(400):
        pub.send(module.topic("imu"), {"id": i, "features": recordings.windows[i % 40].tolist()})
    pub.flush()
    sink.wait_for(400, timeout=30)
    assert sorted(d["id"] for d in sink.docs()) == list(range(400))
    assert module.metric("edgeinfer_backpressure_waits_total") > 0
    assert module.metric("edgeinfer_queue_capacity") == 2


def test_a_slow_model_never_starves_the_connection(
    collector: Callable[..., Collector],
    publisher: Callable[..., Publisher],
    broker: LocalBroker,
    modules: list[ModuleProcess],
    tmp_path: Path,
    recordings: Recordings,
) -> None:
    """The model runs on the serving thread, between network events. With ~0.3 s a reading
    and 30 readings queued, one batch of all would keep the network silent ~9 s: past the
    broker's 1.5 x keepalive (7.5 s), and the module would be dropped."""
    model = tmp_path / "busy.onnx"
    model.write_bytes(busy_model())
    # Its admission runs it many times (self-test p95, a batch of two): 11.8 s alone, twice
    # that with the suite's workers on two cores, all of it before the module is ready.
    module = start(
        modules, broker, tmp_path, model=model, ready_s=90.0, EDGEINFER_BROKER_KEEPALIVE_S="5"
    )
    sink = collector([module.result_topic("+")])
    pub = publisher()
    for i in range(30):
        pub.send(module.topic("imu"), {"id": i, "features": recordings.windows[i].tolist()})
    sink.wait_for(30, timeout=60)
    assert sorted(d["id"] for d in sink.docs()) == list(range(30))
    assert module.metric("edgeinfer_broker_connects_total") == 1
    assert "connection lost" not in module.log()
    pub.flush()


def test_logs_are_one_json_object_per_line(
    broker: LocalBroker, modules: list[ModuleProcess], tmp_path: Path
) -> None:
    module = start(modules, broker, tmp_path)
    module.stop()
    lines = [line for line in module.log().splitlines() if line.strip()]
    docs = [orjson.loads(line) for line in lines]
    assert {"ts", "level", "logger", "msg"} <= set(docs[0])
    messages = [d["msg"] for d in docs]
    assert any(m.startswith("serving har 1.0.0 (onnx, onnxruntime ") for m in messages)
    assert any(m.startswith("connected to mqtt://127.0.0.1:") for m in messages)
    assert messages[-1] == "stopped"
    assert not [d for d in docs if d["level"] == "ERROR"]
