"""Status page benchmark: the cost of the page under 1,000 readings/s, open beside closed.

The sample model serves; the module samples its metrics once a second whether
or not the page is open, so what is measured is what an open page adds. Against
a mosquitto on loopback, with the native load generator (loadgen.py), in
interleaved rounds (the order rotated from round to round) with a fresh module
for each contender:

* ``page closed``: nobody reads the HTTP address (beyond the launcher's probes);
* ``page open (gateway)``: what the gateway sees of an open page: a thread that,
  like the page's script, fetches ``/`` and its 4 static files once, then
  ``GET /api/status`` on one keep-alive connection, waiting 1 s after each
  answer, for the whole measurement; the mean time of one request (client
  side) and its size are recorded;
* ``page open (chromium)``: the page in a headless Chromium on the same machine
  (``/usr/bin/chromium``), the worst case: the browser shares the gateway's
  cores, where in practice it runs on the operator's laptop. Its polls are
  counted from its net log, and its CPU time (all its processes) is recorded.

Each contender: 1,000 readings/s for ``--seconds`` (p50/p99 from publish to
result, and readings lost), then a burst (results per second). A module lives
well under a minute here, so its ``/api/status`` holds only that many samples;
the size and build time of the document with a full ten-minute ring are
measured apart, in-process (see ``full_ring``).

    python benchmarks/bench_status_page.py [--burst 20000] [--rate 1000] [--seconds 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "module"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from edgeinfer.observability.metrics import Metrics  # noqa: E402
from edgeinfer.observability.status import KEEP, StatusBoard  # noqa: E402
from edgeinfer.tools.broker import LocalBroker  # noqa: E402
from edgeinfer.tools.launch import ModuleLauncher  # noqa: E402
from edgeinfer.tools.recordings import load_recordings  # noqa: E402
from loadgen import NativeLoad  # noqa: E402

MODEL = ROOT / "models" / "har" / "onnx" / "model.onnx"
CHROMIUM = "/usr/bin/chromium"
#: What the page loads once (status.html links the styles and scripts).
PAGE_FILES = (
    "/",
    "/static/status.js",
    "/static/status.css",
    "/static/uPlot.iife.min.js",
    "/static/uPlot.min.css",
)
POLL_S = 1.0  # status.js: POLL_MS
SETTLE_S = 2.0  # after the page is open (or not), before the load starts
CONTENDERS = ("page closed", "page open (gateway)", "page open (chromium)")


@dataclass
class Polls:
    """What the gateway thread saw of ``/api/status``."""

    seconds: list[float] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    errors: int = 0


class PagePoller:
    """The page's requests as the gateway sees them, on one keep-alive connection."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.polls = Polls()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="page-poller", daemon=True)
        self._conn = self._connect()

    def _connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)

    def _get(self, path: str) -> bytes:
        try:
            self._conn.request("GET", path)
            resp = self._conn.getresponse()
            body = resp.read()
        except (OSError, http.client.HTTPException):
            self._conn.close()
            self._conn = self._connect()
            raise
        if resp.status != 200:
            raise RuntimeError(f"GET {path} answered {resp.status}")
        return body

    def start(self) -> None:
        for path in PAGE_FILES:
            self._get(path)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            began = time.perf_counter()
            try:
                body = self._get("/api/status")
            except (OSError, http.client.HTTPException, RuntimeError):
                self.polls.errors += 1
            else:
                self.polls.seconds.append(time.perf_counter() - began)
                self.polls.sizes.append(len(body))
            self._stop.wait(POLL_S)  # like the page: the next poll 1 s after the answer

    def stop(self) -> Polls:
        self._stop.set()
        self._thread.join(10)
        self._conn.close()
        return self.polls


