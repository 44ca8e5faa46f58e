"""``edgeinfer demo``: broker, module, simulator and live results in one command.

The sample model's streaming variant (``models/har/stream``) declares a window
in its manifest, so the simulated sensors publish one 6-axis sample per message
and every result answers a window of 100 samples (a new one every 50). A model
without a window is fed whole recordings instead.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import paho.mqtt.client as paho

from edgeinfer.manifest.document import load_manifest
from edgeinfer.manifest.streams import WindowSpec
from edgeinfer.tools.broker import LocalBroker, port_open
from edgeinfer.tools.deploy import build_desired, publish_desired
from edgeinfer.tools.launch import ModuleLauncher
from edgeinfer.tools.recordings import load_recordings
from edgeinfer.tools.simulate import connect_client, recording_index, simulate, simulate_samples

REPO_MODELS = Path(__file__).resolve().parents[3] / "models"
DEFAULT_MODEL = REPO_MODELS / "har" / "stream" / "model.onnx"
# What the demo pushes over the air: the sample model quantized to INT8 (static,
# calibrated on the training recordings) by `edgeinfer quantize`.
UPDATE_MODEL = REPO_MODELS / "har" / "int8-static" / "model.onnx"
UPDATE_VERSION = "1.1.0"


class ResultWatcher:
    """Collects results and prints each one as it arrives."""

    def __init__(self, truth: Callable[[dict[str, Any]], str | None], quiet_after: int) -> None:
        self.truth = truth  # the true activity of a result, None when it spans two
        self.latencies_ms: list[float] = []
        self.correct = 0
        self.scored = 0
        self.ids: set[object] = set()  # reading ids, or (topic, first sample) of windows
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
        window = doc.get("window")
        key = (doc["topic"], window["first_id"]) if window else int(doc["id"])
        truth = self.truth(doc)
        with self.lock:
            self.ids.add(key)
            e2e = (now - float(doc["ts"])) * 1000
            self.latencies_ms.append(e2e)
            if truth is not None:
                self.scored += 1
                self.correct += doc["label"] == truth
            count = len(self.ids)
        if count <= self.quiet_after:
            mark = "    " if truth is None else "ok  " if doc["label"] == truth else "MISS"
            what = (
                f"samples {window['first_id']}-{window['last_id']}" if window else f"id={doc['id']}"
            )
            print(
                f"  {doc['topic']:<18} {what:<15} {mark} label={doc['label']:<9} "
                f"score={doc['score']:.3f} (truth {truth or 'two recordings':<9}) "
                f"model={doc['model']} {doc['version']}  inference+queue "
                f"{doc['latency_ms']:.2f} ms  end-to-end {e2e:.2f} ms",
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
    """The broker the demo talks to: the one named, one already listening on :1883, or one
    it started."""

    url: str
    protocol: str
    started: LocalBroker | None = None

    @classmethod
    def find_or_start(cls, url: str | None = None) -> DemoBroker:
        if url is not None:
            print(f"[demo] using the broker at {url}")
            return cls(url, "5")
        if port_open("127.0.0.1", 1883):
            url = "mqtt://127.0.0.1:1883"
            print(f"[demo] using the broker already listening on {url}")
            return cls(url, "5")
        broker = LocalBroker(port=1883, persistence=False).start()
        # amqtt, the pure-Python fallback, speaks MQTT 3.1.1 only.
        protocol = "5" if broker.kind == "mosquitto" else "3.1.1"
        print(f"[demo] started {broker.kind} on {broker.url} (MQTT {protocol})")
        return cls(broker.url, protocol, broker)


def run_demo(duration: float, model: Path | None = None, broker_url: str | None = None) -> int:
    """Broker, module, live replay, an over-the-air update and a burst; 0 when all went well.

    ``broker_url``: the broker to use (None: the one on :1883, else one started here)."""
    model = model or DEFAULT_MODEL
    if not model.is_file():
        print(f"demo: no sample model at {model}; give --model", file=sys.stderr)
        return 2
    broker = DemoBroker.find_or_start(broker_url)
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
        replay = Replay(broker, load_manifest(model).window)
        watcher = ResultWatcher(replay.truth(), quiet_after=replay.quiet_after(duration))
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
        _live_replay_with_update(replay, module.module_id, watcher, duration)
        took = _burst(replay, watcher)
        return _summary(replay, watcher, took)
    finally:
        if watcher_client is not None:
            watcher_client.disconnect()
            watcher_client.loop_stop()
        module.stop()
        if broker.started is not None:
            broker.started.cleanup()


@dataclass
class Replay:
    """How the demo feeds the module: one sample a message when the model declares a window
    (devices interleaved, 10x the recordings' real rate), else whole recordings."""

    broker: DemoBroker
    window: WindowSpec | None
    devices: int = 4
    sent: int = 0  # samples per device (windowed), or readings

    def quiet_after(self, duration: float) -> int:
        return self.live_count(duration) if self.window is None else 4 * self.devices

    def live_count(self, duration: float) -> int:
        return max(1, int(duration * 5)) if self.window is None else max(200, int(duration * 100))

    def send(self, count: int, rate: float) -> None:
        url, protocol = self.broker.url, self.broker.protocol
        if self.window is None:
            simulate(url, rate, count, devices=self.devices, first_id=self.sent, protocol=protocol)
        else:
            simulate_samples(
                url, rate, count, devices=self.devices, protocol=protocol, first=self.sent
            )
        self.sent += count

    @property
    def expected(self) -> int:
        """Results the module owes for what was sent."""
        w = self.window
        if w is None:
            return self.sent
        return self.devices * (0 if self.sent < w.size else (self.sent - w.size) // w.hop + 1)

    @property
    def unit(self) -> str:
        return "readings" if self.window is None else "samples"

    def truth(self) -> Callable[[dict[str, Any]], str | None]:
        rec = load_recordings()
        names: list[str] = [rec.label_names[i] for i in rec.labels]
        per = rec.windows.shape[1]

        def of(doc: dict[str, Any]) -> str | None:
            window = doc.get("window")
            if window is None:
                return names[recording_index(int(doc["id"]), len(names))]
            device = int(doc["topic"].split("/")[1].removeprefix("sim")) - 1
            found = {
                names[recording_index(device + k * self.devices, len(names))]
                for k in (window["first_id"] // per, window["last_id"] // per)
            }
            return found.pop() if len(found) == 1 else None  # two activities in one window

        return of


def _live_replay_with_update(
    replay: Replay, module_id: str, watcher: ResultWatcher, duration: float
) -> None:
    count = replay.live_count(duration)
    if replay.window is None:
        print(
            f"[demo] replaying {count} real BasicMotions recordings at 5/s (sensors/sim1..4/imu):"
        )
        rate = 5.0
    else:
        w = replay.window
        print(
            f"[demo] streaming real BasicMotions recordings one 6-axis sample per message, "
            f"{replay.devices} devices (sensors/sim1..4/imu) at 10x their real 10 Hz; the model "
            f"answers every {w.hop} samples with a window of {w.size}:"
        )
        rate = 100.0
    half = count // 2
    replay.send(half, rate)
    _wait_for(lambda: len(watcher.ids) >= replay.expected, 5)
    print(
        f"[demo] pushing an over-the-air update: edgeinfer deploy --module-id {module_id} "
        f"--model {UPDATE_MODEL.relative_to(REPO_MODELS.parent)} --version {UPDATE_VERSION}"
    )
    watcher.update_started = time.monotonic()
    desired = build_desired(UPDATE_MODEL, UPDATE_VERSION)
    if replay.window is not None:
        desired["window"] = replay.window.to_doc()  # the update serves the same streams
    publish_desired(replay.broker.url, module_id, desired, replay.broker.protocol)
    replay.send(count - half, rate)
    _wait_for(lambda: len(watcher.ids) >= replay.expected, 5)
    _wait_for(lambda: watcher.update_state in ("active", "failed", "rolled_back"), 10)


def _burst(replay: Replay, watcher: ResultWatcher) -> float:
    count = 2000 if replay.window is None else 1000
    total = count * (1 if replay.window is None else replay.devices)
    rate = "1000 readings/s" if replay.window is None else f"{500 * replay.devices} samples/s"
    print(f"[demo] now a burst: {total} {replay.unit} at {rate} ...", flush=True)
    started = time.monotonic()
    # Paced: a broker with mosquitto's default queue (1,000 messages a client) drops what a
    # client has not taken yet, and an unpaced burst from a fast publisher outruns the module.
    replay.send(count, 1000 if replay.window is None else 500)
    _wait_for(lambda: len(watcher.ids) >= replay.expected, 15)
    return time.monotonic() - started


def _summary(replay: Replay, watcher: ResultWatcher, took: float) -> int:
    expected = replay.expected
    burst = 2000 if replay.window is None else 1000 * replay.devices
    sent = replay.sent * (1 if replay.window is None else replay.devices)
    lat = np.asarray(watcher.latencies_ms[-200:] or [float("nan")])
    print("\n[demo] summary")
    print(f"  {replay.unit + ' sent':<18} {sent}")
    print(
        f"  results received   {len(watcher.ids)} of {expected}  (lost "
        f"{expected - len(watcher.ids)}, errors {watcher.errors})"
    )
    print(f"  accuracy vs truth  {watcher.correct / max(1, watcher.scored):.1%}")
    print(
        f"  update             har {UPDATE_VERSION} {watcher.update_state or 'no report'} "
        f"{watcher.update_took:.1f} s after the desired state (probation included)"
    )
    print(f"  burst throughput   {burst / took:.0f} {replay.unit}/s")
    print(
        f"  burst end-to-end   p50 {np.percentile(lat, 50):.2f} ms  "
        f"p95 {np.percentile(lat, 95):.2f} ms  p99 {np.percentile(lat, 99):.2f} ms"
    )
    return 0 if len(watcher.ids) == expected and watcher.update_state == "active" else 1


def _wait_for(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)
