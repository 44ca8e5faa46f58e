"""Fakes for unit tests of one stage: a publisher that records (the runtime fake is
``edgeinfer.runtimes.fake``, which the package ships for its in-process engine tests)."""

from __future__ import annotations

import threading

import orjson

from edgeinfer.pipeline.message import Outcome


class FakePublisher:
    """Records what is published; the broker accepts everything at once unless held."""

    def __init__(self, hold: bool = False) -> None:
        self.sent: list[tuple[str, dict[str, object]]] = []
        self.pending: list[Outcome] = []
        self.hold = hold
        self.lock = threading.Lock()

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        on_done: Outcome | None = None,
        token: object = None,
    ) -> None:
        with self.lock:
            self.sent.append((topic, orjson.loads(payload)))
        if on_done is not None:
            if self.hold:
                self.pending.append(on_done)
            else:
                on_done(None)

    def release(self) -> None:
        for outcome in self.pending:
            outcome(None)
        self.pending.clear()
