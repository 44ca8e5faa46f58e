"""The reading queue, and when a batch is due.

Readings wait here between the transport, which adds them as they arrive, and
the engine, which takes them a batch at a time. A batch is due when
``max_batch`` readings are queued, when the oldest has waited ``max_delay_ms``
(0: at once, with whatever is queued), or when the queue is closing. The
capacity is a soft bound: at capacity the transport stops reading from the
broker (back-pressure through TCP and the broker's own queue) rather than drop a
reading; what it was already reading still goes in.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class ReadingQueue(Generic[T]):
    """A FIFO of readings with their arrival times. Thread-safe."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: deque[tuple[float, T]] = deque()
        self._lock = threading.Lock()

    @property
    def depth(self) -> int:
        return len(self._items)

    @property
    def full(self) -> bool:
        return len(self._items) >= self.capacity

    def put(self, item: T, arrived: float) -> None:
        """Add ``item``, which arrived at ``arrived`` (``time.perf_counter()``)."""
        with self._lock:
            self._items.append((arrived, item))

    def due(self, batch: int, max_delay_s: float) -> float | None:
        """Seconds until a batch of up to ``batch`` is due (0: now); None when empty."""
        with self._lock:
            if not self._items:
                return None
            if len(self._items) >= batch or max_delay_s <= 0:
                return 0.0
            oldest = self._items[0][0]
        return max(0.0, oldest + max_delay_s - time.perf_counter())

    def take(self, limit: int) -> list[T]:
        """Up to ``limit`` readings, oldest first."""
        with self._lock:
            count = min(limit, len(self._items))
            return [self._items.popleft()[1] for _ in range(count)]
