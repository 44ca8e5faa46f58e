"""Answering a windowed model: samples in, one result per window out.

The engine hands each batch of readings here when its model has a stream plan.
Each reading is decoded as samples (:meth:`StreamPlan.sample_spec`), added to
its stream (:mod:`.streams`), journalled, and acknowledged once the journal
has committed it (one group commit per batch), not when its window is
answered: acknowledgements are in arrival order, and a sample held until its
last window would hold back every reading behind it. Without a journal a
sample is acknowledged once buffered (a killed module then loses the samples
of its partial windows; the README says so).

Complete windows run in shape buckets like readings. A recurrent model's
windows run in rounds, each stream at most once a round, so a stream's next
window always sees the state its previous one left; the states of a round's
streams are stacked along each state input's batch axis. A window's result
names its samples (``window``); once the broker has it, the journal moves the
stream past what later windows do not need, with the state as of that window.
"""

from __future__ import annotations

import collections
import logging
import sqlite3
import time
from collections.abc import Callable

import numpy as np

from edgeinfer.errors import ReadingError
from edgeinfer.model.interpretation import interpret
from edgeinfer.model.loaded import LoadedModel
from edgeinfer.model.streamplan import StreamPlan
from edgeinfer.observability.metrics import Metrics
from edgeinfer.pipeline.decode import Decoder, Reading
from edgeinfer.pipeline.encode import encode_result
from edgeinfer.pipeline.message import Message
from edgeinfer.pipeline.responder import Responder
from edgeinfer.pipeline.runner import Runner, RunStats
from edgeinfer.pipeline.streams.journal import Journal
from edgeinfer.pipeline.streams.streamset import StreamSet
from edgeinfer.pipeline.streams.windows import Window
from edgeinfer.runtimes.axes import BatchAxes
from edgeinfer.runtimes.base import Array, Value
from edgeinfer.topics import TopicTemplate, TopicTooLongError

log = logging.getLogger(__name__)

#: While only journal bookkeeping waits (answered windows), commit it this often.
JOURNAL_IDLE_COMMIT_S = 0.05


