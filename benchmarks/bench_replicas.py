"""Replicas on a shared subscription: throughput of 1, 2 and 3 modules sharing the readings.

The heavy model is PaddleOCR's text-direction classifier as RapidOCR ships it (a
PP-OCR-class conv net, ``x: [?, 3, 48, 192]``; fetched into the test cache, never
committed); readings are single crops as ``.npy`` (110 KB), published by a paho
process; answers counted by ``mosquitto_sub``. Each replica is ``edgeinfer run``
with ``topics.inputs = ["$share/bench/sensors/#"]`` and its defaults otherwise.
Rounds interleave the replica counts; the table gives medians.

On this 2-core machine the replicas share the cores with each other, the broker
and the load generator: the figure says what sharing costs or gains here, not
what a replica on a machine of its own would add.

    python benchmarks/bench_replicas.py [--burst 2000] [--rounds 3] [--replicas 1,2,3]
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "module"))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from tests.compat.fetch import model_file  # noqa: E402

from bench_vision import MEMBER, PACKAGE, crops, npy  # noqa: E402
from edgeinfer.tools.broker import LocalBroker  # noqa: E402
from edgeinfer.tools.launch import ModuleLauncher  # noqa: E402
from loadgen import BinaryLoad  # noqa: E402


def replicas(broker: LocalBroker, model: Path, count: int, tmp: Path) -> list[ModuleLauncher]:
    """``count`` modules on one shared subscription, each ready."""
    env = {
        "EDGEINFER_LOG_LEVEL": "WARNING",
        "EDGEINFER_TOPICS_INPUTS": "$share/bench/sensors/#",
        "EDGEINFER_BROKER_SHARED_SESSION_EXPIRY_S": "0",  # nothing queued between rounds
        "PYTHONPATH": str(ROOT / "module"),
    }
    stamp = time.monotonic_ns()
    mods = [
        ModuleLauncher(broker.url, model, tmp / f"r{stamp}-{n}", f"rep{stamp}-{n}", env=env)
        for n in range(count)
    ]
    for module in mods:
        module.start(wait=False)
    for module in mods:
        module.wait_ready(60)
    return mods


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--burst", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--replicas", default="1,2,3")
    args = parser.parse_args()
    counts = [int(n) for n in args.replicas.split(",")]
    model = model_file(PACKAGE, MEMBER)
    results: dict[int, list[float]] = collections.defaultdict(list)
    with LocalBroker(kind="mosquitto") as broker, tempfile.TemporaryDirectory() as tmp:
        load = BinaryLoad(broker.port, [npy(x) for x in crops(32)], Path(tmp))
        for rnd in range(args.rounds):
            for count in counts:
                mods = replicas(broker, model, count, Path(tmp))
                try:
                    load.burst(100)  # warm-up
                    burst = load.burst(args.burst)
                finally:
                    for module in mods:
                        module.stop(15)
                results[count].append(burst.throughput)
                print(
                    f"round {rnd + 1}: {count} replicas {burst.throughput:7.0f}/s"
                    f"  lost {burst.lost}",
                    flush=True,
                )
                if burst.lost:
                    print(f"  {count} replicas lost {burst.lost} readings", file=sys.stderr)
    one = statistics.median(results[counts[0]])
    print(f"\nmedians of {args.rounds} rounds; burst of {args.burst} .npy crops (110 KB)")
    for count in counts:
        med = statistics.median(results[count])
        print(f"  {count} replicas  {med:7.0f} readings/s  ({med / one:.2f}x {counts[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
