"""Streams of samples for a windowed model: keys, order, gaps, limits, state, the journal.

A reading for a windowed model carries one sample or a few rows of samples of
one stream (the topic, or the value of the payload field ``window.key``).
:class:`StreamSet` appends them to their stream's window buffer
(:mod:`.windows`) and hands back the windows they complete. It refuses, with a
reason, a sample whose ``ts`` goes back, a sample of another width than its
stream's, and a new stream when ``max_streams`` are heard from within
``window.timeout_s`` (a flood of new keys costs the known streams nothing); a
stream silent past the timeout is the one evicted (least recently heard).

Two maps, both ordered by when each stream was last heard: ``live`` streams
(heard within ``timeout_s``) and ``quiet`` ones (silent past it: their partial
window was ended, their last ``ts`` and a recurrent model's state are kept
until they are evicted, or until ``state.idle_reset_s``). The first live
stream is always the next to time out, so gaps are found without scanning
every stream, and the first quiet one is the next to evict.

A reading with an ``id`` and a ``ts`` that its stream has among its last
``size`` readings is one the broker redelivered (its PUBACK was lost to a
dropped connection or a crash): it is acknowledged, counted in
``edgeinfer_duplicate_samples_total``, and added to nothing. Only a reading
whose ``ts`` is not after the stream's last can be one, so the keys are
searched only then. Without an id and a ts a redelivered sample is added again.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import numpy as np

from edgeinfer.errors import ReadingError
from edgeinfer.model.streamplan import StreamPlan
from edgeinfer.observability.metrics import Metrics
from edgeinfer.pipeline.streams.journal import Journal, sample_key, sample_meta
from edgeinfer.pipeline.streams.windows import Stream, Window
from edgeinfer.runtimes.base import Array

log = logging.getLogger(__name__)


class StreamSet:
    """Every stream of one windowed model (the serving thread)."""

    def __init__(self, plan: StreamPlan, metrics: Metrics, journal: Journal | None) -> None:
        self.plan = plan
        self._metrics = metrics
        self._journal = journal
        self.live: OrderedDict[str, Stream] = OrderedDict()
        self.quiet: OrderedDict[str, Stream] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self.live) + len(self.quiet)

    def streams(self) -> Iterator[Stream]:
        yield from self.live.values()
        yield from self.quiet.values()

    def adopt(self, old: StreamSet) -> None:
        """Take ``old``'s buffered samples (a new model with the same window); state starts over."""
        for stream in old.streams():
            stream.state = self._initial_state()
            self.live[stream.key] = stream
            if self._journal is not None:  # a restart must not bring the old model's state back
                self._journal.resume(
                    stream.key, stream.start_position(), stream.state, stream.seen_keys()
                )
        self._account()

    def owns(self, stream: Stream) -> bool:
        """Whether ``stream`` is still the one kept under its key (not evicted or replaced)."""
        return (self.live.get(stream.key) or self.quiet.get(stream.key)) is stream

    def add(
        self, key: str, topic: str, rows: Array, rid: Any, ts: Any, received: float
    ) -> list[Window]:
        """Append one reading's samples to stream ``key``; the windows they complete.

        Raises ReadingError (nothing appended) for a sample out of order, of
        the wrong width, or a new stream beyond ``max_streams``.
        """
        now = time.monotonic()
        stream = self.live.get(key) or self.quiet.get(key)
        new = stream is None
        if stream is None:
            stream = self._new_stream(key, tuple(rows.shape[1:]), now)
        meta = mark = None
        if rid is not None and ts is not None:
            meta = sample_meta(rid, ts)
            mark = sample_key(meta)
            if not new and not _after(ts, stream.last_ts) and stream.has_seen(mark):
                # The same reading again: the broker redelivers what it holds unacknowledged
                # (a PUBACK lost to a dropped link or a crash) though the stream has it, in
                # its buffer or in an answered window. Acknowledged, not added twice.
                self._metrics.duplicate_samples.inc()
                return []
        self._check(stream, rows, ts)
        reset = self.plan.idle_reset_s
        idle = now - stream.last_seen if stream.last_seen else 0.0
        if stream.state is not None and reset and idle > reset:
            stream.state = self._initial_state()
        self.quiet.pop(key, None)
        self.live[key] = stream
        self.live.move_to_end(key)
        if new:
            self._metrics.streams.set(len(self))
        stream.last_seen = now
        stream.topic = topic
        if ts is not None:
            stream.last_ts = ts
        seq = 0
        if self._journal is not None:
            seq = self._journal.next_seq()
            self._journal.append(seq, key, topic, rid, ts, rows, meta)
        return stream.add(rows, rid, ts, seq, received, key=mark)

    def _check(self, stream: Stream, rows: Array, ts: Any) -> None:
        if tuple(rows.shape[1:]) != stream.sample:
            raise ReadingError(
                "wrong_shape",
                f"stream {stream.key!r} takes samples of shape {list(stream.sample)}: this "
                f"reading's are {list(rows.shape[1:])} (a stream keeps its first sample's shape)",
            )
        last = stream.last_ts
        if _comparable(ts, last) and ts < last:
            raise ReadingError(
                "out_of_order",
                f"ts {ts!r} is before the last ts {last!r} of stream {stream.key!r}: expected "
                "samples in time order (this one is not added to the window)",
            )

    def _new_stream(self, key: str, sample: tuple[int, ...], now: float) -> Stream:
        window = self.plan.window
        if len(self) >= window.max_streams and not self._evict(now):
            oldest = next(iter(self.live.values()))
            raise ReadingError(
                "too_many_streams",
                f"stream {key!r} would be one more than window.max_streams = "
                f"{window.max_streams}, and every stream was heard within window.timeout_s = "
                f"{window.timeout_s:g} s (the least recent {now - oldest.last_seen:.1f} s ago): "
                "expected a known stream key, or a larger max_streams",
            )
        stream = Stream(key, window.size, window.hop, sample, self.plan.dtype)
        stream.state = self._initial_state()
        self._bytes += stream.nbytes
        self._metrics.stream_bytes.set(self._bytes)
        return stream

    def _evict(self, now: float) -> bool:
        """Make room: drop the least recently heard silent stream; False if none is silent."""
        if self.quiet:
            key, stream = self.quiet.popitem(last=False)
        else:
            key, stream = next(iter(self.live.items()))
            if now - stream.last_seen < self.plan.window.timeout_s:
                return False
            del self.live[key]
            if stream.fresh:
                self._metrics.windows.labels("dropped").inc()
        if self._journal is not None:
            self._journal.forget(key)
        self._metrics.stream_evictions.inc()
        self._bytes -= stream.nbytes
        self._metrics.streams.set(len(self))
        log.info("stream %r evicted for a new one (silent %.1f s)", key, now - stream.last_seen)
        return True

    def due(self) -> float | None:
        """Seconds until the next gap timeout; None when no stream is live."""
        if not self.live:
            return None
        first = next(iter(self.live.values()))
        return max(0.0, first.last_seen + self.plan.window.timeout_s - time.monotonic())

    def expire(self) -> list[Window]:
        """End the partial windows of streams silent past ``timeout_s``; padded ones to answer."""
        now = time.monotonic()
        received = time.perf_counter()
        timeout = self.plan.window.timeout_s
        pad = self.plan.window.partial == "pad"
        windows = []
        while self.live:
            key, stream = next(iter(self.live.items()))
            if now - stream.last_seen < timeout:
                break
            del self.live[key]
            had = stream.fresh  # samples in no answered window
            window, resume = stream.flush(pad, received)
            if window is not None:
                windows.append(window)
                self._metrics.windows.labels("padded").inc()
            elif had:
                self._metrics.windows.labels("dropped").inc()
                log.info("stream %r silent %.1f s: %d samples dropped", key, timeout, had)
            if self._journal is not None and window is None and resume is not None:
                self._journal.resume(key, resume, stream.state, stream.seen_keys())
            self.quiet[key] = stream  # kept (its last ts, its state) until evicted
        self._forget_idle_states(now)
        self._metrics.streams.set(len(self))
        self._metrics.stream_bytes.set(self._bytes)
        return windows

    def _forget_idle_states(self, now: float) -> None:
        reset = self.plan.idle_reset_s
        while reset and self.plan.state and self.quiet:
            key, stream = next(iter(self.quiet.items()))
            if now - stream.last_seen <= reset:
                break
            del self.quiet[key]  # its state would start over anyway
            self._bytes -= stream.nbytes
            if self._journal is not None:
                self._journal.forget(key)

    def restore(self, journal: Journal) -> list[Window]:
        """Streams as the journal left them; the windows their samples complete (answered again).

        A journal whose rows cannot be read is set aside (:meth:`Journal.discard`): nothing is
        restored from it, rather than half of it.
        """
        try:
            windows = self._restore(journal)
        except (sqlite3.DatabaseError, ValueError, TypeError) as exc:
            # ValueError, TypeError: a row that does not decode (orjson's, numpy's errors).
            journal.discard(f"a row cannot be read: {type(exc).__name__}: {exc}")
            self.live.clear()
            windows = []
        self._account()
        return windows

    def _restore(self, journal: Journal) -> list[Window]:
        windows: list[Window] = []
        received = time.perf_counter()
        offset = time.monotonic() - time.time()  # a wall-clock time on the monotonic clock
        for found in journal.restore():
            key, state, readings = found.key, found.state, found.readings
            sample = tuple(readings[0].rows.shape[1:]) if readings else self._fixed_sample()
            if sample is None or any(tuple(r.rows.shape[1:]) != sample for r in readings):
                log.warning("journalled stream %r does not fit the model: dropped", key)
                journal.forget(key)
                continue
            stream = Stream(
                key, self.plan.window.size, self.plan.window.hop, sample, self.plan.dtype
            )
            stream.state = state if state and set(state) == set(self.plan.state) else None
            stream.state = stream.state or self._initial_state()
            if found.seen:  # readings of answered windows, which the broker may redeliver
                stream.remember(found.seen)
            for r in readings:
                stream.topic = r.topic
                stream.last_ts = r.ts if r.ts is not None else stream.last_ts
                rows = r.rows[r.first_row :].astype(self.plan.dtype, copy=False)
                # Keys already remembered (kept when the stream last moved on) are not noted
                # twice: each would push an older one out.
                mark = None if r.key is None or stream.has_seen(r.key) else r.key
                windows += stream.add(rows, r.rid, r.ts, r.seq, received, r.first_row, mark)
            # As heard before the restart: the time the module was down counts towards the
            # gap timeout and the idle reset, so a partial window is not joined across it.
            stream.last_seen = found.heard + offset
            self.live[key] = stream
        if windows or self.live:
            log.info(
                "restored %d streams from the journal, %d windows", len(self.live), len(windows)
            )
        return windows

    def _fixed_sample(self) -> tuple[int, ...] | None:
        sample = self.plan.sample
        return None if any(d is None for d in sample) else tuple(d for d in sample if d is not None)

    def _initial_state(self) -> dict[str, Array] | None:
        if not self.plan.state:
            return None
        return {name: value.copy() for name, value in self.plan.state_init.items()}

    def _account(self) -> None:
        self._bytes = sum(s.nbytes for s in self.streams())
        self._metrics.streams.set(len(self))
        self._metrics.stream_bytes.set(self._bytes)


def _after(ts: Any, last: Any) -> bool:
    """Whether ``ts`` is certainly after ``last`` (then the reading cannot be one again)."""
    return last is None or (_comparable(ts, last) and ts > last)


def _comparable(a: Any, b: Any) -> bool:
    numbers = (int, float, np.integer, np.floating)
    if isinstance(a, bool) or isinstance(b, bool):
        return False
    return (isinstance(a, numbers) and isinstance(b, numbers)) or (
        isinstance(a, str) and isinstance(b, str)
    )
