"""``edgeinfer demo``: broker, module, simulator and live results in one command."""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import paho.mqtt.client as paho

from edgeinfer.tools.broker import LocalBroker, port_open
from edgeinfer.tools.deploy import build_desired, publish_desired
from edgeinfer.tools.launch import ModuleLauncher
from edgeinfer.tools.recordings import load_recordings
from edgeinfer.tools.simulate import connect_client, recording_index, simulate

REPO_MODELS = Path(__file__).resolve().parents[3] / "models"
DEFAULT_MODEL = REPO_MODELS / "har" / "onnx" / "model.onnx"
# What the demo pushes over the air: the sample model quantized to INT8 (static,
# calibrated on the training recordings) by `edgeinfer quantize`.
UPDATE_MODEL = REPO_MODELS / "har" / "int8-static" / "model.onnx"
UPDATE_VERSION = "1.1.0"


class ResultWatcher:
    """Collects results and prints each one as it arrives."""

    def __init__(self, truth: list[str], quiet_after: int) -> None:
        self.truth = truth
        self.latencies_ms: list[float] = []
        self.correct = 0
        self.ids: set[int] = set()
        self.errors = 0
        self.quiet_after = quiet_after
        self.lock = threading.Lock()
        self.update_state = ""
        self.update_started = 0.0
        self.update_took = 0.0

    def on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        now = time.time()
        doc = orjson.loads(msg.payload)
        if msg.topic.endswith("/reported"):
            self._on_reported(doc)
            return
        if msg.topic.endswith("/errors"):
            self.errors += 1
            print(f"  error on {doc['topic']}: {doc['error']}: {doc['reason']}", flush=True)
            return
        rid = int(doc["id"])
        truth = self.truth[recording_index(rid, len(self.truth))]
        with self.lock:
            self.ids.add(rid)
            e2e = (now - float(doc["ts"])) * 1000
            self.latencies_ms.append(e2e)
            self.correct += doc["label"] == truth
            count = len(self.ids)
        if count <= self.quiet_after and rid < self.quiet_after:
            mark = "ok " if doc["label"] == truth else "MISS"
            print(
                f"  {doc['topic']:<18} id={rid:<5} {mark} label={doc['label']:<9} "
                f"score={doc['score']:.3f} (truth {truth:<9}) model={doc['model']} "
                f"{doc['version']}  inference+queue {doc['latency_ms']:.2f} ms  "
                f"end-to-end {e2e:.2f} ms",
                flush=True,
            )

    def _on_reported(self, doc: dict[str, Any]) -> None:
        update = doc["update"]
        if update["state"] == self.update_state or not self.update_started:
            return
        self.update_state = update["state"]
        if self.update_state in ("active", "failed", "rolled_back"):
            self.update_took = time.monotonic() - self.update_started
        extra = f" progress {update['progress']:.0%}" if update["progress"] is not None else ""
        error = f": {update['error']}" if update["error"] else ""
        print(
            f"  [update] {self.update_state:<11} serving {doc['model']['name']} "
            f"{doc['model']['version']} ({doc['model']['runtime']}){extra}{error}",
            flush=True,
        )


@dataclass
class DemoBroker:
    """The broker the demo talks to: one already listening on :1883, or one it started."""

    url: str
    protocol: str
    started: LocalBroker | None = None

    @classmethod
    def find_or_start(cls) -> DemoBroker:
        if port_open("127.0.0.1", 1883):
            url = "mqtt://127.0.0.1:1883"
            print(f"[demo] using the broker already listening on {url}")
            return cls(url, "5")
        broker = LocalBroker(port=1883, persistence=False).start()
        # amqtt, the pure-Python fallback, speaks MQTT 3.1.1 only.
        protocol = "5" if broker.kind == "mosquitto" else "3.1.1"
        print(f"[demo] started {broker.kind} on {broker.url} (MQTT {protocol})")
        return cls(broker.url, protocol, broker)


