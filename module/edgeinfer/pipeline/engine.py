"""The inference thread: micro-batches readings, runs the model, hands answers to the responder.

Threads, and what each one owns:

* the transport's thread calls :meth:`Engine.submit`; it only enqueues (and
  blocks while the queue is full: back-pressure, counted in the metrics,
  rather than a dropped reading).
* the engine thread owns the model being served, the decoder and the
  batching; inference never runs on the transport's thread.
* any thread may call :meth:`Engine.swap`; the engine thread takes the new
  model between two batches.

Batches close when ``max_batch`` readings are taken or ``max_delay_ms`` has
passed; :mod:`.runner` runs them in shape buckets along each input's batch
axis (a model that cannot be batched runs one reading at a time). Answers are
handed on in the order readings were taken from the queue, so results for one
topic keep the readings' order. Every reading gets exactly one answer: its
result, or its own error report; a failure of one reading never answers its
batch-mates with an error.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from edgeinfer.errors import ReadingError
from edgeinfer.loaded import LoadedModel
from edgeinfer.observability.metrics import Metrics
from edgeinfer.pipeline.batching import STOP, WAKE, ReadingQueue
from edgeinfer.pipeline.decode import Decoder, Reading
from edgeinfer.pipeline.encode import encode_result
from edgeinfer.pipeline.message import Message
from edgeinfer.pipeline.responder import Responder
from edgeinfer.pipeline.runner import Runner
from edgeinfer.runtimes.base import Value
from edgeinfer.topics import TopicTemplate, TopicTooLongError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineSettings:
    """The pipeline knobs the engine needs (from ``[pipeline]`` and ``[topics]``)."""

    max_batch: int
    max_delay_ms: float
    queue_size: int
    max_payload_bytes: int
    allow_non_finite: bool
    output: TopicTemplate
    module_id: str


@dataclass(frozen=True)
class BatchOutcome:
    """What one model run did, for the probation monitor."""

    active: LoadedModel
    readings: int
    failed: int  # readings answered with inference_failed
    non_finite: int  # readings whose outputs hold NaN or infinity
    seconds: float


class Engine:
    """Owns the reading queue and the thread that answers readings."""

    def __init__(
        self,
        active: LoadedModel,
        settings: EngineSettings,
        responder: Responder,
        metrics: Metrics,
    ) -> None:
        self._settings = settings
        self._responder = responder
        self._observers: list[Callable[[BatchOutcome], None]] = []
        self._metrics = metrics
        self._queue: ReadingQueue[Message] = ReadingQueue(settings.queue_size)
        # swap() leaves a model here; the engine thread takes it between batches.
        self._swap_lock = threading.Lock()
        self._pending: tuple[LoadedModel, threading.Event] | None = None
        self._thread = threading.Thread(target=self._loop, name="inference", daemon=True)
        self._closed = False
        self._use(active)
        metrics.queue_capacity.set(settings.queue_size)

    def _use(self, active: LoadedModel) -> None:
        self._active = active
        self._decoder = Decoder(
            active.model.inputs,
            self._settings.max_payload_bytes,
            self._settings.allow_non_finite,
            active.batch_axes,
        )
        self._max_batch = self._settings.max_batch if active.batch_axes.batchable else 1
        self._runner = Runner(self._max_batch, self._observe_run)

    @property
    def active(self) -> LoadedModel:
        """The model answering readings now."""
        return self._active

    @property
    def depth(self) -> int:
        """Readings waiting in the queue."""
        return self._queue.depth

    def swap(self, active: LoadedModel) -> threading.Event:
        """Serve ``active`` from the next batch on; the event is set once it is in use.

        Readings already queued are answered by the new model: none is dropped
        or answered twice. The old model stays loaded; its owner closes it
        once the event is set.
        """
        applied = threading.Event()
        with self._swap_lock:
            if self._pending is not None:
                self._pending[1].set()  # superseded before it was used
            self._pending = (active, applied)
        self._queue.wake()  # a busy engine looks at _pending anyway
        if not self._thread.is_alive():
            self._take_pending()
        return applied

    def _take_pending(self) -> None:
        with self._swap_lock:
            pending, self._pending = self._pending, None
        if pending is not None:
            self._use(pending[0])
            pending[1].set()

    def observe(self, observer: Callable[[BatchOutcome], None]) -> None:
        """Call ``observer`` (on the engine thread) with every batch's outcome; before start."""
        self._observers.append(observer)

    def start(self) -> None:
        self._thread.start()

    def submit(self, message: Message) -> None:
        """Enqueue one reading; blocks while the queue is full (transport thread)."""
        self._metrics.messages_received.inc()
        waited = self._queue.put(message)
        if waited:
            self._metrics.backpressure_waits.inc()
            self._metrics.backpressure_seconds.inc(waited)

    def drain(self, timeout: float) -> bool:
        """Answer everything queued, then stop the thread; True if it finished in time."""
        if not self._closed:
            self._closed = True
            self._queue.close()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # -- engine thread -------------------------------------------------------

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            self._take_pending()
            if first is STOP:
                return
            if first is WAKE or not isinstance(first, Message):
                continue
            batch = [first]
            stop = self._queue.fill(batch, self._max_batch, self._settings.max_delay_ms)
            self._answer_safely(batch)
            if stop:
                return

    def _answer_safely(self, batch: list[Message]) -> None:
        answered: set[int] = set()
        try:
            self._answer(batch, answered)
        except Exception:  # a bug here must not kill the only inference thread
            log.exception("unexpected failure answering %d readings", len(batch))
            for message in batch:
                if id(message) not in answered:
                    self._responder.error(
                        message,
                        ReadingError(
                            "internal_error",
                            "the module failed to answer this reading; see its log",
                        ),
                    )

    def _answer(self, batch: list[Message], answered: set[int]) -> None:
        active = self._active
        decoded: list[tuple[Message, Reading]] = []
        for message in batch:
            try:
                decoded.append((message, self._decoder.decode(message.payload)))
            except ReadingError as exc:
                answered.add(id(message))
                self._responder.error(message, exc)
            except Exception:  # a decoder bug: this reading's error, not its batch's
                log.exception("unexpected failure decoding a reading on %s", message.topic)
                answered.add(id(message))
                self._responder.error(message, _internal())
        if not decoded:
            return
        answers, stats = self._runner.answer(active, [r for _, r in decoded])
        now = time.perf_counter()
        for (message, reading), answer in zip(decoded, answers, strict=True):
            answered.add(id(message))
            if isinstance(answer, ReadingError):
                self._responder.error(message, answer)
            else:
                self._publish_result(active, message, reading, answer, now)
        outcome = BatchOutcome(active, len(decoded), stats.failed, stats.non_finite, stats.seconds)
        for observer in self._observers:
            observer(outcome)

    def _observe_run(self, seconds: float, readings: int) -> None:
        self._metrics.inference_seconds.observe(seconds)
        self._metrics.batch_size.observe(readings)

    def _publish_result(
        self,
        active: LoadedModel,
        message: Message,
        reading: Reading,
        outputs: dict[str, Value],
        now: float,
    ) -> None:
        try:
            topic = self._settings.output.render(message.topic, self._settings.module_id)
        except TopicTooLongError as exc:
            self._responder.error(message, ReadingError("bad_topic", str(exc), reading.id))
            return
        try:
            payload = encode_result(
                message.topic,
                active.identity,
                outputs,
                reading.id,
                reading.ts,
                (now - message.received) * 1000,
                active.label_rule,
            )
        except Exception:  # an encoder bug: this reading's error, not its batch's
            log.exception("unexpected failure encoding a result for %s", message.topic)
            self._responder.error(message, _internal(reading.id))
            return
        self._responder.result(message, topic, payload, reading.id)


def _internal(rid: object = None) -> ReadingError:
    return ReadingError(
        "internal_error", "the module failed to answer this reading; see its log", rid
    )
