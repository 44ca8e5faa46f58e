"""The engine: micro-batches readings, runs the model, hands answers to the responder.

It runs on the serving loop's thread (:mod:`.loop`), with the transport: the
transport calls :meth:`Engine.submit` as readings arrive, and the loop calls
:meth:`Engine.work` whenever :meth:`Engine.due` says a batch is due, between
network events. Any thread may call :meth:`Engine.swap` (the new model is taken
between two batches) or :meth:`Engine.drain`.

Batches close when ``max_batch`` readings are queued or ``max_delay_ms`` has
passed; :mod:`.runner` runs them in shape buckets along each input's batch
axis (a model that cannot be batched runs one reading at a time). A slow model
gets smaller batches, so that one run keeps the network waiting about
``pipeline.step_budget_ms`` at most (:mod:`.batchsize`); decoding a batch
stops at that budget too (an image may take up to its decoding budget,
:mod:`edgeinfer.vision.images`), and the
readings not yet decoded wait, ahead of the queue, for the next turn, so that a
batch of slow images never keeps the network (and the keepalive) waiting for more
than one of them. Answers are handed on in the order readings were
queued, so results for one topic keep the readings' order. Every reading gets
exactly one answer: its result, or its own error report; a failure of one
reading never answers its batch-mates with an error.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgeinfer.config import Config
from edgeinfer.config.sections import ImageLimits
from edgeinfer.errors import ReadingError
from edgeinfer.manifest.vision import CascadeSpec
from edgeinfer.model.loaded import LoadedModel
from edgeinfer.observability.metrics import Metrics
from edgeinfer.pipeline.batching import ReadingQueue
from edgeinfer.pipeline.batchsize import BatchSizer
from edgeinfer.pipeline.decode import Decoder, Reading
from edgeinfer.pipeline.delivery.routed import RoutedAnswers
from edgeinfer.pipeline.delivery.routing import Route
from edgeinfer.pipeline.encode import encode_result
from edgeinfer.pipeline.handoff import Handoff
from edgeinfer.pipeline.loop import ServingLoop
from edgeinfer.pipeline.message import Message
from edgeinfer.pipeline.responder import Responder
from edgeinfer.pipeline.runner import Runner, RunStats
from edgeinfer.pipeline.streams.journal import JOURNAL_NAME, Journal
from edgeinfer.pipeline.streams.windowed import WindowedAnswers
from edgeinfer.pipeline.vision_results import VisionResults
from edgeinfer.runtimes.base import Value
from edgeinfer.topics import TopicTemplate, TopicTooLongError, module_topic
from edgeinfer.vision.images import ImageGuard

log = logging.getLogger(__name__)

#: Why a reading posted over HTTP is not answered by a windowed model (also ``/predict``'s 409).
WINDOWED_POSTED = (
    "the model answers windows of a stream (manifest window or state): "
    "expected its samples over MQTT, one reading per sample"
)


@dataclass(frozen=True)
class EngineSettings:
    """The pipeline knobs the engine needs, built from the configuration by
    :meth:`from_config` (no defaults here: the configuration's are the only ones)."""

    max_batch: int
    max_delay_ms: float
    step_budget_s: float  # what one batch may keep the serving thread busy, decoding and running
    queue_size: int
    max_payload_bytes: int
    allow_non_finite: bool
    output: TopicTemplate
    module_id: str
    journal: Path | None  # the stream journal (windowed models); None: off
    journal_sync: str
    images: ImageLimits  # what an image reading may cost to decode
    cascade: CascadeSpec | None  # [cascade], over the manifest's

    @classmethod
    def from_config(cls, config: Config) -> EngineSettings:
        """``[pipeline]``, ``[topics]``, ``[streams]`` and ``[cascade]``, for the module."""
        pipeline = config.pipeline
        journal = Path(config.module.state_dir) / JOURNAL_NAME if config.streams.journal else None
        return cls(
            max_batch=pipeline.max_batch,
            max_delay_ms=pipeline.max_delay_ms,
            step_budget_s=pipeline.step_budget_ms / 1000,
            queue_size=pipeline.queue_size,
            max_payload_bytes=pipeline.max_payload_bytes,
            allow_non_finite=pipeline.allow_non_finite,
            output=config.topics.output_template,
            module_id=config.module.id,
            journal=journal,
            journal_sync=config.streams.journal_sync,
            images=pipeline.image_limits(),
            cascade=config.cascade.spec(),
        )


@dataclass(frozen=True)
class BatchOutcome:
    """What one model run did, for the probation monitor."""

    active: LoadedModel
    readings: int
    failed: int  # readings answered with inference_failed
    non_finite: int  # readings whose outputs hold NaN or infinity
    seconds: float


class Engine:
    """Owns the reading queue and answers its readings, a batch at a time."""

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
        # swap() and set_route() leave a model and a route here; work() takes them between
        # batches, together (one lock).
        self._swap_lock = threading.Lock()
        self._models: Handoff[LoadedModel] = Handoff(self._swap_lock)
        self._routes: Handoff[Route | None] = Handoff(self._swap_lock)
        self._loop: ServingLoop | None = None
        self._closed = False
        self._idle = threading.Event()
        self._idle.set()
        self._full_since: float | None = None
        self._full_lock = threading.Lock()  # submit may come from HTTP threads
        self._journal: Journal | None = None
        self._windowed: WindowedAnswers | None = None
        self._routed: RoutedAnswers | None = None  # a rollout's candidate, while one runs
        self._vision = VisionResults(
            responder,
            metrics,
            module_id=settings.module_id,
            cascade=settings.cascade,
            max_image_pixels=settings.images.max_pixels,
        )
        # One for the engine's life: a payload that overran is refused at once after a swap.
        self._images = ImageGuard(settings.images)
        # Readings taken from the queue whose decoding did not fit in the last step:
        # answered first, at the next turn (they came before anything still queued).
        self._held: list[Message] = []
        self._sizer = BatchSizer(settings.max_batch, 0.0, settings.step_budget_s)
        self._use(active)
        metrics.queue_capacity.set(settings.queue_size)

    def _use(self, active: LoadedModel) -> None:
        self._active = active
        self._decoder = self._decoder_for(active)
        max_batch = self._settings.max_batch if active.batch_axes.batchable else 1
        self._sizer = self._sizer.for_model(max_batch, active.row_seconds)
        self._runner = Runner(max_batch, self._observe_run)
        self._use_streams(active)

    def _decoder_for(self, active: LoadedModel) -> Decoder:
        return Decoder(
            active.model.inputs,
            self._settings.max_payload_bytes,
            self._settings.allow_non_finite,
            active.batch_axes,
            images=(self._vision.images(active)[0], self._images),
        )

    def _use_streams(self, active: LoadedModel) -> None:
        old, self._windowed = self._windowed, None
        plan = active.streams
        if plan is None:
            if old is not None:
                old.retire()
            return
        settings = self._settings
        if self._journal is None and settings.journal is not None:
            self._journal = Journal(settings.journal, settings.journal_sync)
        self._windowed = WindowedAnswers(
            plan,
            (settings.max_payload_bytes, settings.allow_non_finite),
            WindowedAnswers.template_output(settings.output, settings.module_id),
            self._responder,
            self._metrics,
            self._journal,
        )
        self._windowed.take_over(old)
        log.info("%s takes streams: %s", active.describe(), plan.describe())

    @property
    def active(self) -> LoadedModel:
        """The model answering readings now."""
        return self._active

    @property
    def depth(self) -> int:
        """Readings waiting in the queue (with those taken but not yet decoded)."""
        return self._queue.depth + len(self._held)

    def observe(self, observer: Callable[[BatchOutcome], None]) -> None:
        """Call ``observer`` (on the serving thread) with every batch's outcome; before start."""
        self._observers.append(observer)

    def swap(self, active: LoadedModel) -> threading.Event:
        """Serve ``active`` from the next batch on; the event is set once it is in use.

        Readings already queued are answered by the new model: none is dropped
        or answered twice. The old model stays loaded; its owner closes it
        once the event is set.
        """
        return self._hand_over(self._models.offer(active))

    def set_route(self, route: Route | None) -> threading.Event:
        """Load a rollout's candidate beside the active model (None: take it out).

        Taken between two batches; the event is set once it is in (or out of)
        use, so the caller may close a candidate it took out.
        """
        return self._hand_over(self._routes.offer(route))

    def _hand_over(self, applied: threading.Event) -> threading.Event:
        with self._swap_lock:
            loop = self._loop
        if loop is not None:
            loop.wake()  # taken at the loop's next turn
        else:
            self._take_pending()  # nothing is serving: no batch can be running
        return applied

    @property
    def route(self) -> Route | None:
        """The rollout's route in use, if any."""
        return self._routed.route if self._routed is not None else None

    def submit(self, message: Message) -> None:
        """Queue one reading (the transport, on the serving thread; or any thread)."""
        self._metrics.messages_received.inc()
        # Not idle before it is queued: the serving thread may answer it (and set idle)
        # before this thread gets on, when the reading comes from another (HTTP) thread.
        self._idle.clear()
        self._queue.put(message, message.received)
        if self._full_since is None and self._queue.full:  # the lock only when it may be
            with self._full_lock:
                if self._full_since is None and self._queue.full:
                    # The transport stops reading until there is room again.
                    self._full_since = time.perf_counter()
                    self._metrics.backpressure_waits.inc()
        loop = self._loop
        if loop is not None and not loop.on_loop_thread():
            loop.wake()

    def drain(self, timeout: float) -> bool:
        """Answer everything queued without waiting for more; True if done within ``timeout``.

        The serving loop does the answering; without one, the caller's thread does.
        """
        self._closed = True
        loop = self._loop
        if loop is None:
            while self.due() == 0:
                self.work()
            return self.depth == 0
        loop.wake()
        return self._idle.wait(timeout)

    def close(self) -> None:
        """Write what the stream journal still holds (answered windows) and close it; after
        the loop and the transport have stopped."""
        if self._journal is not None:
            self._journal.commit()
            self._journal.close()
            self._journal = None

    # -- the serving loop (Worker) ---------------------------------------------

    def attach(self, loop: ServingLoop) -> None:
        with self._swap_lock:
            self._loop = loop

    def detach(self) -> None:
        with self._swap_lock:
            self._loop = None
        self._take_pending()

    @property
    def has_room(self) -> bool:
        return not self._queue.full

    def due(self) -> float | None:
        """Seconds until a batch is due (0: now); None when nothing is queued."""
        if self._models.waiting or self._routes.waiting or self._held:
            return 0.0
        delay = 0.0 if self._closed else self._settings.max_delay_ms / 1000
        due = self._queue.due(self._sizer.limit(), delay)
        if self._windowed is not None:
            other = self._windowed.due()
            if other is not None:
                due = other if due is None else min(due, other)
        return due

    def work(self) -> None:
        """Take a waiting model, then answer one batch."""
        self._take_pending()
        batch, self._held = self._held or self._queue.take(self._sizer.limit()), []
        if batch:
            self._answer_safely(batch)
        elif self._windowed is not None:
            self._work_windows(self._windowed)
        if self._full_since is not None:
            with self._full_lock:
                if self._full_since is not None and not self._queue.full:
                    seconds = time.perf_counter() - self._full_since
                    self._metrics.backpressure_seconds.inc(seconds)
                    self._full_since = None
        if self.depth == 0:
            self._idle.set()

    def _take_pending(self) -> None:
        with self._swap_lock:
            pending = self._models.take()
            route = self._routes.take()
        if route is not None:
            self._routed = self._routing(route[0])
        if pending is not None:
            self._use(pending[0])
        for done in (pending, route):
            if done is not None:
                done[1].set()

    def _routing(self, route: Route | None) -> RoutedAnswers | None:
        if route is None:
            return None
        batchable = route.candidate.batch_axes.batchable
        settings = self._settings
        return RoutedAnswers(
            route,
            # The candidate's runs are not the active model's: they do not size its batches.
            Runner(settings.max_batch if batchable else 1, self._observe_candidate_run),
            self._publish_result,
            self._responder.error,
            lambda topic, payload: self._responder.shadow(
                module_topic(settings.module_id, f"shadow/{topic}"), payload
            ),
            self._observe_outcome,
        )

    def _answer_safely(self, batch: list[Message]) -> None:
        answered: set[int] = set()
        try:
            self._answer(batch, answered)
        except Exception:  # a bug here must not stop the serving loop
            log.exception("unexpected failure answering %d readings", len(batch))
            held = {id(message) for message in self._held}  # still to be answered
            for message in batch:
                if id(message) not in answered and id(message) not in held:
                    self._responder.error(message, ReadingError.internal())

    def _work_windows(self, windowed: WindowedAnswers) -> None:
        active = self._active
        try:
            count, stats = windowed.work(active, self._runner)
        except Exception:  # a bug here must not stop the serving loop
            log.exception("unexpected failure answering windows")
            return
        self._observe_outcome(active, count, stats)

    def _refuse_posted(self, batch: list[Message], answered: set[int]) -> list[Message]:
        """Readings posted over HTTP that a swap to a windowed model overtook: a window's
        samples come from a stream, which one request is not (``/predict`` refuses them
        up front; these were queued before the swap)."""
        for message in batch:
            if message.reply is not None:
                answered.add(id(message))
                self._responder.error(message, ReadingError("windowed_model", WINDOWED_POSTED))
        return [m for m in batch if m.reply is None]

    def _observe_outcome(self, active: LoadedModel, count: int, stats: RunStats) -> None:
        if not count:
            return
        outcome = BatchOutcome(active, count, stats.failed, stats.non_finite, stats.seconds)
        for observer in self._observers:
            observer(outcome)

    def _answer(self, batch: list[Message], answered: set[int]) -> None:
        active = self._active
        if self._windowed is not None:
            batch = self._refuse_posted(batch, answered)
            count, stats = self._windowed.answer(active, self._runner, batch, answered)
            self._observe_outcome(active, count, stats)
            return
        decoded: list[tuple[Message, Reading]] = []
        began = time.perf_counter()
        for n, message in enumerate(batch):
            if n and time.perf_counter() - began > self._settings.step_budget_s:
                # The network has waited long enough: the rest at the next turn.
                self._held = batch[n:]
                batch = batch[:n]
                break
            try:
                decoded.append((message, self._decoder.decode(message.payload)))
            except ReadingError as exc:
                answered.add(id(message))
                self._responder.error(message, exc)
            except Exception:  # a decoder bug: this reading's error, not its batch's
                log.exception("unexpected failure decoding a reading on %s", message.topic)
                answered.add(id(message))
                self._responder.error(message, ReadingError.internal())
        self._sizer.decoded((time.perf_counter() - began) / max(1, len(batch)))
        if not decoded:
            return
        if self._routed is not None:
            # Mirrored runs stop before the queue fills: they must never cost back-pressure.
            backlog = self._queue.depth * 2 >= self._queue.capacity
            self._routed.answer(active, self._runner, decoded, backlog, answered)
            return
        answers, stats = self._runner.answer(active, [r for _, r in decoded])
        now = time.perf_counter()
        for (message, reading), answer in zip(decoded, answers, strict=True):
            answered.add(id(message))
            if isinstance(answer, ReadingError):
                self._responder.error(message, answer)
            else:
                self._publish_result(active, message, reading, answer, now)
        self._observe_outcome(active, len(decoded), stats)

    def _observe_candidate_run(self, seconds: float, readings: int) -> None:
        """A model run in the metrics (a candidate's runs do not size the active's batches)."""
        self._metrics.inference_seconds.observe(seconds)
        self._metrics.batch_size.observe(readings)

    def _observe_run(self, seconds: float, readings: int) -> None:
        self._observe_candidate_run(seconds, readings)
        self._sizer.ran(seconds, readings)

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
            shown, fields, rid = self._vision.finish(active, message, reading, outputs)
            payload = encode_result(
                message.topic,
                active.identity,
                shown,
                rid,
                reading.ts,
                (now - message.received) * 1000,
                fields,
            )
        except Exception:  # an encoder bug: this reading's error, not its batch's
            log.exception("unexpected failure encoding a result for %s", message.topic)
            self._responder.error(message, ReadingError.internal(reading.id))
            return
        self._responder.result(message, topic, payload, reading.id)
