"""The engine in-process: a fake runtime and a fake publisher, no broker, no paho."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from edgeinfer.errors import ModelError
from edgeinfer.manifest.document import Manifest
from edgeinfer.model.loaded import LoadedModel
from edgeinfer.observability.metrics import Metrics
from edgeinfer.pipeline.engine import BatchOutcome, Engine
from edgeinfer.pipeline.loop import ServingLoop
from edgeinfer.pipeline.message import Message
from edgeinfer.pipeline.responder import Responder
from edgeinfer.runtimes.base import Array, TensorSpec
from edgeinfer.runtimes.fake import FakeModel, sum_model
from tests.fakes import FakePublisher, engine_settings


class Acks:
    """The ``done`` callbacks of messages, in the order they were called."""

    def __init__(self) -> None:
        self.done: list[str] = []

    def message(self, topic: str, payload: bytes) -> Message:
        return Message(topic, payload, time.perf_counter(), lambda: self.done.append(topic))


_loops: list[ServingLoop] = []


def serve(engine: Engine) -> ServingLoop:
    """The engine on a serving loop of its own (no transport), stopped after the test."""
    loop = ServingLoop(engine)
    loop.start()
    _loops.append(loop)
    return loop


@pytest.fixture(autouse=True)
def _stop_loops() -> Iterator[None]:
    yield
    while _loops:
        loop = _loops.pop()
        assert loop.stop(5)
        loop.close()


def loaded(model: FakeModel, version: str = "1") -> LoadedModel:
    return LoadedModel(model, Manifest("fake", version), Path("fake"), "")


def engine_for(
    model: FakeModel,
    publisher: FakePublisher,
    max_batch: int = 8,
    max_delay_ms: float = 0.0,
    row_seconds: float = 0.0,
    step_budget_s: float = 0.25,
) -> tuple[Engine, Metrics]:
    metrics = Metrics()
    settings = engine_settings(
        max_batch=max_batch,
        max_delay_ms=max_delay_ms,
        step_budget_s=step_budget_s,
        queue_size=64,
        max_payload_bytes=10_000,
    )
    responder = Responder(publisher, metrics, "edgeinfer/m/errors")
    timed = dataclasses.replace(loaded(model), row_seconds=row_seconds)
    return Engine(timed, settings, responder, metrics), metrics


def reading(i: int, row: list[float] | None = None) -> bytes:
    return orjson.dumps({"id": i, "features": row or [i, 1.0, 2.0]})


def test_queued_readings_are_answered_in_one_batch_in_arrival_order() -> None:
    model = sum_model()
    publisher = FakePublisher()
    engine, metrics = engine_for(model, publisher)
    acks = Acks()
    for i in range(5):  # queued before the loop starts: one batch
        engine.submit(acks.message(f"s/{i}", reading(i)))
    serve(engine)
    assert engine.drain(5)
    assert model.batches == [5]
    assert [(t, d["id"], d["outputs"]) for t, d in publisher.sent] == [
        (f"out/s/{i}", i, {"y": [[i + 3.0]]}) for i in range(5)
    ]
    assert acks.done == [f"s/{i}" for i in range(5)]
    assert metrics.results_published._value.get() == 5


def test_batches_close_at_max_batch() -> None:
    model = sum_model()
    engine, _ = engine_for(model, FakePublisher(), max_batch=2)
    acks = Acks()
    for i in range(5):
        engine.submit(acks.message("s", reading(i)))
    serve(engine)
    assert engine.drain(5)
    assert model.batches == [2, 2, 1]


def test_a_slow_model_gets_batches_that_keep_each_run_near_the_step_budget() -> None:
    """One run blocks the serving loop (and so the network): a slow model must not run a
    full batch, or the broker would drop the connection for a missed keepalive."""

    def slow(feeds: Mapping[str, Array]) -> dict[str, Array]:
        x = np.asarray(feeds["x"])
        time.sleep(0.04 * len(x))
        return {"y": x.sum(axis=1, keepdims=True)}

    model = FakeModel(sum_model().inputs, sum_model().outputs, slow)
    # As admission times it with the self-test.
    engine, _ = engine_for(
        model, FakePublisher(), max_batch=32, row_seconds=0.04, step_budget_s=0.1
    )
    for i in range(9):
        engine.submit(Acks().message("s", reading(i)))
    serve(engine)
    assert engine.drain(10)
    assert sum(model.batches) == 9
    assert max(model.batches) <= 3  # 0.1 s budget / 0.04 s a reading, give or take


def test_slow_decoding_counts_in_the_batch_size_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """Images take milliseconds each to decode (a large PNG, a quarter second): a batch
    of them must keep its step near the budget as a slow model's does."""
    from edgeinfer.pipeline.decode import Decoder

    decode = Decoder.decode

    def slow_decode(self: Decoder, payload: bytes) -> Any:
        time.sleep(0.02)
        return decode(self, payload)

    monkeypatch.setattr(Decoder, "decode", slow_decode)
    model = sum_model()  # a fast model: only decoding is slow
    engine, _ = engine_for(
        model, FakePublisher(), max_batch=32, row_seconds=1e-5, step_budget_s=0.1
    )
    for i in range(40):
        engine.submit(Acks().message("s", reading(i)))
    serve(engine)
    assert engine.drain(10)
    assert sum(model.batches) == 40
    assert model.batches[0] <= 6  # decoding stops at the step budget, even before it is timed
    assert max(model.batches[1:]) <= 6  # then 0.1 s / 0.02 s a reading, give or take