def run_demo(duration: float, model: Path | None = None) -> int:
    """Broker, module, live replay, an over-the-air update and a burst; 0 when all went well."""
    model = model or DEFAULT_MODEL
    if not model.is_file():
        print(f"demo: no sample model at {model}; give --model", file=sys.stderr)
        return 2
    broker = DemoBroker.find_or_start()
    module = ModuleLauncher(
        broker.url,
        model,
        Path(tempfile.mkdtemp(prefix="edgeinfer-demo-")),
        f"demo-{os.getpid()}",
        env={
            "EDGEINFER_LOG_FORMAT": "text",
            "EDGEINFER_LOG_LEVEL": "WARNING",
            "EDGEINFER_BROKER_PROTOCOL": broker.protocol,
            "EDGEINFER_UPDATES_PROBATION_S": "3",
            # The update is pushed as a file:// URL into the sample models.
            "EDGEINFER_UPDATES_FILE_ROOTS": str(REPO_MODELS),
        },
    )
    print(f"[demo] starting the module: edgeinfer run --model {model} --broker {broker.url}")
    watcher_client: paho.Client | None = None
    try:
        module.start(timeout=30)
        print(
            f"[demo] module ready in {module.ready_s:.2f} s; metrics on "
            f"http://127.0.0.1:{module.http_port}/metrics"
        )
        rec = load_recordings()
        live_count = max(1, int(duration * 5))
        watcher = ResultWatcher([rec.label_names[i] for i in rec.labels], quiet_after=live_count)
        watcher_client = connect_client(
            broker.url,
            on_message=watcher.on_message,
            subscribe=[
                "inference/sensors/+/imu",
                f"edgeinfer/{module.module_id}/errors",
                f"edgeinfer/{module.module_id}/reported",
            ],
            protocol=broker.protocol,
        )
        _live_replay_with_update(broker, module.module_id, watcher, live_count)
        burst, took = _burst(broker, watcher, live_count)
        return _summary(watcher, live_count, burst, took)
    finally:
        if watcher_client is not None:
            watcher_client.disconnect()
            watcher_client.loop_stop()
        module.stop()
        if broker.started is not None:
            broker.started.cleanup()


def _live_replay_with_update(
    broker: DemoBroker, module_id: str, watcher: ResultWatcher, live_count: int
) -> None:
    print(
        f"[demo] replaying {live_count} real BasicMotions recordings at 5/s (sensors/sim1..4/imu):"
    )
    half = live_count // 2
    simulate(broker.url, rate=5, count=half, devices=4, protocol=broker.protocol)
    _wait_for(lambda: len(watcher.ids) >= half, 5)
    print(
        f"[demo] pushing an over-the-air update: edgeinfer deploy --module-id {module_id} "
        f"--model {UPDATE_MODEL.relative_to(REPO_MODELS.parent)} --version {UPDATE_VERSION}"
    )
    watcher.update_started = time.monotonic()
    publish_desired(
        broker.url, module_id, build_desired(UPDATE_MODEL, UPDATE_VERSION), broker.protocol
    )
    simulate(
        broker.url, rate=5, count=live_count - half, devices=4, first_id=half,
        protocol=broker.protocol,
    )  # fmt: skip
    _wait_for(lambda: len(watcher.ids) >= live_count, 5)
    _wait_for(lambda: watcher.update_state in ("active", "failed", "rolled_back"), 10)


def _burst(broker: DemoBroker, watcher: ResultWatcher, first_id: int) -> tuple[int, float]:
    burst = 2000
    print(f"[demo] now a burst: {burst} readings at 1000/s ...", flush=True)
    started = time.monotonic()
    simulate(
        broker.url, rate=1000, count=burst, devices=4, first_id=first_id,
        protocol=broker.protocol,
    )  # fmt: skip
    _wait_for(lambda: len(watcher.ids) >= first_id + burst, 15)
    return burst, time.monotonic() - started


def _summary(watcher: ResultWatcher, live_count: int, burst: int, took: float) -> int:
    total = live_count + burst
    lat = np.asarray(watcher.latencies_ms[live_count:] or [float("nan")])
    print("\n[demo] summary")
    print(f"  readings sent      {total}")
    print(
        f"  results received   {len(watcher.ids)}  (lost {total - len(watcher.ids)}, "
        f"errors {watcher.errors})"
    )
    print(f"  accuracy vs truth  {watcher.correct / max(1, len(watcher.latencies_ms)):.1%}")
    print(
        f"  update             har {UPDATE_VERSION} {watcher.update_state or 'no report'} "
        f"{watcher.update_took:.1f} s after the desired state (probation included)"
    )
    print(f"  burst throughput   {burst / took:.0f} readings/s")
    print(
        f"  burst end-to-end   p50 {np.percentile(lat, 50):.2f} ms  "
        f"p95 {np.percentile(lat, 95):.2f} ms  p99 {np.percentile(lat, 99):.2f} ms"
    )
    return 0 if len(watcher.ids) == total and watcher.update_state == "active" else 1


def _wait_for(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)
