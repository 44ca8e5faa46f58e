"""Pipeline benchmark: pass-through limit vs naive peer vs edgeinfer, one run, one table.

Against a mosquitto on loopback (set_tcp_nodelay true) started here, driven by a
native load generator (``mosquitto_pub -l``, counted by ``mosquitto_sub -C``:
see loadgen.py). For each contender, in interleaved rounds so that a noisy
machine favours none:

* throughput: a burst of readings as fast as mosquitto_pub sends them; answers
  per second from the first send to the last answer;
* latency: readings at a fixed rate; from send to answer (one clock), p50/p99.

Contenders: the pass-through limit and, with the small sample model, the naive
peer and edgeinfer; with a model heavy enough that batching matters (an MLP
2048-2048-1024, about 1 ms a reading alone), the naive peer and edgeinfer again.
``--baseline DIR`` adds edgeinfer from another checkout (its ``module/``), for a
before/after table in the same run. For edgeinfer also: resident memory and the
time from start to ready.

    python benchmarks/bench_pipeline.py [--burst 20000] [--rate 1000] [--seconds 5]
        [--rounds 3] [--baseline DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "module"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from edgeinfer.tools.broker import LocalBroker  # noqa: E402
from edgeinfer.tools.launch import ModuleLauncher  # noqa: E402
from edgeinfer.tools.recordings import load_recordings  # noqa: E402
from loadgen import NativeLoad  # noqa: E402
from models import heavy_mlp  # noqa: E402

SMALL = ROOT / "models" / "har" / "onnx" / "model.onnx"


class Contender:
    """One process answering sensors/# on inference/#: ``edgeinfer...`` (the module, from
    the checkout ``source``), ``passthrough`` or ``naive`` (benchmarks/peers.py)."""

    def __init__(
        self, name: str, broker: LocalBroker, model: Path | None, source: Path = ROOT
    ) -> None:
        self.name = name
        self.state = tempfile.TemporaryDirectory(prefix="edgeinfer-bench-")
        self.module: ModuleLauncher | None = None
        started = time.monotonic()
        if name.startswith("edgeinfer"):
            # A fresh session per round, like the peers': a persistent one would
            # queue the other contenders' readings for the next round.
            env = {
                "EDGEINFER_LOG_LEVEL": "WARNING",
                "EDGEINFER_BROKER_SESSION_EXPIRY_S": "0",
                "PYTHONPATH": str(source / "module"),
            }
            self.module = ModuleLauncher(
                broker.url, model, Path(self.state.name), f"bench{os.getpid()}", env=env
            ).start()
            self.ready_s = self.module.ready_s
            return
        kind = "passthrough" if name == "passthrough" else "naive"
        cmd = [sys.executable, str(ROOT / "benchmarks" / "peers.py"), kind, str(broker.port)]
        self.proc = subprocess.Popen(
            [*cmd, str(model or SMALL)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        assert self.proc.stdout is not None
        self.proc.stdout.readline()  # "ready"
        self.ready_s = time.monotonic() - started

    @property
    def pid(self) -> int:
        return self.module.pid if self.module is not None else self.proc.pid

    def memory_mb(self) -> tuple[float, float]:
        assert self.module is not None
        return self.module.memory_mb()

    def stop(self) -> None:
        if self.module is not None:
            self.module.stop(15)
        else:
            self.proc.terminate()
            self.proc.wait(15)
        self.state.cleanup()


def contenders(baseline: Path | None, mlp: Path) -> list[tuple[str, Path | None, Path, bool]]:
    """(name, model, source tree, measure latency too)."""
    rows = [
        ("passthrough", None, ROOT, True),
        ("naive", SMALL, ROOT, True),
        ("edgeinfer", SMALL, ROOT, True),
    ]
    if baseline is not None:
        rows.append(("edgeinfer@baseline", SMALL, baseline, True))
    rows += [("naive MLP", mlp, ROOT, False), ("edgeinfer MLP", mlp, ROOT, False)]
    return rows


def run_rounds(args: argparse.Namespace, mlp: Path) -> dict[str, dict[str, list[float]]]:
    results: dict[str, dict[str, list[float]]] = {}
    windows = [w.tolist() for w in load_recordings().windows]
    with LocalBroker(kind="mosquitto", persistence=False) as broker:
        load = NativeLoad(broker.port, windows)
        for rnd in range(args.rounds):
            for name, model, source, paced in contenders(args.baseline, mlp):
                contender = Contender(name, broker, model, source)
                try:
                    load.burst(500)  # warm-up
                    burst = load.burst(args.burst // (4 if "MLP" in name else 1))
                    row = results.setdefault(name, {})
                    row.setdefault("throughput", []).append(burst.throughput)
                    row.setdefault("lost", []).append(burst.lost)
                    row.setdefault("ready_s", []).append(contender.ready_s)
                    line = f"round {rnd + 1} {name:<20} {burst.throughput:7.0f}/s"
                    if paced:
                        lat = load.paced(args.rate, args.seconds)
                        row.setdefault("p50", []).append(lat.p50_ms)
                        row.setdefault("p99", []).append(lat.p99_ms)
                        row["lost"].append(lat.lost)
                        line += f"  p50 {lat.p50_ms:6.2f} ms  p99 {lat.p99_ms:6.2f} ms"
                    if contender.module is not None:
                        rss, hwm = contender.memory_mb()
                        row.setdefault("rss_mb", []).append(rss)
                        row.setdefault("hwm_mb", []).append(hwm)
                    print(f"{line}  lost {int(sum(row['lost'][-2:]))}", flush=True)
                finally:
                    contender.stop()
    return results


def report(args: argparse.Namespace, results: dict[str, dict[str, list[float]]]) -> int:
    med = {c: {k: statistics.median(v) for k, v in r.items()} for c, r in results.items()}
    print(
        f"\nmedians of {args.rounds} rounds; burst {args.burst} (MLP: {args.burst // 4}), "
        f"paced {args.rate:.0f}/s for {args.seconds:.0f} s; native load generator"
    )
    print(f"{'contender':<20} {'throughput/s':>12} {'p50 ms':>8} {'p99 ms':>8} {'lost':>5}")
    for c, m in med.items():
        p50 = f"{m['p50']:>8.2f}" if "p50" in m else f"{'-':>8}"
        p99 = f"{m['p99']:>8.2f}" if "p99" in m else f"{'-':>8}"
        print(f"{c:<20} {m['throughput']:>12.0f} {p50} {p99} {int(sum(results[c]['lost'])):>5}")
    e, p, n = med["edgeinfer"], med["passthrough"], med["naive"]
    em, nm = med["edgeinfer MLP"], med["naive MLP"]
    lost = sum(sum(results[c]["lost"]) for c in results if c.startswith("edgeinfer"))
    checks = [  # (what, measured, limit, higher is better)
        ("small model: >= 0.9x the pass-through", e["throughput"] / p["throughput"], 0.9, True),
        ("MLP: throughput >= 2x the naive peer", em["throughput"] / nm["throughput"], 2.0, True),
        (f"p99 at {args.rate:.0f}/s <= 4x pass-through's", e["p99"] / p["p99"], 4.0, False),
        ("readings lost == 0 (edgeinfer)", float(lost), 0.0, False),
        ("peak resident memory <= 150 MB", e["hwm_mb"], 150.0, False),
        ("ready within 2 s", e["ready_s"], 2.0, False),
    ]
    print(
        f"\nedgeinfer: {e['throughput'] / n['throughput']:.2f}x naive; RSS {e['rss_mb']:.0f} MB "
        f"(peak {e['hwm_mb']:.0f} MB), ready in {e['ready_s']:.2f} s"
    )
    missed = 0
    for label, value, limit, higher in checks:
        ok = value >= limit if higher else value <= limit
        missed += not ok
        print(f"  [{'met   ' if ok else 'MISSED'}] {label} ({value:.2f})")
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    doc: dict[str, Any] = {"medians": med, "raw": results}
    (out / "pipeline.json").write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    return 1 if missed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--burst", type=int, default=20000)
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="another checkout to compare with")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        mlp = heavy_mlp(Path(tmp) / "mlp" / "model.onnx")
        return report(args, run_rounds(args, mlp))


if __name__ == "__main__":
    sys.exit(main())
