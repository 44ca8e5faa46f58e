"""The serving thread: network events and model runs on one thread.

Everything on the path of a reading runs here: the transport reads it from
the socket, the worker (the engine) decodes, batches, runs and encodes it, and
the transport writes the answer. One thread, because two busy Python threads
(a network thread and an inference thread) hand the GIL back and forth on
every system call: measured on a 2-core gateway that cost a quarter of the
throughput and put a 5 ms tail on latency (``benchmarks/bench_pipeline.py``).
The model itself runs without the GIL, on the runtime's own threads.

Each turn of the loop: run the calls other threads left (``call_soon``), let
the transport keep its timers (reconnects, keepalive), wait for the socket,
the wake-up or the next deadline, read and write, then let the worker answer
one batch when one is due. Between batches the network is always serviced, and
while the worker's queue is full the socket is not read (back-pressure to the
broker, not a dropped reading).

Other threads never touch the socket or the worker's queue: they call
:meth:`ServingLoop.call_soon` or :meth:`ServingLoop.wake`.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger(__name__)

#: The longest the loop sleeps with nothing to do (timers are checked this often).
IDLE_S = 1.0


class Worker(Protocol):
    """What the loop runs between network events (the engine)."""

    @property
    def has_room(self) -> bool:
        """Whether more readings may be taken from the transport now."""

    def due(self) -> float | None:
        """Seconds until :meth:`work` should run (0: now); None when there is nothing to do."""

    def work(self) -> None:
        """Do one slice of work (answer one batch); called on the loop's thread."""

    def attach(self, loop: ServingLoop) -> None:
        """From now on :meth:`work` runs on ``loop``'s thread."""

    def detach(self) -> None:
        """The loop has stopped: nothing calls :meth:`work` any more."""


class Transport(Protocol):
    """A connection the loop services (the MQTT client)."""

    def socket(self) -> Any:
        """The socket to wait on, or None while there is none."""

    def wants_write(self) -> bool: ...

    def buffered(self) -> bool:
        """Bytes already read from the socket but not yet handled (TLS keeps some)."""

    def read(self) -> None: ...

    def write(self) -> None: ...

    def tick(self, now: float) -> float | None:
        """Keep timers (``now`` is ``time.monotonic()``); returns the seconds until the next
        timer is due (None: none)."""

    def flush(self) -> None:
        """Send what the worker just queued."""


class ServingLoop:
    """The one thread that owns a transport and a worker."""

    def __init__(self, worker: Worker, transport: Transport | None = None, name: str = "serving"):
        self._worker = worker
        self._transport = transport
        self._name = name
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._calls: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._stop = False
        self._thread: threading.Thread | None = None

    @property
    def ident(self) -> int | None:
        """The loop thread's identity (None before it starts)."""
        return self._thread.ident if self._thread is not None else None

    def on_loop_thread(self) -> bool:
        return self._thread is not None and threading.get_ident() == self._thread.ident

    def start(self) -> None:
        self._worker.attach(self)
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> bool:
        """Stop after the current turn; True when the thread ended within ``timeout``."""
        self._stop = True
        self.wake()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def wake(self) -> None:
        """Make the loop take a turn now (any thread)."""
        # Full: a wake-up is already pending. Closed: the loop is gone.
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"\0")

    def call_soon(self, call: Callable[[], None]) -> None:
        """Run ``call`` on the loop's thread at its next turn (any thread)."""
        with self._lock:
            self._calls.append(call)
        self.wake()

    # -- the loop's thread -------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stop:
                self._turn()
        except Exception:  # a bug here would silently stop serving: say so loudly
            log.exception("the serving loop failed; no more readings are answered")
            raise
        finally:
            self._run_calls()
            self._worker.detach()

    def _turn(self) -> None:
        self._run_calls()
        transport, worker = self._transport, self._worker
        timeout = IDLE_S
        if transport is not None:
            timeout = _earliest(timeout, transport.tick(time.monotonic()))
        timeout = _earliest(timeout, worker.due())
        readable: list[Any] = [self._wake_r]
        writable: list[Any] = []
        sock = transport.socket() if transport is not None else None
        reading = sock is not None and worker.has_room
        if sock is not None:
            if reading:
                readable.append(sock)
                if transport is not None and transport.buffered():
                    timeout = 0.0
            if transport is not None and transport.wants_write():
                writable.append(sock)
        try:
            ready_r, ready_w, _ = select.select(readable, writable, [], max(0.0, timeout))
        except (OSError, ValueError):  # the socket closed under us: the transport notices
            ready_r, ready_w = [], []
        if self._wake_r in ready_r:
            self._drain_wakeups()
        if transport is not None and sock is not None:
            if sock in ready_r or (reading and transport.buffered()):
                transport.read()
            if sock in ready_w:
                transport.write()
        if worker.due() == 0:
            worker.work()
            if transport is not None:
                transport.flush()

    def _run_calls(self) -> None:
        with self._lock:
            calls, self._calls = self._calls, []
        for call in calls:
            try:
                call()
            except Exception:  # one caller's bug must not stop serving
                log.exception("a call on the serving loop failed")

    def _drain_wakeups(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while self._wake_r.recv(4096):
                pass

    def close(self) -> None:
        """Release the wake-up sockets (after :meth:`stop`)."""
        self._wake_r.close()
        self._wake_w.close()


def _earliest(current: float, other: float | None) -> float:
    return current if other is None else min(current, other)
