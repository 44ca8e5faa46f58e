"""The inference thread: micro-batches readings, runs the model, publishes answers.

Threads, and what each one owns:

* paho's network thread calls :meth:`Engine.submit`; it only enqueues (and
  blocks while the queue is full: back-pressure, counted in the metrics,
  rather than a dropped reading).
* the engine thread owns the model, the decoder and the batching; inference
  never runs on the network thread.

Batches close when ``max_batch`` readings are taken or ``max_delay_ms`` has
passed (0: take what is already queued, add no wait). Only models whose
inputs all have a dynamic batch dimension are batched. Answers are published
in the order readings were taken from the queue, so results for one topic keep
the readings' order.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from edgeinfer.active import ActiveModel
from edgeinfer.errors import ModelError, ReadingError
from edgeinfer.mqtt.acks import Ticket
from edgeinfer.mqtt.connection import Incoming
from edgeinfer.mqtt.topics import OutputTopics
from edgeinfer.observability.metrics import Metrics
from edgeinfer.pipeline.decode import Decoder, Reading
from edgeinfer.pipeline.encode import encode_error, encode_result
from edgeinfer.runtimes.base import Array, Model, batchable

log = logging.getLogger(__name__)


class Publisher(Protocol):
    """Where answers go; ``on_done`` runs once the broker has the message."""

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        on_done: Callable[[], None] | None = None,
    ) -> None: ...


@dataclass(frozen=True)
class EngineSettings:
    """The pipeline knobs the engine needs (from ``[pipeline]`` and ``[topics]``)."""

    max_batch: int
    max_delay_ms: float
    queue_size: int
    max_payload_bytes: int
    allow_non_finite: bool
    output_template: str
    output_qos: int
    errors_topic: str
    module_id: str


@dataclass
class _Job:
    msg: Incoming
    received: float  # time.perf_counter() at arrival


@dataclass(frozen=True)
class BatchOutcome:
    """What one model run did, for the probation monitor."""

    active: ActiveModel
    readings: int
    failed: int  # readings answered with inference_failed
    non_finite: int  # readings whose outputs hold NaN or infinity
    seconds: float


_WAKE = object()  # queued by swap() so an idle engine switches models at once


class Engine:
    """Owns the reading queue and the thread that answers readings."""

    def __init__(
        self,
        active: ActiveModel,
        settings: EngineSettings,
        publisher: Publisher,
        on_answered: Callable[[Ticket], None],
        metrics: Metrics,
        on_batch: Callable[[BatchOutcome], None] | None = None,
    ) -> None:
        self._settings = settings
        self._publisher = publisher
        self._on_answered = on_answered
        self._on_batch = on_batch
        self._metrics = metrics
        self._topics = OutputTopics(settings.output_template, settings.module_id)
        self._queue: queue.Queue[_Job | object | None] = queue.Queue(settings.queue_size)
        # swap() hands a model over; the engine thread takes it between batches.
        self._swap_lock = threading.Lock()
        self._pending: tuple[ActiveModel, threading.Event] | None = None
        self._thread = threading.Thread(target=self._loop, name="inference", daemon=True)
        self._closed = False
        self._use(active)
        metrics.queue_capacity.set(settings.queue_size)

    def _use(self, active: ActiveModel) -> None:
        self._active = active
        self._decoder = Decoder(
            active.model.inputs, self._settings.max_payload_bytes, self._settings.allow_non_finite
        )
        self._max_batch = self._settings.max_batch if batchable(active.model) else 1

    @property
    def active(self) -> ActiveModel:
        return self._active

    def swap(self, active: ActiveModel) -> threading.Event:
        """Serve ``active`` from the next batch on; the event is set once it is in use.

        Readings already queued are answered by the new model: none is dropped
        or answered twice. The old model stays loaded; its owner closes it.
        """
        applied = threading.Event()
        with self._swap_lock:
            if self._pending is not None:
                self._pending[1].set()  # superseded before it was used
            self._pending = (active, applied)
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(_WAKE)  # a busy engine looks at _pending anyway
        if not self._thread.is_alive():
            self._take_pending()
        return applied

    def _take_pending(self) -> None:
        with self._swap_lock:
            pending, self._pending = self._pending, None
        if pending is not None:
            self._use(pending[0])
            pending[1].set()

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        self._thread.start()

    def submit(self, msg: Incoming) -> None:
        """Enqueue one reading; blocks while the queue is full (network thread)."""
        self._metrics.messages_received.inc()
        job = _Job(msg, time.perf_counter())
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self._metrics.backpressure_waits.inc()
            started = time.perf_counter()
            self._queue.put(job)
            self._metrics.backpressure_seconds.inc(time.perf_counter() - started)

    def drain(self, timeout: float) -> bool:
        """Answer everything queued, then stop the thread; True if it finished in time."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # -- engine thread -------------------------------------------------------

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            self._take_pending()
            if first is None:
                return
            if not isinstance(first, _Job):
                continue  # a wake-up from swap()
            jobs = [first]
            stop = self._fill(jobs)
            try:
                self._answer(jobs)
            except Exception:  # a bug here must not kill the only inference thread
                log.exception("unexpected failure answering %d readings", len(jobs))
                for job in jobs:
                    self._reject(
                        job,
                        ReadingError(
                            "internal_error",
                            "the module failed to answer this reading; see its log",
                        ),
                    )
            if stop:
                return

    def _fill(self, jobs: list[_Job]) -> bool:
        """Add queued readings to ``jobs`` up to the batch size; True when the stop marker came."""
        limit = self._max_batch
        deadline = time.perf_counter() + self._settings.max_delay_ms / 1000
        while len(jobs) < limit:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    job = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            if job is None:
                return True
            if isinstance(job, _Job):
                jobs.append(job)
        return False

    def _answer(self, jobs: list[_Job]) -> None:
        active = self._active
        decoded: list[tuple[_Job, Reading]] = []
        for job in jobs:
            try:
                decoded.append((job, self._decoder.decode(job.msg.payload)))
            except ReadingError as exc:
                self._reject(job, exc)
        if not decoded:
            return
        started = time.perf_counter()
        try:
            outputs = self._run(active.model, [r for _, r in decoded])
        except ModelError as exc:
            failed = 0
            if len(decoded) == 1:
                self._reject(decoded[0][0], ReadingError("inference_failed", str(exc)))
                failed = 1
            else:
                # One bad reading must not fail its batch-mates: answer one by one.
                for job, reading in decoded:
                    try:
                        self._publish_results(
                            active, [(job, reading)], self._run(active.model, [reading])
                        )
                    except ModelError as single:
                        self._reject(job, ReadingError("inference_failed", str(single)))
                        failed += 1
            self._report(active, len(decoded), failed, 0, time.perf_counter() - started)
            return
        elapsed = time.perf_counter() - started
        self._publish_results(active, decoded, outputs)
        self._report(active, len(decoded), 0, _non_finite_rows(outputs), elapsed)

    def _report(
        self, active: ActiveModel, readings: int, failed: int, non_finite: int, seconds: float
    ) -> None:
        if self._on_batch is not None:
            self._on_batch(BatchOutcome(active, readings, failed, non_finite, seconds))

    def _run(self, model: Model, readings: list[Reading]) -> dict[str, Array]:
        if len(readings) == 1:
            feeds = readings[0].feeds
        else:
            feeds = {
                name: np.concatenate([r.feeds[name] for r in readings])
                for name in readings[0].feeds
            }
        started = time.perf_counter()
        outputs = model.run(feeds)
        self._metrics.inference_seconds.observe(time.perf_counter() - started)
        self._metrics.batch_size.observe(len(readings))
        return outputs

    def _publish_results(
        self, active: ActiveModel, decoded: list[tuple[_Job, Reading]], outputs: dict[str, Array]
    ) -> None:
        start = 0
        now = time.perf_counter()
        for job, reading in decoded:
            end = start + reading.rows
            sliced = {name: value[start:end] for name, value in outputs.items()}
            start = end
            payload = encode_result(
                job.msg.topic,
                active.identity,
                sliced,
                reading.id,
                reading.ts,
                (now - job.received) * 1000,
            )
            self._publisher.publish(
                self._topics.render(job.msg.topic),
                payload,
                qos=self._settings.output_qos,
                on_done=self._done_callback(job, answered=True),
            )

    def _reject(self, job: _Job, error: ReadingError) -> None:
        self._metrics.reading_errors.labels(error.code).inc()
        log.warning("rejected reading on %s: %s", job.msg.topic, error)
        rid = _reading_id(job.msg.payload)
        payload = encode_error(job.msg.topic, error.code, error.reason, rid)
        self._publisher.publish(
            self._settings.errors_topic,
            payload,
            qos=1,
            on_done=self._done_callback(job, answered=False),
        )

    def _done_callback(self, job: _Job, answered: bool) -> Callable[[], None]:
        # Capture the ticket and the arrival time, not the job: an answer can
        # wait long for its PUBACK (a backlog after a restart), and holding
        # the reading's payload that long multiplied memory by its size.
        ticket = job.msg.ticket
        received = job.received

        def done() -> None:
            if answered:
                self._metrics.results_published.inc()
            self._metrics.end_to_end_seconds.observe(time.perf_counter() - received)
            self._on_answered(ticket)

        return done


def _non_finite_rows(outputs: dict[str, Array]) -> int:
    """How many rows of the batch have a NaN or infinity in any float output."""
    bad: npt.NDArray[np.bool_] | None = None
    for value in outputs.values():
        arr = np.asarray(value)
        if arr.dtype.kind not in "fc" or arr.ndim == 0:
            continue
        rows: npt.NDArray[np.bool_] = np.asarray(
            ~np.isfinite(arr.reshape(len(arr), -1)).all(axis=1)
        )
        bad = rows if bad is None or bad.shape != rows.shape else bad | rows
    return int(bad.sum()) if bad is not None else 0


def _reading_id(payload: bytes) -> object:
    """The ``id`` of a rejected reading, when it can still be read."""
    import orjson

    if len(payload) > 1_048_576 or not payload.startswith(b"{"):
        return None
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return doc.get("id") if isinstance(doc, dict) else None
