"""Pipeline benchmark: pass-through limit vs naive peer vs edgeinfer, one run, one table.

Against a mosquitto on loopback (set_tcp_nodelay true) started here. For each
contender, in interleaved rounds so a noisy machine does not favour one:

* throughput: a burst of readings sent as fast as the broker takes them; results
  per second from the first send to the last result;
* latency: readings at a fixed rate; end-to-end from publish to result
  (one clock: the load generator's), p50/p99, and readings lost.

For edgeinfer also: resident memory (VmRSS, VmHWM) and time from start to ready.

    python benchmarks/bench_pipeline.py [--burst 5000] [--rate 1000] [--seconds 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import paho.mqtt.client as paho

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "module"))

from edgeinfer.tools.broker import LocalBroker  # noqa: E402
from edgeinfer.tools.launch import ModuleLauncher  # noqa: E402
from edgeinfer.tools.recordings import load_recordings  # noqa: E402
from edgeinfer.tools.simulate import connect_client  # noqa: E402

MODEL = ROOT / "models" / "har" / "onnx" / "model.onnx"
CONTENDERS = ("passthrough", "naive", "edgeinfer")


class Contender:
    def __init__(self, name: str, broker: LocalBroker, round_no: int) -> None:
        self.name = name
        # Its own model store, not ./state in whatever directory the bench runs from.
        self.state = tempfile.TemporaryDirectory(prefix="edgeinfer-bench-")
        self.module: ModuleLauncher | None = None
        started = time.monotonic()
        if name == "edgeinfer":
            # A fresh session per round, like the peers': a persistent one would
            # queue the other contenders' readings and start the next round on a
            # backlog that is not this contender's load.
            self.module = ModuleLauncher(
                broker.url,
                MODEL,
                Path(self.state.name),
                f"bench{round_no}",
                env={"EDGEINFER_LOG_LEVEL": "WARNING", "EDGEINFER_BROKER_SESSION_EXPIRY_S": "0"},
            ).start()  # polls /readyz finely: "ready within 2 s" is a reported figure
            self.ready_s = self.module.ready_s
            self.proc = self.module.proc
            return
        cmd = [sys.executable, str(ROOT / "benchmarks" / "peers.py"), name, str(broker.port)]
        self.proc = subprocess.Popen(
            [*cmd, str(MODEL)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        assert self.proc.stdout is not None
        self.proc.stdout.readline()  # "ready"
        self.ready_s = time.monotonic() - started

    def memory_mb(self) -> tuple[float, float]:
        assert self.module is not None
        return self.module.memory_mb()

    def stop(self) -> None:
        if self.module is not None:
            self.module.stop(15)
        else:
            assert self.proc is not None
            self.proc.terminate()
            self.proc.wait(15)
        self.state.cleanup()


class LoadGenerator:
    """Publishes readings and times each result against its send time."""

    def __init__(self, url: str) -> None:
        rec = load_recordings()
        self.windows = [w.tolist() for w in rec.windows]
        self.sent_at: dict[int, float] = {}
        self.latency: dict[int, float] = {}
        self.received = 0
        self.cond = threading.Condition()
        self.pub = connect_client(url)
        self.sub = connect_client(url, on_message=self._on_result, subscribe=["inference/#"])
        self.next_id = 0

    def _on_result(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        now = time.perf_counter()
        rid = orjson.loads(msg.payload)["id"]
        with self.cond:
            if rid not in self.latency and rid in self.sent_at:
                self.latency[rid] = now - self.sent_at[rid]
            self.received += 1
            self.cond.notify_all()

    def _send(self, rid: int) -> None:
        body = orjson.dumps({"id": rid, "features": self.windows[rid % len(self.windows)]})
        self.sent_at[rid] = time.perf_counter()
        self.pub.publish(f"sensors/bench{rid % 4}/imu", body, qos=1)

    def _await(self, ids: range, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not all(i in self.latency for i in (ids[-1], ids[0])) or sum(
                1 for i in ids if i in self.latency
            ) < len(ids):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self.cond.wait(min(remaining, 0.2))

    def burst(self, count: int) -> float:
        ids = range(self.next_id, self.next_id + count)
        self.next_id += count
        start = time.perf_counter()
        for rid in ids:
            self._send(rid)
        self._await(ids, 60)
        with self.cond:
            last = max(self.sent_at[i] + self.latency[i] for i in ids if i in self.latency)
        return count / (last - start)

    def paced(self, rate: float, seconds: float) -> tuple[float, float, int]:
        count = int(rate * seconds)
        ids = range(self.next_id, self.next_id + count)
        self.next_id += count
        start = time.perf_counter()
        for n, rid in enumerate(ids):
            delay = start + n / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            self._send(rid)
        self._await(ids, 30)
        with self.cond:
            lat = np.array([self.latency[i] for i in ids if i in self.latency]) * 1000
            lost = count - len(lat)
        return float(np.percentile(lat, 50)), float(np.percentile(lat, 99)), lost


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--burst", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, dict[str, list[float]]] = {c: {} for c in CONTENDERS}
    with LocalBroker(kind="mosquitto", persistence=False) as broker:
        gen = LoadGenerator(broker.url)
        for rnd in range(args.rounds):
            for name in CONTENDERS:
                contender = Contender(name, broker, rnd)
                try:
                    gen.burst(200)  # warm-up
                    tput = gen.burst(args.burst)
                    p50, p99, lost = gen.paced(args.rate, args.seconds)
                    row = results[name]
                    for key, value in (
                        ("throughput", tput),
                        ("p50", p50),
                        ("p99", p99),
                        ("lost", lost),
                        ("ready_s", contender.ready_s),
                    ):
                        row.setdefault(key, []).append(value)
                    if name == "edgeinfer":
                        rss, hwm = contender.memory_mb()
                        row.setdefault("rss_mb", []).append(rss)
                        row.setdefault("hwm_mb", []).append(hwm)
                    print(
                        f"round {rnd + 1} {name:<12} {tput:7.0f}/s  p50 {p50:6.2f} ms  "
                        f"p99 {p99:6.2f} ms  lost {lost}",
                        flush=True,
                    )
                finally:
                    contender.stop()
    med = {c: {k: statistics.median(v) for k, v in results[c].items()} for c in CONTENDERS}
    e, p, n = med["edgeinfer"], med["passthrough"], med["naive"]
    lost_total = sum(sum(results[c]["lost"]) for c in CONTENDERS)
    print(
        f"\nmedians of {args.rounds} rounds; burst {args.burst}, paced {args.rate:.0f}/s "
        f"for {args.seconds:.0f} s; model {MODEL.relative_to(ROOT)}"
    )
    print(f"{'contender':<12} {'throughput/s':>12} {'p50 ms':>8} {'p99 ms':>8} {'lost':>5}")
    for c in CONTENDERS:
        m = med[c]
        print(
            f"{c:<12} {m['throughput']:>12.0f} {m['p50']:>8.2f} {m['p99']:>8.2f} "
            f"{int(sum(results[c]['lost'])):>5}"
        )
    targets = [
        ("throughput vs pass-through >= 0.85", e["throughput"] / p["throughput"], 0.85),
        ("throughput vs naive peer >= 1.5", e["throughput"] / n["throughput"], 1.5),
        (f"p50 at {args.rate:.0f}/s <= 2 ms", 2.0 / e["p50"], 1.0),
        (f"p99 at {args.rate:.0f}/s <= 10 ms", 10.0 / e["p99"], 1.0),
        ("readings lost == 0 (edgeinfer)", 1.0 if sum(results["edgeinfer"]["lost"]) == 0 else 0, 1),
        ("resident memory <= 150 MB", 150 / e["hwm_mb"], 1.0),
        ("ready within 2 s", 2.0 / e["ready_s"], 1.0),
    ]
    print(
        f"\nedgeinfer: RSS {e['rss_mb']:.0f} MB (peak {e['hwm_mb']:.0f} MB), ready in "
        f"{e['ready_s']:.2f} s, throughput {e['throughput'] / p['throughput']:.2f}x pass-through, "
        f"{e['throughput'] / n['throughput']:.2f}x naive; readings lost, all contenders: "
        f"{int(lost_total)}"
    )
    missed = 0
    for label, ratio, need in targets:
        ok = ratio >= need
        missed += not ok
        print(f"  [{'met   ' if ok else 'MISSED'}] {label}")
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_bytes(
        orjson.dumps({"medians": med, "raw": results}, option=orjson.OPT_INDENT_2)
    )
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
