"""The serving loop on its own: calls from other threads, a failing call, stopping."""

from __future__ import annotations

import threading

import pytest

from edgeinfer.pipeline.loop import ServingLoop


class Idle:
    """A worker with nothing to do that records which thread attached it."""

    def __init__(self) -> None:
        self.attached = False
        self.detached = threading.Event()

    @property
    def has_room(self) -> bool:
        return True

    def due(self) -> float | None:
        return None

    def work(self) -> None:
        raise AssertionError("nothing is ever due")

    def attach(self, loop: ServingLoop) -> None:
        self.attached = True

    def detach(self) -> None:
        self.detached.set()


def test_calls_from_other_threads_run_on_the_loop_thread_in_order_and_a_failure_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    worker = Idle()
    loop = ServingLoop(worker)
    loop.start()
    seen: list[tuple[str, int | None]] = []
    done = threading.Event()

    def boom() -> None:
        raise RuntimeError("a caller's bug")

    loop.call_soon(lambda: seen.append(("first", threading.get_ident())))
    loop.call_soon(boom)
    loop.call_soon(lambda: (seen.append(("second", threading.get_ident())), done.set()))
    assert done.wait(5)
    assert [name for name, _ in seen] == ["first", "second"]
    assert {ident for _, ident in seen} == {loop.ident}
    assert "a call on the serving loop failed" in caplog.text
    assert worker.attached
    assert loop.stop(5)
    assert worker.detached.is_set()
    loop.close()