def test_a_reading_of_the_wrong_shape_gets_its_own_error_and_its_batch_mates_their_results() -> (
    None
):
    model = sum_model()
    publisher = FakePublisher()
    engine, metrics = engine_for(model, publisher)
    acks = Acks()
    engine.submit(acks.message("s/a", reading(1)))
    engine.submit(acks.message("s/b", orjson.dumps({"id": 2, "features": [1.0, 2.0]})))
    engine.submit(acks.message("s/c", reading(3)))
    serve(engine)
    assert engine.drain(5)
    assert model.batches == [2]
    topics = [(t, d["id"]) for t, d in publisher.sent]
    assert topics == [("edgeinfer/m/errors", 2), ("out/s/a", 1), ("out/s/c", 3)]
    error = publisher.sent[0][1]
    assert error == {
        "topic": "s/b",
        "error": "wrong_shape",
        "reason": "input 'x' got shape [2] (2 values): expected 3 values shaped [3]",
        "id": 2,
    }
    assert sorted(acks.done) == ["s/a", "s/b", "s/c"]
    assert metrics.reading_errors.labels("wrong_shape")._value.get() == 1


def failing_on(bad: float) -> FakeModel:
    """A sum model that fails any batch holding a row whose first value is ``bad``."""

    def run(feeds: Mapping[str, Array]) -> dict[str, Array]:
        x = np.asarray(feeds["x"])
        if (x[:, 0] == bad).any():
            raise ModelError(f"cannot handle {bad}")
        return {"y": x.sum(axis=1, keepdims=True)}

    spec = sum_model()
    return FakeModel(spec.inputs, spec.outputs, run)


def test_a_reading_the_model_fails_on_does_not_fail_its_batch_mates() -> None:
    model = failing_on(13.0)
    publisher = FakePublisher()
    engine, _ = engine_for(model, publisher)
    outcomes: list[BatchOutcome] = []
    engine.observe(outcomes.append)
    acks = Acks()
    for i in (11, 12, 13, 14):
        engine.submit(acks.message(f"s/{i}", reading(i)))
    serve(engine)
    assert engine.drain(5)
    assert model.batches == [4, 1, 1, 1, 1]  # the batch failed, then one by one
    answers = {d["id"]: (t, d) for t, d in publisher.sent}
    assert answers[13][0] == "edgeinfer/m/errors"
    assert answers[13][1]["error"] == "inference_failed"
    assert answers[13][1]["reason"] == "cannot handle 13.0"
    assert [answers[i][1]["outputs"] for i in (11, 12, 14)] == [
        {"y": [[14.0]]},
        {"y": [[15.0]]},
        {"y": [[17.0]]},
    ]
    assert len(acks.done) == 4
    assert [(o.readings, o.failed) for o in outcomes] == [(4, 1)]