class WindowedAnswers:
    """Samples into windows into results, for one windowed model."""

    def __init__(
        self,
        plan: StreamPlan,
        decoding: tuple[int, bool],  # (max_payload_bytes, allow_non_finite)
        output: Callable[[str], str],  # the result topic of an input topic
        responder: Responder,
        metrics: Metrics,
        journal: Journal | None,
    ) -> None:
        self.plan = plan
        key = plan.window.key
        axes = BatchAxes({plan.input: 0}, {}, True, "samples")
        self._decoder = Decoder(
            (plan.sample_spec,), *decoding, axes, None if key == "topic" else key
        )
        self._keyed = key != "topic"
        self._output = output
        self._responder = responder
        self._metrics = metrics
        self._journal = journal
        self.streams = StreamSet(plan, metrics, journal)
        self._ready: list[Window] = []
        self._unacked: list[Message] = []  # accepted, waiting for the journal's commit
        self._failing = False

    @classmethod
    def template_output(cls, template: TopicTemplate, module_id: str) -> Callable[[str], str]:
        return lambda topic: template.render(topic, module_id)

    def compatible(self, plan: StreamPlan) -> bool:
        """Whether ``plan`` takes the same samples and windows, so buffers carry over."""
        a, b = self.plan, plan
        return (a.window.size, a.window.hop, a.window.key, a.sample, a.dtype) == (
            b.window.size,
            b.window.hop,
            b.window.key,
            b.sample,
            b.dtype,
        )

    def take_over(self, old: WindowedAnswers | None) -> None:
        """Continue from ``old`` (a model swap), or from the journal (start-up).

        Buffered samples carry over when the windows are the same; recurrent
        state always starts over with a new model.
        """
        if old is None:
            if self._journal is not None:
                self._ready = self.streams.restore(self._journal)
                self._report_set_aside(self._journal)
            return
        if self.compatible(old.plan):
            self.streams.adopt(old.streams)
            self._ready = old._ready
            self._unacked = old._unacked
            return
        old.retire()

    def _report_set_aside(self, journal: Journal) -> None:
        """Say on the errors topic that a damaged journal was set aside (once; the log has
        said it already): its samples are lost, and no reading of theirs will say so."""
        lost, journal.set_aside = journal.set_aside, None
        if lost is None:
            return
        message = Message(str(journal.path), b"", time.perf_counter(), lambda: None)
        self._responder.error(message, ReadingError("journal_lost", lost.describe()))

    def retire(self) -> None:
        """The model is replaced by one that takes other samples: partial windows are dropped."""
        partial = [s for s in self.streams.streams() if s.fresh]
        if self._journal is not None:
            for stream in self.streams.streams():
                self._journal.forget(stream.key)
            self._commit()
        if partial:
            self._metrics.windows.labels("dropped").inc(len(partial))
            log.warning(
                "the new model takes other windows: %d partial windows dropped", len(partial)
            )
        self._metrics.streams.set(0)

    def due(self) -> float | None:
        """Seconds until there is work: windows ready, a gap timeout, journal bookkeeping."""
        if self._ready:
            return 0.0
        due = self.streams.due()
        if self._unacked or (self._journal is not None and self._journal.pending):
            due = JOURNAL_IDLE_COMMIT_S if due is None else min(due, JOURNAL_IDLE_COMMIT_S)
        return due

    def work(self, active: LoadedModel, runner: Runner) -> tuple[int, RunStats]:
        """Answer windows ended by gaps and windows ready from before; commit the journal."""
        self._ready += self.streams.expire()
        windows, self._ready = self._ready, []
        self._commit()
        return len(windows), self._run(active, runner, windows)

    def answer(
        self, active: LoadedModel, runner: Runner, batch: list[Message], answered: set[int]
    ) -> tuple[int, RunStats]:
        """Add a batch of readings to their streams, acknowledge them, answer the windows."""
        # Windows from before this batch first (gaps, a restore): a sample of this batch may
        # start its stream's state over, and they must run with the state they had.
        count, stats = self.work(active, runner)
        windows: list[Window] = []
        accepted = []
        for message in batch:
            reading = None
            try:
                reading = self._decoder.decode(message.payload)
                key = str(reading.key) if self._keyed else message.topic
                rows = reading.feeds[self.plan.input]
                windows += self.streams.add(
                    key, message.topic, rows, reading.id, reading.ts, message.received
                )
            except ReadingError as exc:
                if exc.rid is None and reading is not None:
                    exc.rid = reading.id
                answered.add(id(message))
                self._responder.error(message, exc)
                continue
            accepted.append(message)
        for message in accepted:
            answered.add(id(message))
        self._unacked += accepted
        self._commit()
        more = self._run(active, runner, windows)
        return count + len(windows), _add(stats, more)

    def _commit(self) -> None:
        """Commit the journal, then acknowledge the readings it now holds.

        A failed commit (a full disk) acknowledges nothing: the readings stay the broker's,
        and acknowledgements (in order) hold back until a commit succeeds.
        """
        journal = self._journal
        if journal is not None and journal.pending:
            try:
                journal.commit()
            except sqlite3.Error as exc:
                if not self._failing:
                    log.error("the stream journal cannot commit (%s): acknowledging nothing", exc)
                self._failing = True
                return
            if self._failing:
                log.warning("the stream journal commits again")
            self._failing = False
            self._metrics.journal_commits.inc()
        unacked, self._unacked = self._unacked, []
        for message in unacked:  # safe in the journal (or, without one, in the buffer)
            message.done()

    def _run(self, active: LoadedModel, runner: Runner, windows: list[Window]) -> RunStats:
        total = RunStats()
        for round_ in self._rounds(windows):
            readings = [self._reading(w) for w in round_]
            answers, stats = runner.answer(active, readings)
            total.failed += stats.failed
            total.non_finite += stats.non_finite
            total.seconds += stats.seconds
            now = time.perf_counter()
            for window, answer in zip(round_, answers, strict=True):
                self._answered(active, window, answer, now)
        return total

    def _rounds(self, windows: list[Window]) -> list[list[Window]]:
        if not self.plan.state:
            return [windows] if windows else []
        rounds: list[list[Window]] = []
        seen: collections.Counter[str] = collections.Counter()
        for window in windows:
            n = seen[window.key]
            seen[window.key] += 1
            if n == len(rounds):
                rounds.append([])
            rounds[n].append(window)
        return rounds

    def _reading(self, window: Window) -> Reading:
        state = window.owner.state if window.owner is not None else None
        feeds = self.plan.feeds(window.data, state)
        return Reading(feeds, 1, window.last_id, window.last_ts, (window.data.shape,))

    def _answered(
        self,
        active: LoadedModel,
        window: Window,
        answer: dict[str, Value] | ReadingError,
        now: float,
    ) -> None:
        message = Message(window.topic, b"", window.received, lambda: None)
        if isinstance(answer, ReadingError):  # the state stays as it was before this window
            message.done = self._resumer(window, window.owner.state if window.owner else None)
            self._responder.error(message, answer)
            return
        state = {
            name: np.array(answer[out], copy=True)  # not a view that keeps the batch alive
            for name, out in self.plan.state.items()
            if isinstance(answer.get(out), np.ndarray)
        }
        if state and window.owner is not None:
            window.owner.state = state
        outputs = {k: v for k, v in answer.items() if k not in set(self.plan.state.values())}
        try:
            topic = self._output(window.topic)
        except TopicTooLongError as exc:
            message.done = self._resumer(window, state)
            self._responder.error(message, ReadingError("bad_topic", str(exc), window.last_id))
            return
        seen = interpret(active, outputs)
        payload = encode_result(
            window.topic,
            active.identity,
            seen.shown,
            window.last_id,
            window.last_ts,
            (now - window.received) * 1000,
            seen.fields,
            window.describe(),
        )
        message.done = self._resumer(window, state)
        kind = "full" if window.samples == window.data.shape[0] else "padded"
        if kind == "full":  # padded ones were counted when the gap ended them
            self._metrics.windows.labels(kind).inc()
        self._responder.result(message, topic, payload, window.last_id)

    def _resumer(self, window: Window, state: dict[str, Array] | None) -> Callable[[], None]:
        """What the window's answer does once the broker has it: move the journal on, with
        the stream's state as this window left it.

        Not when the answer comes late: after its stream was evicted or replaced, or after a
        gap moved the stream past it (its position is behind the stream's floor).
        """
        journal = self._journal
        owner = window.owner
        if journal is None or owner is None:
            return lambda: None

        def resume() -> None:
            if self.streams.owns(owner) and window.resume >= owner.floor:
                # The keys as of now: every reading they name is journalled (appended before
                # its key was noted), committed with them or before.
                journal.resume(window.key, window.resume, state or None, owner.seen_keys())

        return resume


def _add(a: RunStats, b: RunStats) -> RunStats:
    return RunStats(a.failed + b.failed, a.non_finite + b.non_finite, a.seconds + b.seconds)
