"""A native load generator: ``mosquitto_pub -l`` sends, ``mosquitto_sub -C`` counts.

A Python (paho) load generator tops out near 5,000 messages a second on this
machine, about what a paho worker can answer: it would measure itself. So a
burst is written as lines into ``mosquitto_pub -l`` (one message per line, one
process per topic) and the answers are counted by ``mosquitto_sub``, which
stamps each arrival (``%U``: Unix time with nanoseconds). Every reading carries
its send time in ``ts``, which every contender echoes, so latency is one
clock's difference. mosquitto_sub writes into a file, not a pipe: a pipe nobody reads fills up,
stalls mosquitto_sub, and its arrival stamps with it.

Binary readings (.npy) cannot travel as lines: :class:`BinaryLoad` publishes
them from a paho process of its own (``python loadgen.py publish ...``); at the
rates a heavy model is answered (hundreds to a few thousand a second) that is
far from a paho client's limit.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import orjson


@dataclass(frozen=True)
class Burst:
    throughput: float  # answers per second, first send to last answer
    lost: int


@dataclass(frozen=True)
class Paced:
    p50_ms: float
    p99_ms: float
    lost: int


def line_publishers(port: int, topics: list[str]) -> list[subprocess.Popen[bytes]]:
    """One ``mosquitto_pub -l`` a topic (QoS 1): each line written to it is one message.

    It drops what it still holds at the end of its input beyond a few thousand lines:
    give each at most about 5,000.
    """
    command = [
        "mosquitto_pub",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-q",
        "1",
        "-M",
        "1000",
        "--nodelay",
        "-l",
    ]
    return [subprocess.Popen([*command, "-t", topic], stdin=subprocess.PIPE) for topic in topics]


def write_line(
    pubs: list[subprocess.Popen[bytes]], n: int, line: bytes, flush: bool = False
) -> None:
    """Line ``n`` to publisher ``n`` modulo their number (so its order per publisher holds)."""
    stdin = pubs[n % len(pubs)].stdin
    assert stdin is not None
    stdin.write(line)
    if flush:
        stdin.flush()


def close_publishers(pubs: list[subprocess.Popen[bytes]]) -> None:
    """End their input and wait until each has sent everything."""
    for pub in pubs:
        assert pub.stdin is not None
        pub.stdin.close()
        pub.wait()


class NativeLoad:
    """Readings on ``sensors/bench{0..topics-1}/imu``; answers on ``inference/#``."""

    def __init__(self, port: int, windows: list[list[list[float]]], topics: int = 4) -> None:
        self.port = port
        self.topics = topics
        self._bodies = [orjson.dumps(w) for w in windows]  # the "features" part, pre-encoded
        self._ids = itertools.count()
        self._outputs: dict[int, IO[bytes]] = {}

    def _line(self, rid: int) -> bytes:
        features = self._bodies[rid % len(self._bodies)]
        return b'{"id":%d,"ts":%.6f,"features":' % (rid, time.time()) + features + b"}\n"

    def _publishers(self) -> list[subprocess.Popen[bytes]]:
        return line_publishers(self.port, [f"sensors/bench{n}/imu" for n in range(self.topics)])

    def _subscriber(self, count: int, timeout: float) -> subprocess.Popen[bytes]:
        out = tempfile.TemporaryFile()  # noqa: SIM115 (closed in _arrivals)
        sub = subprocess.Popen(
            [
                "mosquitto_sub",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-q",
                "1",
                "--nodelay",
                "-t",
                "inference/#",
                "-C",
                str(count),
                "-W",
                str(int(timeout)),
                "-F",
                "%U %p",
            ],
            stdout=out,
        )
        self._outputs[sub.pid] = out
        time.sleep(0.3)  # subscribed before the first reading goes out
        return sub

    def _arrivals(self, sub: subprocess.Popen[bytes]) -> list[tuple[float, float]]:
        """(arrival, sent) of every answer mosquitto_sub printed."""
        sub.wait()
        out_file = self._outputs.pop(sub.pid)
        out_file.seek(0)
        out = out_file.read()
        out_file.close()
        arrivals = []
        for line in out.splitlines():
            stamp, _, payload = line.partition(b" ")
            try:
                arrivals.append((float(stamp), float(orjson.loads(payload)["ts"])))
            except (ValueError, KeyError, TypeError):
                continue
        return arrivals

    def burst(self, count: int, timeout: float = 120, answers: int | None = None) -> Burst:
        """``count`` readings as fast as mosquitto_pub takes them; ``answers`` expected (default:
        one each; a windowed model answers per window). Throughput is readings per second."""
        expected = count if answers is None else answers
        sub = self._subscriber(expected, timeout)
        pubs = self._publishers()
        lines = [self._line(next(self._ids)) for _ in range(count)]
        started = time.time()
        for n, line in enumerate(lines):
            write_line(pubs, n, line)
        close_publishers(pubs)
        arrivals = self._arrivals(sub)
        if not arrivals:
            return Burst(0.0, expected)
        took = max(a for a, _ in arrivals) - started
        return Burst(count * len(arrivals) / expected / took, expected - len(arrivals))

    def paced(self, rate: float, seconds: float) -> Paced:
        """``rate`` readings a second for ``seconds``; latency from send to arrival."""
        count = int(rate * seconds)
        sub = self._subscriber(count, seconds + 30)
        pubs = self._publishers()
        time.sleep(0.3)  # connected before the clock starts
        start = time.perf_counter()
        for n in range(count):
            delay = start + n / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            write_line(pubs, n, self._line(next(self._ids)), flush=True)
        close_publishers(pubs)
        arrivals = self._arrivals(sub)
        lat = np.array([arrived - sent for arrived, sent in arrivals]) * 1000
        if not len(lat):
            return Paced(float("nan"), float("nan"), count)
        return Paced(float(np.percentile(lat, 50)), float(np.percentile(lat, 99)), count - len(lat))


