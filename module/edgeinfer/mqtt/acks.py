"""Acknowledge QoS 1 readings in arrival order, once their answer is safe at the broker.

A reading is acknowledged (paho manual ack) only after its result or error
report has been acknowledged by the broker, so a crash at any moment loses no
reading. PUBACKs leave in the order the readings arrived, as MQTT asks, even
though answers may complete out of order: a reading waits until every earlier
one is complete.

Packet ids are only meaningful on the connection that delivered them. Losing a
connection ends its epoch (and so does each new one); tickets of an older epoch
are never acknowledged: the broker redelivers those readings on the new
connection.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable


class Ticket:
    """One received reading awaiting acknowledgement."""

    __slots__ = ("done", "epoch", "mid", "qos")

    def __init__(self, mid: int, qos: int, epoch: int) -> None:
        self.mid = mid
        self.qos = qos
        self.epoch = epoch
        self.done = False


class AckTracker:
    """Orders and sends the acknowledgements of one client.

    Thread-safety: both run on the serving thread (paho's callbacks), but the
    state is guarded by one lock anyway, with ``send_ack`` called under it, so
    that a completion from any other thread could not reorder PUBACKs.
    """

    def __init__(self, send_ack: Callable[[int, int], object]) -> None:
        self._send_ack = send_ack
        self._lock = threading.Lock()
        self._pending: deque[Ticket] = deque()
        self._epoch = 0

    def new_epoch(self) -> int:
        """Forget every pending ticket (a connection ended, or began); returns the new epoch."""
        with self._lock:
            self._epoch += 1
            self._pending.clear()
            return self._epoch

    def register(self, mid: int, qos: int) -> Ticket:
        """Record a reading just received on the current connection."""
        with self._lock:
            ticket = Ticket(mid, qos, self._epoch)
            self._pending.append(ticket)
            return ticket

    def complete(self, ticket: Ticket) -> None:
        """Mark ``ticket`` answered and acknowledge every leading answered reading."""
        with self._lock:
            ticket.done = True
            if ticket.epoch != self._epoch:
                return
            pending = self._pending
            while pending and pending[0].done:
                head = pending.popleft()
                if head.qos > 0:
                    self._send_ack(head.mid, head.qos)

    @property
    def unacked(self) -> int:
        """Readings received on this connection and not yet acknowledged."""
        return len(self._pending)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every reading received is acknowledged; False at the timeout."""
        deadline = time.monotonic() + timeout
        while self._pending and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._pending


class Redeliveries:
    """Whether each connection's unacknowledged readings will be delivered again.

    Decided at the next CONNACK: they come again when the session survived
    (session present). Answers to those readings are then stale (see Outbox).
    """

    def __init__(self) -> None:
        self._redelivered: dict[int, bool] = {}  # epoch -> comes again
        self._decided_below = 0

    def decide(self, epoch: int, session_present: bool) -> None:
        """Every epoch before ``epoch`` ended; the new connection's CONNACK says how."""
        for old in range(self._decided_below, epoch):
            self._redelivered[old] = session_present
        self._decided_below = epoch
        for old in [e for e in self._redelivered if e < epoch - 1000]:
            del self._redelivered[old]

    def of(self, epoch: int) -> bool:
        return self._redelivered.get(epoch, False)
