"""Streams end to end through a real mosquitto: per-sample replay, a recurrent model, SIGKILL."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson

from edgeinfer.tools.broker import LocalBroker
from edgeinfer.tools.recordings import Recordings
from edgeinfer.tools.simulate import device_samples, recording_index, simulate_samples
from tests.compat.fetch import model_file
from tests.streams_support import reference_windows, vad_reference, windowed_model
from tests.support import ONNX_MODEL, ROOT, Collector, ModuleProcess, Publisher

STREAM_MODEL = ROOT / "models" / "har" / "stream" / "model.onnx"


def _by_window(sink: Collector) -> dict[tuple[str, int], dict[str, object]]:
    return {(d["topic"], d["window"]["first_id"]): d for d in sink.docs("/inference/")}


def _wait_windows(sink: Collector, count: int, timeout: float) -> dict[tuple[str, int], dict]:
    deadline = time.monotonic() + timeout
    while len(found := _by_window(sink)) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def test_per_sample_replay_across_100_topics_equals_an_offline_windowed_reference(
    collector: Callable[..., Collector], broker: LocalBroker, tmp_path: Path
) -> None:
    model = windowed_model(tmp_path, {"size": 100, "hop": 50})
    module = ModuleProcess(broker.url, model, tmp_path).start()
    sink = collector([module.result_topic("+/imu"), module.errors_topic])
    topic = f"{module.prefix}/sensors/{{device}}/imu"
    sent = simulate_samples(broker.url, rate=0, count=200, topic=topic, devices=100)
    assert sent == 100 * 200
    found = _wait_windows(sink, 100 * 3, timeout=60)
    assert len(found) == 300, f"{len(found)} of 300 windows answered"
    for d in range(100):
        samples = device_samples(d, 100, 200)
        name = module.topic(f"sim{d + 1}/imu")
        for first, last, want in reference_windows(ONNX_MODEL, samples, 100, 50):
            doc = found[(name, first)]
            assert doc["window"]["last_id"] == last and doc["window"]["samples"] == 100
            np.testing.assert_allclose(doc["outputs"]["probabilities"][0], want, rtol=1e-5)
    assert sink.docs("/errors") == []
    assert module.wait_metric("edgeinfer_windows_total", 300) == 300


def test_a_recurrent_model_batched_answers_each_stream_as_if_alone(
    collector: Callable[..., Collector],
    publisher: Callable[..., Publisher],
    broker: LocalBroker,
    tmp_path: Path,
) -> None:
    """silero-vad (the published package's model): its state per stream, stacked in batches."""
    source = model_file("silero-vad", "silero_vad/data/silero_vad.onnx")
    window = {"size": 576, "hop": 512, "fixed": {"sr": 16000}}
    model = windowed_model(tmp_path, window, {"map": {"state": "stateN"}}, source=source)
    module = ModuleProcess(broker.url, model, tmp_path).start()
    sink = collector([module.result_topic("+"), module.errors_topic])
    rng = np.random.default_rng(7)
    length = 576 + 512 * 9
    audio = {
        f"mic{k}": (
            0.4 * np.sin(np.arange(length) / (3 + k)) * (np.arange(length) > 1500 * k)
            + 0.02 * rng.standard_normal(length)
        ).astype(np.float32)
        for k in range(8)
    }
    pub = publisher()
    for start in range(0, length, 256):  # microphone nodes: chunks of 256 samples
        for name, samples in audio.items():
            chunk = samples[start : start + 256]
            pub.send(module.topic(name), {"features": chunk.tolist(), "id": start})
    pub.flush()
    found = _wait_windows(sink, 8 * 10, timeout=60)
    assert len(found) == 80, f"{len(found)} of 80 windows answered"
    for name, samples in audio.items():
        want = vad_reference(source, samples, 576, 512)
        got = [found[(module.topic(name), first)] for first in range(0, 512 * 10, 512)]
        assert [list(d["outputs"]) for d in got] == [["output"]] * 10  # no state in results
        np.testing.assert_allclose([d["outputs"]["output"][0][0] for d in got], want, atol=1e-6)
    runs = module.metric("edgeinfer_batch_size_count")
    assert runs < 80, f"{runs} runs for 80 windows: the streams were never batched"
    pub.flush()


def test_a_module_killed_mid_stream_loses_no_window_once_restarted(
    collector: Callable[..., Collector], broker: LocalBroker, tmp_path: Path
) -> None:
    model = windowed_model(tmp_path, {"size": 100, "hop": 50})
    module = ModuleProcess(broker.url, model, tmp_path).start()
    sink = collector([module.result_topic("+/imu"), module.errors_topic])
    topic = f"{module.prefix}/sensors/{{device}}/imu"
    sender = threading.Thread(
        target=simulate_samples,
        kwargs={"url": broker.url, "rate": 100, "count": 300, "topic": topic, "devices": 20},
    )
    sender.start()
    deadline = time.monotonic() + 20
    while len(_by_window(sink)) < 20 and time.monotonic() < deadline:
        time.sleep(0.02)
    module.signal(signal.SIGKILL)  # samples wait in every stream's window buffer
    module.wait()
    before = len(_by_window(sink))
    time.sleep(0.5)  # samples keep arriving while it is down
    module.start()
    sender.join(60)
    found = _wait_windows(sink, 20 * 5, timeout=60)
    assert before < 100, "the kill came after the last window: nothing was tested"
    assert len(found) == 100, f"{len(found)} of 100 windows answered"
    for d in range(20):
        samples = device_samples(d, 20, 300)
        for first, _, want in reference_windows(ONNX_MODEL, samples, 100, 50):
            doc = found[(module.topic(f"sim{d + 1}/imu"), first)]
            np.testing.assert_allclose(doc["outputs"]["probabilities"][0], want, rtol=1e-5)
    assert sink.docs("/errors") == []
    assert "restored" in module.log()


def test_a_window_that_does_not_fit_the_model_stops_the_module_with_exit_2(
    broker: LocalBroker, tmp_path: Path
) -> None:
    model = windowed_model(tmp_path, {"size": 64, "hop": 32})
    module = ModuleProcess(broker.url, model, tmp_path).start(wait=False)
    assert module.wait(30) == 2
    assert "window.size = 64: input 'window' takes 100 samples a window" in module.log()
    assert "Traceback" not in module.log()


def test_results_report_the_window_and_the_reported_state_the_streams(
    collector: Callable[..., Collector],
    publisher: Callable[..., Publisher],
    broker: LocalBroker,
    tmp_path: Path,
) -> None:
    model = windowed_model(tmp_path, {"size": 100, "hop": 100, "key": "device"})
    module = ModuleProcess(broker.url, model, tmp_path).start()
    sink = collector([module.result_topic("+"), f"edgeinfer/{module.module_id}/#"])
    samples = device_samples(0, 1, 100)
    pub = publisher()
    for i, row in enumerate(samples):
        pub.send(
            module.topic("gw"), {"device": "imu-7", "id": i, "ts": i / 10, "features": row.tolist()}
        )
    pub.send(module.topic("gw"), {"id": "no-key", "features": samples[0].tolist()})
    pub.flush()
    (doc,) = _wait_windows(sink, 1, timeout=20).values()
    assert doc["window"] == {
        "key": "imu-7",
        "first_id": 0,
        "last_id": 99,
        "first_ts": 0.0,
        "last_ts": 9.9,
        "samples": 100,
    }
    deadline = time.monotonic() + 10
    while not sink.docs("/errors") and time.monotonic() < deadline:
        time.sleep(0.02)
    (error,) = sink.docs("/errors")
    assert error["error"] == "bad_payload" and error["id"] == "no-key"
    reported = orjson.loads([p for t, p in sink.messages if t.endswith("/reported")][-1])
    assert reported["model"]["streams"]["window"]["key"] == "device"
    pub.flush()


def test_simulate_per_sample_feeds_the_streaming_sample_model(
    collector: Callable[..., Collector], broker: LocalBroker, tmp_path: Path, recordings: Recordings
) -> None:
    """As a user runs it: the sample model's streaming variant and the per-sample simulator."""
    module = ModuleProcess(broker.url, STREAM_MODEL, tmp_path).start()
    sink = collector([module.result_topic("+/imu")])
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgeinfer",
            "simulate",
            "--broker",
            broker.url,
            "--per-sample",
            "--rate",
            "0",
            "--count",
            "100",
            "--devices",
            "3",
            "--topic",
            f"{module.prefix}/sensors/{{device}}/imu",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"sent 300 samples to {broker.url}"
    found = _wait_windows(sink, 3, timeout=20)
    for d in range(3):
        doc = found[(module.topic(f"sim{d + 1}/imu"), 0)]
        truth = recordings.labels[recording_index(d, len(recordings.labels))]
        assert doc["label"] == recordings.label_names[truth]
        assert doc["window"]["samples"] == 100
