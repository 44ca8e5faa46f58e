"""Streams benchmark: samples through windows, the journal's cost, memory at 10,000 streams.

Against a mosquitto on loopback started here, with the native load generator
(``mosquitto_pub -l``; see loadgen.py), in interleaved rounds:

* ``whole windows``: the sample model, one 100x6 recording window a reading
  (readings per second);
* ``samples, journal on`` / ``samples, journal off``: the streaming sample
  model (``models/har/stream``: window 100, hop 50), one 6-value sample a
  message on 8 interleaved streams (samples per second, first send to the last
  window's result); the journal's cost is the ratio of the two.

Then memory: one module keyed by a payload field (``device``) takes 10 samples
from each of 10,000 devices; its resident memory before and after, per stream.

    python benchmarks/bench_streams.py [--samples 40000] [--rounds 3] [--streams 10000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "module"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from edgeinfer.tools.broker import LocalBroker  # noqa: E402
from edgeinfer.tools.launch import ModuleLauncher  # noqa: E402
from edgeinfer.tools.recordings import load_recordings  # noqa: E402
from loadgen import NativeLoad, close_publishers, line_publishers, write_line  # noqa: E402

WHOLE = ROOT / "models" / "har" / "onnx" / "model.onnx"
STREAM = ROOT / "models" / "har" / "stream" / "model.onnx"
TOPICS = 8
PUBLISHERS = 20


def module(broker: LocalBroker, model: Path, state: Path, env: dict[str, str]) -> ModuleLauncher:
    env = {"EDGEINFER_LOG_LEVEL": "WARNING", "EDGEINFER_BROKER_SESSION_EXPIRY_S": "0", **env}
    return ModuleLauncher(broker.url, model, state, f"bench{os.getpid()}", env=env).start()


def windows_of(samples_per_topic: int) -> int:
    return max(0, (samples_per_topic - 100) // 50 + 1)


def rounds(args: argparse.Namespace, broker: LocalBroker) -> dict[str, list[float]]:
    rec = load_recordings()
    whole = NativeLoad(broker.port, [w.tolist() for w in rec.windows], topics=TOPICS)
    samples = NativeLoad(broker.port, [s.tolist() for w in rec.windows for s in w], TOPICS)
    results: dict[str, list[float]] = {}
    contenders = [
        ("whole windows (readings/s)", WHOLE, {}),
        ("samples, journal on (samples/s)", STREAM, {"EDGEINFER_STREAMS_JOURNAL": "true"}),
        ("samples, journal off (samples/s)", STREAM, {"EDGEINFER_STREAMS_JOURNAL": "false"}),
    ]
    for rnd in range(args.rounds):
        for name, model, env in contenders:
            with tempfile.TemporaryDirectory(prefix="edgeinfer-bench-") as state:
                m = module(broker, model, Path(state), env)
                try:
                    if model is WHOLE:
                        whole.burst(500)
                        burst = whole.burst(args.samples // 4)
                    else:
                        count = args.samples // TOPICS * TOPICS
                        burst = samples.burst(count, answers=TOPICS * windows_of(count // TOPICS))
                finally:
                    m.stop(15)
            results.setdefault(name, []).append(burst.throughput)
            print(f"round {rnd + 1} {name:<34} {burst.throughput:8.0f}  lost {burst.lost}")
    return results


def memory(broker: LocalBroker, streams: int) -> tuple[float, float, float]:
    """(RSS before, RSS after, bytes a stream) with ``streams`` devices holding 10 samples each."""
    env = {
        "EDGEINFER_STREAMS_WINDOW_KEY": "device",
        "EDGEINFER_STREAMS_MAX_STREAMS": str(streams),
        "EDGEINFER_STREAMS_JOURNAL": "false",
    }
    with tempfile.TemporaryDirectory(prefix="edgeinfer-bench-") as state:
        m = module(broker, STREAM, Path(state), env)
        try:
            time.sleep(1)
            before, _ = m.memory_mb()
            # A device always on the same publisher, each with 5,000 lines at most.
            pubs = line_publishers(broker.port, ["sensors/fleet/imu"] * PUBLISHERS)
            sample = orjson.dumps([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
            for n in range(10):
                for d in range(streams):
                    line = b'{"device":"d%d","id":%d,"features":%s}\n' % (d, n, sample)
                    write_line(pubs, d, line)
            close_publishers(pubs)
            deadline = time.monotonic() + 120
            while (got := m.metric("edgeinfer_messages_received_total")) < 10 * streams:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the module took {got:.0f} samples of {10 * streams} in 120 s"
                    )
                time.sleep(0.2)
            time.sleep(1)
            assert m.metric("edgeinfer_streams") == streams
            after, _ = m.memory_mb()
        finally:
            m.stop(15)
    return before, after, (after - before) * 1024 * 1024 / streams


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=40000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--streams", type=int, default=10000)
    args = parser.parse_args()
    with LocalBroker(kind="mosquitto", persistence=False) as broker:
        results = rounds(args, broker)
        before, after, per = memory(broker, args.streams)
    med = {name: statistics.median(v) for name, v in results.items()}
    print(f"\nmedians of {args.rounds} rounds; {args.samples} samples on {TOPICS} streams")
    for name, value in med.items():
        print(f"  {name:<34} {value:8.0f}")
    on = med["samples, journal on (samples/s)"]
    off = med["samples, journal off (samples/s)"]
    print(f"  journal on / off: {on / off:.2f}x")
    print(
        f"\n{args.streams} streams: RSS {before:.0f} MB -> {after:.0f} MB "
        f"({per / 1024:.1f} KB a stream)"
    )
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    doc = {"medians": med, "raw": results, "memory": {"before_mb": before, "after_mb": after}}
    (out / "streams.json").write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