class BinaryLoad:
    """Binary readings on ``sensors/bench{0..topics-1}/cam``, answers on ``inference/#``."""

    def __init__(self, port: int, payloads: list[bytes], workdir: Path, topics: int = 4) -> None:
        self.port = port
        self.topics = topics
        self.dir = workdir / "payloads"
        self.dir.mkdir(parents=True, exist_ok=True)
        for n, payload in enumerate(payloads):
            (self.dir / f"{n:04d}.bin").write_bytes(payload)

    def burst(self, count: int, timeout: float = 300) -> Burst:
        """``count`` readings as fast as the publisher sends them; answers a second."""
        out = tempfile.TemporaryFile()  # noqa: SIM115 (closed below)
        sub = subprocess.Popen(
            [
                "mosquitto_sub",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-q",
                "1",
                "--nodelay",
                "-t",
                "inference/#",
                "-C",
                str(count),
                "-W",
                str(int(timeout)),
                "-F",
                "%U",
            ],
            stdout=out,
        )
        time.sleep(0.3)
        done = subprocess.run(
            [
                sys.executable,
                __file__,
                "publish",
                str(self.port),
                str(self.dir),
                str(count),
                str(self.topics),
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=timeout,
        )
        started = float(done.stdout.split()[0])
        sub.wait()
        out.seek(0)
        stamps = [float(line) for line in out.read().split()]
        out.close()
        if not stamps:
            return Burst(0.0, count)
        return Burst(len(stamps) / (max(stamps) - started), count - len(stamps))


def _publish(port: int, folder: Path, count: int, topics: int) -> None:
    """Publish ``count`` messages (the folder's files in turn), QoS 1; print the start time."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    payloads = [p.read_bytes() for p in sorted(folder.iterdir())]
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    started = time.time()
    infos = [
        client.publish(f"sensors/bench{n % topics}/cam", payloads[n % len(payloads)], qos=1)
        for n in range(count)
    ]
    for info in infos:
        info.wait_for_publish(60)
    client.disconnect()
    client.loop_stop()
    print(f"{started:.6f}")


if __name__ == "__main__" and sys.argv[1:2] == ["publish"]:
    _publish(int(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
