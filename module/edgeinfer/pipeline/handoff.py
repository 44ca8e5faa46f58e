"""Hand a value to the serving thread, to be taken between two batches.

The update thread offers a new model (or a rollout's route); the serving thread
takes it at its next turn, when no batch is running, and the event says so, so
the offerer may then close what it replaced. An offer not yet taken is
superseded by the next one (its event is set: it will never be used).
"""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

T = TypeVar("T")


class Handoff(Generic[T]):
    """At most one value waiting for the serving thread (thread-safe)."""

    def __init__(self, lock: threading.Lock) -> None:
        """``lock``: shared by the engine's hand-offs, so one turn takes them together."""
        self._lock = lock
        self._waiting: tuple[T, threading.Event] | None = None

    def offer(self, value: T) -> threading.Event:
        """Leave ``value`` for the next turn; the event is set once it is taken."""
        applied = threading.Event()
        with self._lock:
            if self._waiting is not None:
                self._waiting[1].set()  # superseded before it was used
            self._waiting = (value, applied)
        return applied

    @property
    def waiting(self) -> bool:
        return self._waiting is not None

    def take(self) -> tuple[T, threading.Event] | None:
        """The value waiting and its event, if any (the caller sets it once in use).
        Call with the shared lock held."""
        waiting, self._waiting = self._waiting, None
        return waiting
