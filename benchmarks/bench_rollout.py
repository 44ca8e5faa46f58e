"""Rollout benchmark: the active model's throughput and latency with a shadow candidate.

The sample model serves; a desired state brings the INT8 model in as a shadow at
0 % (no rollout), 20 % and 100 % of readings, with a verdict that never comes
(``min_samples`` out of reach), so the shadow runs the whole time. Against a
mosquitto on loopback, with the native load generator (loadgen.py), in
interleaved rounds: a burst (results per second) and 1,000 readings/s for 5 s
(p50/p99 from publish to result). Mirrored runs are bounded by the rollout's
CPU budget and skipped when the reading queue is half full, so the figures show
what the shadow costs the readings that are answered.

    python benchmarks/bench_rollout.py [--burst 20000] [--rate 1000] [--seconds 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import hashlib
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
from edgeinfer.tools.deploy import publish_desired  # noqa: E402
from edgeinfer.tools.launch import ModuleLauncher  # noqa: E402
from edgeinfer.tools.recordings import load_recordings  # noqa: E402
from loadgen import NativeLoad  # noqa: E402

ACTIVE = ROOT / "models" / "har" / "onnx" / "model.onnx"
CANDIDATE = ROOT / "models" / "har" / "int8-static" / "model.onnx"


def start(broker: LocalBroker, state: Path, percent: int) -> ModuleLauncher:
    env = {
        "EDGEINFER_LOG_LEVEL": "WARNING",
        "EDGEINFER_BROKER_SESSION_EXPIRY_S": "0",
        "EDGEINFER_UPDATES_FILE_ROOTS": str(CANDIDATE.parent),
    }
    # A module id of its own: the retained desired state of an earlier round must not reach it.
    mid = f"bench{os.getpid()}-{state.name[-8:]}"
    module = ModuleLauncher(broker.url, ACTIVE, state, mid, env=env).start()
    if percent:
        body = CANDIDATE.read_bytes()
        doc = {
            "model": {
                "name": "har",
                "version": "1.1.0",
                "url": CANDIDATE.as_uri(),
                "sha256": hashlib.sha256(body).hexdigest(),
                "size": len(body),
            },
            "rollout": {"mode": "shadow", "percent": percent, "min_samples": 10**9},
        }
        publish_desired(broker.url, module.module_id, doc)
        deadline = time.monotonic() + 20
        while module.metric("edgeinfer_rollout_percent") != percent:
            if time.monotonic() > deadline:
                raise RuntimeError("the shadow did not start within 20 s")
            time.sleep(0.1)
    return module


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--burst", type=int, default=20000)
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    windows = [w.tolist() for w in load_recordings().windows]
    results: dict[str, dict[str, list[float]]] = {}
    with LocalBroker(kind="mosquitto", persistence=False) as broker:
        load = NativeLoad(broker.port, windows)
        for rnd in range(args.rounds):
            for percent in (0, 20, 100):
                name = f"shadow {percent}%" if percent else "no shadow"
                with tempfile.TemporaryDirectory(prefix="edgeinfer-bench-") as state:
                    module = start(broker, Path(state), percent)
                    try:
                        load.burst(500)
                        burst = load.burst(args.burst)
                        lat = load.paced(args.rate, args.seconds)
                        mirrored = module.metric('edgeinfer_rollout_answered{version="1.1.0"}')
                        skipped = module.metric("edgeinfer_rollout_mirror_skipped")
                    finally:
                        module.stop(15)
                row = results.setdefault(name, {})
                for key, value in (
                    ("throughput", burst.throughput),
                    ("p50", lat.p50_ms),
                    ("p99", lat.p99_ms),
                    ("lost", burst.lost + lat.lost),
                    ("mirrored", mirrored),
                    ("skipped", skipped),
                ):
                    row.setdefault(key, []).append(value)
                print(
                    f"round {rnd + 1} {name:<12} {burst.throughput:7.0f}/s"
                    f"  p50 {lat.p50_ms:5.2f} ms  p99 {lat.p99_ms:5.2f} ms"
                    f"  mirrored {mirrored:.0f} skipped {skipped:.0f}"
                    f"  lost {burst.lost + lat.lost}",
                    flush=True,
                )
    med = {n: {k: statistics.median(v) for k, v in r.items()} for n, r in results.items()}
    print(f"\nmedians of {args.rounds} rounds; burst {args.burst}, paced {args.rate:.0f}/s")
    base = med["no shadow"]
    for name, m in med.items():
        print(
            f"  {name:<12} {m['throughput']:7.0f}/s ({m['throughput'] / base['throughput']:.2f}x)"
            f"  p50 {m['p50']:5.2f} ms  p99 {m['p99']:5.2f} ms"
        )
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    doc = {"medians": med, "raw": results}
    (out / "rollout.json").write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
