"""Fault harness for the module's HTTP address: half-sent bodies and connect floods.

A half-sent body is a socket that sends a request's headers with a
``Content-Length`` and then only part of the body (or trickles it), and holds
the connection open: what a slow or hostile client does to a server that
waits for bodies. A connect flood is many back-to-back TCP connects, timed one
by one: a connect that waited for a SYN retransmission (the server's listen
queue was full) takes a second or more instead of well under a millisecond.
"""

from __future__ import annotations

import contextlib
import socket
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from edgeinfer.config import HttpConfig, PipelineConfig
from edgeinfer.http.server import HealthServer, Operator, Predict
from edgeinfer.observability.metrics import Metrics

#: Linux retransmits an unanswered SYN after 1 s: a connect this slow waited for one.
SYN_RETRY_S = 1.0


class HalfSentBody:
    """One ``POST`` whose body stops short: ``declared`` bytes promised, ``sent`` sent.

    With ``trickle_s`` set, one more byte follows every ``trickle_s`` seconds (never the
    last one) until the server answers or closes: a body that is always nearly there.
    """

    def __init__(
        self,
        port: int,
        declared: int = 1000,
        sent: int = 1,
        path: str = "/predict",
        trickle_s: float | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        assert 0 <= sent < declared, "a half-sent body sends less than it declares"
        self.sock = socket.create_connection((host, port), timeout=60)
        self.opened = time.monotonic()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {declared}\r\n\r\n"
        ).encode()
        self.sock.sendall(head + b" " * sent)
        self._declared = declared
        self._sent = sent
        self._answer = bytearray()
        self._closed_at: float | None = None
        self._done = threading.Event()
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._trickler: threading.Thread | None = None
        if trickle_s is not None:
            self._trickler = threading.Thread(target=self._trickle, args=(trickle_s,), daemon=True)
            self._trickler.start()

    def _read(self) -> None:
        try:
            while chunk := self.sock.recv(65536):
                self._answer += chunk
        except OSError:
            pass  # reset, or closed by us
        self._closed_at = time.monotonic()
        self._done.set()

    def _trickle(self, every_s: float) -> None:
        while not self._stop.wait(every_s) and not self._done.is_set():
            if self._sent + 1 >= self._declared:
                return
            try:
                self.sock.send(b" ")
            except OSError:
                return
            self._sent += 1

    def wait_closed(self, timeout: float) -> bool:
        """True once the server closed the connection (within ``timeout`` seconds)."""
        return self._done.wait(timeout)

    def wait_status(self, timeout: float) -> int | None:
        """The answer's status once one has come (within ``timeout`` seconds), else None."""
        deadline = time.monotonic() + timeout
        while self.status is None and not self._done.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.status

    @property
    def answer(self) -> str:
        """What the server sent so far."""
        return bytes(self._answer).decode("latin-1")

    @property
    def status(self) -> int | None:
        """The answer's HTTP status, or None while there is none."""
        head = self.answer.split("\r\n", 1)[0].split()
        return int(head[1]) if len(head) >= 2 and head[1].isdigit() else None

    def header(self, name: str) -> str | None:
        """A header of the answer (first one), or None."""
        head = self.answer.split("\r\n\r\n", 1)[0]
        for line in head.split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None

    @property
    def closed_after_s(self) -> float | None:
        """Seconds from opening to the server's close; None while it is open."""
        return None if self._closed_at is None else self._closed_at - self.opened

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):  # the server may have closed it first
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._reader.join(5)


@dataclass
class HalfSentBodies:
    """Several half-sent bodies held open at once (a context manager that closes them)."""

    port: int
    count: int
    declared: int = 1000
    sent: int = 1
    bodies: list[HalfSentBody] = field(default_factory=list)

    def __enter__(self) -> list[HalfSentBody]:
        for _ in range(self.count):
            self.bodies.append(HalfSentBody(self.port, self.declared, self.sent))
        return self.bodies

    def __exit__(self, *exc: object) -> None:
        for body in self.bodies:
            body.close()


@dataclass(frozen=True)
class Flood:
    """The connect latencies of a flood, in seconds, in the order they were made."""

    seconds: list[float]

    @property
    def retried(self) -> list[float]:
        """Connects that waited for a SYN retransmission."""
        return [s for s in self.seconds if s >= SYN_RETRY_S * 0.9]

    def summary(self) -> str:
        ms = sorted(s * 1e3 for s in self.seconds)
        return (
            f"{len(ms)} connects: mean {statistics.mean(ms):.1f} ms, "
            f"median {statistics.median(ms):.2f} ms, max {ms[-1]:.0f} ms, "
            f"{len(self.retried)} waited for a SYN retry"
        )


def connect_flood(port: int, count: int = 200, host: str = "127.0.0.1") -> Flood:
    """``count`` back-to-back connects, each held open until all are made, each timed."""
    held: list[socket.socket] = []
    seconds: list[float] = []
    try:
        for _ in range(count):
            started = time.perf_counter()
            held.append(socket.create_connection((host, port), timeout=10))
            seconds.append(time.perf_counter() - started)
    finally:
        for sock in held:
            sock.close()
    return Flood(seconds)


def http_server(predict: Predict | None, **changes: Any) -> HealthServer:
    """The HTTP server alone, started, as a module on the default configuration serves
    it (``changes``: to the :class:`Operator`), in front of ``predict``."""
    http = HttpConfig()
    settings: dict[str, Any] = {
        "status": dict,
        "predict": predict,
        "token": None,
        "open_without_token": True,
        "max_body": PipelineConfig().max_payload_bytes,
        "max_concurrent": http.predict_concurrency,
        "body_timeout_s": http.body_timeout_s,
        "max_pending_bodies": http.max_pending_bodies,
    }
    operator = Operator(**{**settings, **changes})
    ready = lambda: (True, "ok")  # noqa: E731
    server = HealthServer("127.0.0.1", 0, Metrics().registry, ready, operator, http.listen_backlog)
    server.start()
    return server