def test_a_swap_takes_effect_between_batches_and_every_reading_is_answered_once() -> None:
    gate = threading.Event()
    entered = threading.Event()

    def slow(feeds: Mapping[str, Array]) -> dict[str, Array]:
        entered.set()
        gate.wait(5)
        return {"y": np.asarray(feeds["x"]).sum(axis=1, keepdims=True)}

    first = FakeModel(sum_model().inputs, sum_model().outputs, slow)
    second = sum_model()
    publisher = FakePublisher()
    engine, _ = engine_for(first, publisher, max_batch=1)
    acks = Acks()
    serve(engine)
    engine.submit(acks.message("s", reading(1)))
    assert entered.wait(5)  # reading 1 is running on the first model
    engine.submit(acks.message("s", reading(2)))
    applied = engine.swap(loaded(second, "2"))
    assert not applied.is_set()  # not while a batch of the old model runs
    gate.set()
    assert applied.wait(5)
    engine.submit(acks.message("s", reading(3)))
    assert engine.drain(5)
    versions = {d["id"]: d["version"] for _, d in publisher.sent}
    assert versions == {1: "1", 2: "2", 3: "2"}
    assert acks.done == ["s", "s", "s"]
    assert engine.active.identity.version == "2"


def test_drain_answers_everything_queued_and_acks_wait_for_the_broker() -> None:
    publisher = FakePublisher(hold=True)
    engine, metrics = engine_for(sum_model(), publisher, max_batch=4)
    acks = Acks()
    serve(engine)
    for i in range(10):
        engine.submit(acks.message(f"s/{i}", reading(i)))
    assert engine.drain(5)
    assert len(publisher.sent) == 10
    assert acks.done == []  # nothing is acknowledged before the broker has the answer
    publisher.release()
    assert len(acks.done) == 10
    assert metrics.results_published._value.get() == 10


def test_an_output_topic_longer_than_mqtt_allows_is_that_readings_error() -> None:
    publisher = FakePublisher()
    engine, _ = engine_for(sum_model(), publisher)
    acks = Acks()
    engine.submit(acks.message("s/ok", reading(1)))
    engine.submit(acks.message("s/" + "x" * 70_000, reading(2)))
    serve(engine)
    assert engine.drain(5)
    answers = {d["id"]: (t, d) for t, d in publisher.sent}
    assert answers[1][0] == "out/s/ok"
    assert answers[2][0] == "edgeinfer/m/errors"
    assert answers[2][1]["error"] == "bad_topic"
    assert "expected at most 65535" in str(answers[2][1]["reason"])
    assert len(acks.done) == 2


def test_a_model_without_a_dynamic_batch_runs_one_reading_at_a_time() -> None:
    fixed = FakeModel(
        (TensorSpec("x", np.dtype(np.float32), (1, 3)),),
        (TensorSpec("y", np.dtype(np.float32), (1, 1)),),
        lambda feeds: {"y": np.asarray(feeds["x"]).sum(axis=1, keepdims=True)},
    )
    engine, _ = engine_for(fixed, FakePublisher())
    acks = Acks()
    for i in range(3):
        engine.submit(acks.message("s", reading(i)))
    serve(engine)
    assert engine.drain(5)
    assert fixed.batches == [1, 1, 1]


def test_with_no_max_delay_a_reading_is_run_at_once_without_waiting_for_more() -> None:
    model = sum_model()
    engine, _ = engine_for(model, FakePublisher(), max_batch=8, max_delay_ms=0)
    acks = Acks()
    serve(engine)
    engine.submit(acks.message("s", reading(0)))
    assert wait_until(lambda: model.batches == [1])
    engine.submit(acks.message("s", reading(1)))
    assert engine.drain(5)
    assert model.batches == [1, 1]


def test_max_delay_holds_a_batch_open_for_readings_that_come_soon_after() -> None:
    model = sum_model()
    engine, _ = engine_for(model, FakePublisher(), max_batch=8, max_delay_ms=500)
    acks = Acks()
    serve(engine)
    engine.submit(acks.message("s", reading(0)))
    time.sleep(0.02)
    engine.submit(acks.message("s", reading(1)))
    assert engine.drain(5)
    assert model.batches == [2]


def wait_until(predicate: Callable[[], bool], timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.005)
    return predicate()