def _tree(root: int) -> list[int]:
    """``root`` and every process descended from it."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found = [root]
    for pid in found:
        found.extend(child for child, parent in parents.items() if parent == pid)
    return found


def cpu_seconds(root: int) -> float:
    """User and system CPU time of ``root`` and its descendants (those still running)."""
    ticks = 0
    for pid in _tree(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def status_polls(net_log: Path) -> int:
    """Requests for ``/api/status`` the browser started, read from its net log.

    The log is cut off when the browser is killed: read line by line, not as JSON.
    """
    try:
        text = net_log.read_text(errors="replace")
    except OSError:
        return 0
    kind = re.search(r'"URL_REQUEST_START_JOB":(\d+)', text)
    if kind is None:
        return 0
    start_job = f'"type":{kind.group(1)}}}'  # an event's own type closes its line
    return sum(
        1
        for line in text.splitlines()
        if '/api/status"' in line and line.rstrip().rstrip(",").endswith(start_job)
    )


@contextmanager
def chromium(port: int, timeout: float = 30.0) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """A headless Chromium with the page open, once it has polled ``/api/status``."""
    profile = Path(tempfile.mkdtemp(prefix="edgeinfer-chromium-"))
    net_log = profile / "net.json"
    proc = subprocess.Popen(
        [
            CHROMIUM,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={profile}",
            f"--log-net-log={net_log}",
            f"http://127.0.0.1:{port}/",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + timeout
        while status_polls(net_log) == 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromium did not poll /api/status within {timeout:.0f} s")
            time.sleep(0.2)
        yield proc, net_log
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # its own process group (start_new_session)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # its helpers, if any outlived it
        shutil.rmtree(profile, ignore_errors=True)


def full_ring(polls: int = 20) -> tuple[float, float]:
    """Size (bytes) and build time (ms, median) of ``/api/status`` with a full ring.

    A fresh module's document holds only the seconds it has lived; after ten
    minutes it holds ``KEEP`` samples. Built here, in-process and without load,
    from a board fed ``KEEP`` samples of 1,000 readings/s.
    """
    metrics = Metrics()
    board = StatusBoard(metrics.registry, lambda: {"module_id": "bench"})
    rng = random.Random(1)
    t0 = time.time() - KEEP
    for n in range(KEEP + 1):
        metrics.messages_received.inc(1000 + rng.randint(-5, 5))
        metrics.results_published.inc(1000 + rng.randint(-5, 5))
        for _ in range(20):
            metrics.end_to_end_seconds.observe(rng.lognormvariate(-7, 0.8))
        board.sample(now=t0 + n)
    took = []
    for _ in range(polls):
        began = time.perf_counter()
        body = orjson.dumps(board.snapshot())
        took.append(time.perf_counter() - began)
    return len(body), statistics.median(took) * 1000


def start(broker: LocalBroker, state: Path) -> ModuleLauncher:
    env = {"EDGEINFER_LOG_LEVEL": "WARNING", "EDGEINFER_BROKER_SESSION_EXPIRY_S": "0"}
    mid = f"bench{os.getpid()}-{state.name[-8:]}"
    return ModuleLauncher(broker.url, MODEL, state, mid, env=env).start()


def measure(load: NativeLoad, args: argparse.Namespace) -> dict[str, float]:
    """Warm-up, paced readings (p50/p99), then a burst (throughput)."""
    time.sleep(SETTLE_S)
    load.burst(500)
    lat = load.paced(args.rate, args.seconds)
    burst = load.burst(args.burst)
    return {
        "throughput": burst.throughput,
        "p50": lat.p50_ms,
        "p99": lat.p99_ms,
        "lost": float(burst.lost + lat.lost),
    }


def run_contender(
    name: str, module: ModuleLauncher, load: NativeLoad, args: argparse.Namespace
) -> dict[str, float]:
    """One contender's figures against a fresh, ready module."""
    if name == "page closed":
        return measure(load, args)
    if name == "page open (gateway)":
        poller = PagePoller(module.http_port)
        poller.start()
        try:
            row = measure(load, args)
        finally:
            polls = poller.stop()
        if not polls.seconds:
            raise RuntimeError("no /api/status request was answered")
        row["status_ms"] = statistics.mean(polls.seconds) * 1000
        row["status_bytes"] = statistics.mean(polls.sizes)
        row["polls"] = float(len(polls.seconds))
        row["poll_errors"] = float(polls.errors)
        return row
    with chromium(module.http_port) as (browser, net_log):
        cpu0, t0, polls0 = cpu_seconds(browser.pid), time.monotonic(), status_polls(net_log)
        row = measure(load, args)
        cpu, took = cpu_seconds(browser.pid) - cpu0, time.monotonic() - t0
        row["polls"] = float(status_polls(net_log) - polls0)
    row["browser_cpu_pct"] = 100 * cpu / took
    return row


