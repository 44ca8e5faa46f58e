"""Update benchmark: how fast and how cleanly a model is swapped in.

* time from publishing a desired state to the first result from the new
  version (the small sample TFLite model, from a local HTTP server), under a
  steady 200 readings/s so there is a reading to answer, median of N updates;
* a swap under 1,000 readings/s: readings lost, error reports, and the largest
  gap between consecutive results at the receiver;
* resident memory after 50 swaps back and forth between the ONNX and TFLite
  versions, against after the first swap (ONNX Runtime users report growth
  across reloads).

    python benchmarks/bench_update.py [--updates 5] [--swaps 50]
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import itertools
import statistics
import sys
import tempfile
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as paho

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "module"))

from edgeinfer.tools.broker import LocalBroker  # noqa: E402
from edgeinfer.tools.launch import ModuleLauncher  # noqa: E402
from edgeinfer.tools.recordings import load_recordings  # noqa: E402
from edgeinfer.tools.simulate import connect_client  # noqa: E402

ONNX = ROOT / "models" / "har" / "onnx" / "model.onnx"
TFLITE = ROOT / "models" / "har" / "tflite" / "model.tflite"
MID = "benchupd"


class Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        return


class Rig:
    def __init__(self, broker: LocalBroker, state: Path) -> None:
        self.module = ModuleLauncher(
            broker.url,
            ONNX,
            state,
            MID,
            env={
                "EDGEINFER_LOG_LEVEL": "WARNING",
                "EDGEINFER_UPDATES_ALLOW_HTTP": "true",
                "EDGEINFER_UPDATES_PROBATION_S": "0.2",
                "EDGEINFER_UPDATES_SELF_TEST_RUNS": "5",
                "EDGEINFER_UPDATES_KEEP_VERSIONS": "10",
            },
        ).start()
        self.lock = threading.Lock()
        self.results: list[tuple[float, dict[str, Any]]] = []
        self.errors = 0
        self.reported: list[dict[str, Any]] = []
        self.sub = connect_client(
            broker.url,
            on_message=self._on_message,
            subscribe=["inference/#", f"edgeinfer/{MID}/errors", f"edgeinfer/{MID}/reported"],
        )
        self.pub = connect_client(broker.url)
        self.windows = [w.tolist() for w in load_recordings().windows]

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        now = time.perf_counter()
        doc = orjson.loads(msg.payload)
        with self.lock:
            if msg.topic.endswith("/reported"):
                self.reported.append(doc)
            elif msg.topic.endswith("/errors"):
                self.errors += 1
            else:
                self.results.append((now, doc))

    def desire(self, doc: dict[str, Any]) -> float:
        sent = time.perf_counter()
        self.pub.publish(f"edgeinfer/{MID}/desired", orjson.dumps(doc), qos=1, retain=True)
        return sent

    def wait_active(self, version: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                last = self.reported[-1] if self.reported else None
            if last and last["update"]["state"] == "active" and last["model"]["version"] == version:
                return
            if last and last["update"]["state"] in ("failed", "rolled_back"):
                raise RuntimeError(f"update failed: {last['update']['error']}")
            time.sleep(0.01)
        raise TimeoutError(f"{version} not active within {timeout} s")

    def stream(self, rate: float, seconds: float, first: int, during: Any = None) -> range:
        ids = range(first, first + int(rate * seconds))
        start = time.perf_counter()
        for n, i in enumerate(ids):
            delay = start + n / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            body = orjson.dumps({"id": i, "features": self.windows[i % len(self.windows)]})
            self.pub.publish("sensors/bench/imu", body, qos=1)
            if during is not None and n == len(ids) // 3:
                during()
        return ids

    def rss_mb(self) -> float:
        return self.module.memory_mb()[0]

    def stop(self) -> None:
        self.module.stop(15)
        self.sub.disconnect()
        self.pub.disconnect()


def desired(url: str, body: bytes, version: str) -> dict[str, Any]:
    manifest = orjson.loads((TFLITE.parent / "manifest.json").read_bytes())
    return {
        "model": {
            "name": "har",
            "version": version,
            "url": url,
            "sha256": hashlib.sha256(body).hexdigest(),
            "size": len(body),
            "format": "tflite",
        },
        "labels": manifest["labels"],
        "self_test": manifest["self_test"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, default=5)
    parser.add_argument("--swaps", type=int, default=50)
    args = parser.parse_args()
    body = TFLITE.read_bytes()
    handler = functools.partial(Quiet, directory=str(TFLITE.parent))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/model.tflite"
    with (
        LocalBroker(kind="mosquitto", persistence=False) as broker,
        tempfile.TemporaryDirectory() as state,
    ):
        rig = Rig(broker, Path(state))
        try:
            # 1. desired state -> first result from the new version
            delays = []
            next_id = 0
            for n in range(args.updates):
                version = f"1.{n + 1}.0"
                sent_at: list[float] = []
                doc = desired(url, body, version)

                def push(doc: dict[str, Any] = doc, out: list[float] = sent_at) -> None:
                    out.append(rig.desire(doc))

                ids = rig.stream(200, 2.5, next_id, during=push)
                next_id = ids.stop
                rig.wait_active(version)
                with rig.lock:
                    first = min(t for t, d in rig.results if d["version"] == version)
                delays.append((first - sent_at[0]) * 1000)
            # 2. a swap under 1,000 readings/s
            time.sleep(0.5)
            with rig.lock:
                rig.results.clear()
                errors_before = rig.errors
            ids = rig.stream(
                1000,
                6,
                next_id,
                during=lambda: rig.desire({"model": {"name": "har", "version": "1.0.0"}}),
            )
            next_id = ids.stop
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                with rig.lock:
                    got = {d["id"] for _, d in rig.results}
                if set(ids) <= got:
                    break
                time.sleep(0.05)
            with rig.lock:
                arrivals = sorted(t for t, _ in rig.results)
                versions = {d["version"] for _, d in rig.results}
                lost = len(set(ids) - {d["id"] for _, d in rig.results})
                errors = rig.errors - errors_before
            gap_ms = max(b - a for a, b in itertools.pairwise(arrivals)) * 1000
            rig.wait_active("1.0.0")
            # 3. memory across swaps back and forth
            rig.desire({"model": {"name": "har", "version": "1.1.0"}})
            rig.wait_active("1.1.0")
            time.sleep(0.5)
            rss_first = rig.rss_mb()
            for n in range(args.swaps):
                version = "1.0.0" if n % 2 == 0 else "1.1.0"
                rig.desire({"model": {"name": "har", "version": version}})
                rig.wait_active(version)
            time.sleep(0.5)
            rss_last = rig.rss_mb()
        finally:
            rig.stop()
            httpd.shutdown()
    median = statistics.median(delays)
    growth = rss_last / rss_first - 1
    print(
        f"desired state -> first result from the new version: median {median:.0f} ms "
        f"(each: {', '.join(f'{d:.0f}' for d in delays)} ms)"
    )
    print(
        f"swap under 1,000 readings/s: {len(ids)} readings, lost {lost}, errors {errors}, "
        f"largest gap between results {gap_ms:.1f} ms, versions seen {sorted(versions)}"
    )
    print(
        f"resident memory: {rss_first:.1f} MB after the first swap, {rss_last:.1f} MB after "
        f"{args.swaps} more ({growth:+.1%})"
    )
    checks = [
        ("desired -> first new result <= 1 s", median <= 1000),
        ("lost == 0 and errors == 0 during the swap", lost == 0 and errors == 0),
        ("largest gap <= 50 ms", gap_ms <= 50),
        (f"memory after {args.swaps} swaps <= +10%", growth <= 0.10),
    ]
    for label, ok in checks:
        print(f"  [{'met   ' if ok else 'MISSED'}] {label}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
