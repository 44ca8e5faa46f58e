"""The demo, the simulator and the embedded fallback broker, run as a user runs them."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import orjson

from edgeinfer.tools.broker import LocalBroker, port_open
from edgeinfer.tools.recordings import Recordings
from edgeinfer.tools.simulate import recording_index
from tests.support import ONNX_MODEL, Collector, ModuleProcess


def test_the_module_serves_through_the_embedded_pure_python_broker(
    modules: list[ModuleProcess], tmp_path: Path, recordings: Recordings
) -> None:
    with LocalBroker(kind="amqtt") as broker:
        module = ModuleProcess(
            broker.url, ONNX_MODEL, tmp_path, env={"EDGEINFER_BROKER_PROTOCOL": "3.1.1"}
        ).start()
        modules.append(module)
        sink = Collector(broker.url, [module.result_topic("+/imu")], protocol="3.1.1")
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "edgeinfer",
                "simulate",
                "--broker",
                broker.url,
                "--protocol",
                "3.1.1",
                "--rate",
                "0",
                "--count",
                "40",
                "--topic",
                f"{module.prefix}/sensors/{{device}}/imu",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"sent 40 readings to {broker.url}"
        sink.wait_for(40, timeout=20)
        docs = sink.docs()
        assert sorted(d["id"] for d in docs) == list(range(40))
        for doc in docs:
            truth = recordings.labels[recording_index(doc["id"], len(recordings.labels))]
            assert doc["label"] == recordings.label_names[truth]
        sink.close()
        module.stop()


def test_the_demo_shows_live_results_and_a_summary_with_nothing_lost(
    own_broker: LocalBroker,
) -> None:
    """On a mosquitto of its own (the demo's topics are not prefixed). The machine's, on
    :1883, keeps mosquitto's default queue of 1,000 messages a client and drops the burst's
    samples past it when the suite's other workers slow the module down (a CI run lost 16
    of 92 windows so)."""
    result = subprocess.run(
        [sys.executable, "-m", "edgeinfer", "demo", "--duration", "1", "--broker", own_broker.url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert f"[demo] using the broker at {own_broker.url}" in out
    assert "[demo] module ready in" in out
    assert "streaming real BasicMotions recordings one 6-axis sample per message" in out
    assert "samples 0-99    ok   label=" in out  # results answer windows of samples
    assert "samples sent       4800" in out  # (200 live + 1000 burst) x 4 devices
    assert "results received   92 of 92  (lost 0, errors 0)" in out  # 23 windows a device
    assert "accuracy vs truth  100.0%" in out
    assert "burst end-to-end   p50" in out
    assert "[demo] pushing an over-the-air update" in out
    assert "  [update] active      serving har 1.1.0 (onnxruntime" in out
    assert "model=har 1.1.0" in out
    assert "  update             har 1.1.0 active " in out


def test_a_broker_that_never_answers_connect_is_reported_with_a_hint_and_retried(
    modules: list[ModuleProcess], tmp_path: Path
) -> None:
    with LocalBroker(kind="amqtt") as broker:  # ignores an MQTT 5 CONNECT
        module = ModuleProcess(
            broker.url, ONNX_MODEL, tmp_path, env={"EDGEINFER_BROKER_KEEPALIVE_S": "5"}
        ).start(wait=False)
        modules.append(module)
        deadline = time.monotonic() + 20
        reason = ""
        while time.monotonic() < deadline and "no CONNACK" not in reason:
            status, body = module.http_get("/readyz")
            reason = orjson.loads(body)["reason"] if status == 503 else reason
            time.sleep(0.2)
        assert reason == (
            f"not connected to the broker: no CONNACK from {broker.url} within 5 s (a broker "
            'that only speaks MQTT 3.1.1 ignores an MQTT 5 CONNECT: try broker.protocol = "3.1.1")'
        )
        assert module.proc is not None and module.proc.poll() is None, "it keeps retrying"


def test_a_broker_started_before_its_with_block_is_stopped_when_the_block_ends() -> None:
    """``with LocalBroker(...).start() as b`` started a second mosquitto on the same port,
    which failed to bind while the first, no longer referenced, outlived the suite."""
    with LocalBroker(kind="mosquitto").start() as broker:
        port = broker.port
        assert port_open("127.0.0.1", port)
    deadline = time.monotonic() + 5
    while port_open("127.0.0.1", port) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not port_open("127.0.0.1", port), f"a mosquitto still listens on {port}"
