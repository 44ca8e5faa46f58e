"""The reading queue and how a batch is taken from it.

A batch closes when ``limit`` readings are taken or ``max_delay_ms`` has
passed since the first (0: take what is already queued, add no wait). The
queue is bounded: a full queue blocks the producer (back-pressure to the
broker) instead of dropping a reading.
"""

from __future__ import annotations

import contextlib
import queue
import time
from typing import Generic, TypeVar, cast

T = TypeVar("T")

#: Put by :meth:`ReadingQueue.close`: the consumer stops after the readings before it.
STOP = object()
#: Put by :meth:`ReadingQueue.wake`: the consumer looks at its mailbox (a model swap).
WAKE = object()


class ReadingQueue(Generic[T]):
    """A bounded FIFO of readings plus the two control markers."""

    def __init__(self, size: int) -> None:
        self._queue: queue.Queue[T | object] = queue.Queue(size)

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def put(self, item: T) -> float:
        """Enqueue ``item``; returns the seconds spent waiting for room (0.0 when none)."""
        try:
            self._queue.put_nowait(item)
            return 0.0
        except queue.Full:
            started = time.perf_counter()
            self._queue.put(item)
            return max(time.perf_counter() - started, 1e-9)

    def wake(self) -> None:
        """Nudge an idle consumer; a full queue needs none (the consumer is busy)."""
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(WAKE)

    def close(self) -> None:
        """Ask the consumer to stop once everything queued before now is taken."""
        self._queue.put(STOP)

    def get(self) -> T | object:
        """The next item, a reading or a marker; blocks while empty."""
        return self._queue.get()

    def fill(self, batch: list[T], limit: int, max_delay_ms: float) -> bool:
        """Add queued readings to ``batch`` up to ``limit``; True when STOP came.

        Waits at most ``max_delay_ms`` after the call for more readings.
        """
        deadline = time.perf_counter() + max_delay_ms / 1000
        while len(batch) < limit:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    item = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            if item is STOP:
                return True
            if item is not WAKE:
                batch.append(cast(T, item))
        return False