def describe(name: str, row: dict[str, float]) -> str:
    text = (
        f"{name:<21} {row['throughput']:7.0f}/s  p50 {row['p50']:6.2f} ms"
        f"  p99 {row['p99']:6.2f} ms  lost {row['lost']:.0f}"
    )
    if "status_ms" in row:
        text += (
            f"  /api/status {row['status_ms']:.2f} ms, {row['status_bytes'] / 1024:.1f} KiB"
            f" ({row['polls']:.0f} polls, {row['poll_errors']:.0f} errors)"
        )
    if "browser_cpu_pct" in row:
        text += f"  browser {row['browser_cpu_pct']:.1f}% of a core ({row['polls']:.0f} polls)"
    return text


def rounds(args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    windows = [w.tolist() for w in load_recordings().windows]
    results: dict[str, dict[str, list[float]]] = {}
    with LocalBroker(kind="mosquitto", persistence=False) as broker:
        load = NativeLoad(broker.port, windows)
        for rnd in range(args.rounds):
            turn = rnd % len(CONTENDERS)  # each contender takes each place in turn
            for name in CONTENDERS[turn:] + CONTENDERS[:turn]:
                with tempfile.TemporaryDirectory(prefix="edgeinfer-bench-") as state:
                    module = start(broker, Path(state))
                    try:
                        row = run_contender(name, module, load, args)
                    finally:
                        module.stop(15)
                for key, value in row.items():
                    results.setdefault(name, {}).setdefault(key, []).append(value)
                print(f"round {rnd + 1} {describe(name, row)}", flush=True)
    return results


def report(args: argparse.Namespace, results: dict[str, dict[str, list[float]]]) -> None:
    med = {n: {k: statistics.median(v) for k, v in r.items()} for n, r in results.items()}
    print(
        f"\nmedians of {args.rounds} rounds; paced {args.rate:.0f}/s for {args.seconds:g} s,"
        f" burst {args.burst}; ratios against the page closed"
    )
    base = med["page closed"]
    print(f"  {'':<21} {'throughput':>16}  {'p50 ms':>13}  {'p99 ms':>13}  lost")
    for name, m in med.items():
        print(
            f"  {name:<21} {m['throughput']:7.0f}/s ({m['throughput'] / base['throughput']:.2f}x)"
            f"  {m['p50']:5.2f} ({m['p50'] / base['p50']:.2f}x)"
            f"  {m['p99']:5.2f} ({m['p99'] / base['p99']:.2f}x)  {m['lost']:.0f}"
        )
    gateway, browser = med["page open (gateway)"], med["page open (chromium)"]
    print(
        f"  one /api/status (client side): {gateway['status_ms']:.2f} ms,"
        f" {gateway['status_bytes'] / 1024:.1f} KiB;"
        f" headless chromium: {browser['browser_cpu_pct']:.1f}% of a core"
    )
    size, build_ms = full_ring()
    print(
        f"  /api/status after {KEEP / 60:.0f} minutes (a full ring; built in-process, no load):"
        f" {size / 1024:.1f} KiB, {build_ms:.2f} ms to build and encode"
    )
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    doc = {
        "args": vars(args),
        "medians": med,
        "raw": results,
        "full_ring": {"bytes": size, "build_ms": build_ms},
    }
    (out / "status_page.json").write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--burst", type=int, default=20000)
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"{CHROMIUM} not found (Debian: apt-get install chromium)")
    report(args, rounds(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
