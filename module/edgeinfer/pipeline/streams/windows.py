"""One stream's samples, and the windows they make.

A :class:`Stream` keeps up to ``size`` samples in one preallocated array (its
ring: samples slide down by ``hop`` after each window, so the array is never
reallocated) with each sample's reading id, ``ts`` and journal position. A
window is emitted as soon as ``size`` samples are in; the next one starts
``hop`` samples later.

A journal position is ``(seq, row)``: row ``row`` of the journalled reading
``seq``. Each window carries ``resume``, the position of the first sample
still needed after it: once the window's result is safe at the broker,
everything before ``resume`` can be forgotten.

A stream also remembers the key of each of its last ``size`` readings that
carried an ``id`` and a ``ts`` (:func:`edgeinfer.pipeline.journal.sample_key`,
8 bytes each): a reading the broker redelivers (its PUBACK was lost to a
dropped connection or a crash) is recognised by it anywhere in the window
buffer, not only as the stream's last sample.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeinfer.runtimes.base import Array

Position = tuple[int, int]  # (journal seq of the reading, row within it)


@dataclass(slots=True)
class Window:
    """A full (or padded) window of one stream's samples."""

    key: str
    topic: str
    data: Array  # [size, *sample]
    samples: int  # real samples in it (fewer than size when padded)
    first_id: Any
    last_id: Any
    first_ts: Any
    last_ts: Any
    received: float  # perf_counter() at the arrival of its last sample
    resume: Position  # where the stream's journal starts once this window is answered
    owner: Stream | None = None  # the stream it came from (its state is read at run time)

    def describe(self) -> dict[str, Any]:
        """The result's ``window`` object."""
        return {
            "key": self.key,
            "first_id": self.first_id,
            "last_id": self.last_id,
            "first_ts": self.first_ts,
            "last_ts": self.last_ts,
            "samples": self.samples,
        }


class Stream:
    """The samples of one stream waiting for their windows, and its recurrent state.

    Only what windows are named by is kept per sample position that starts a
    window (every ``hop``-th sample since the stream began or its last gap):
    its id, ``ts`` and journal position. A window's last sample is the one
    that completes it. So a stream costs its buffer plus a few hundred bytes.
    """

    __slots__ = (
        "count",
        "data",
        "floor",
        "fresh",
        "hop",
        "key",
        "last_id",
        "last_row",
        "last_sample_ts",
        "last_seen",
        "last_seq",
        "last_ts",
        "origin",
        "sample",
        "seen",
        "seen_n",
        "size",
        "starts",
        "state",
        "topic",
    )

    def __init__(self, key: str, size: int, hop: int, sample: tuple[int, ...], dtype: Any) -> None:
        self.key = key
        self.topic = ""
        self.size = size
        self.hop = hop
        self.sample = sample
        self.data: Array = np.zeros((size, *sample), dtype=dtype)
        self.count = 0
        self.fresh = 0  # samples in no window answered yet (an overlap's are in one already)
        self.origin = 0  # samples since the stream began or its last gap, modulo hop
        #: the journal position a gap moved the stream past: answers of older windows that
        #: arrive late must not move it back
        self.floor: Position = (0, 0)
        #: (id, ts, journal position) of each buffered sample that starts a window (a few: a
        #: list of 88 bytes, not a deque's 600-byte block)
        self.starts: list[tuple[Any, Any, Position]] = []
        #: keys of the last ``size`` readings with an id and a ts (a ring; allocated with the
        #: first one: a stream without ids costs nothing), and how many were ever noted
        self.seen: array[int] | None = None
        self.seen_n = 0
        # The latest sample's id, ts and journal position (slots, not a tuple a reading).
        self.last_id: Any = None
        self.last_sample_ts: Any = None
        self.last_seq = 0
        self.last_row = 0
        self.last_seen = 0.0  # time.monotonic() of its last sample
        self.last_ts: Any = None
        self.state: dict[str, Array] | None = None

    def add(
        self,
        rows: Array,
        rid: Any,
        ts: Any,
        seq: int,
        received: float,
        first_row: int = 0,
        key: int | None = None,
    ) -> list[Window]:
        """Append ``rows`` (samples of one reading, from row ``first_row`` of journal ``seq``);
        ``key`` (its id and ts, when it has both) is remembered for :meth:`has_seen`."""
        if key is not None:
            self.note(key)
        windows: list[Window] = []
        total = rows.shape[0]
        at = 0
        while at < total:
            take = min(self.size - self.count, total - at)
            self.data[self.count : self.count + take] = rows[at : at + take]
            # The window starts among these samples: every hop-th since the origin.
            first = (-self.origin) % self.hop
            for i in range(first, take, self.hop):
                self.starts.append((rid, ts, (seq, first_row + at + i)))
            self.origin = (self.origin + take) % self.hop
            self.count += take
            self.fresh += take
            at += take
            self.last_id, self.last_sample_ts = rid, ts
            self.last_seq, self.last_row = seq, first_row + at - 1
            if self.count == self.size:
                windows.append(self._emit(received))
        return windows

    def note(self, key: int) -> None:
        """Remember ``key`` among the last ``size`` readings' (the oldest is forgotten)."""
        if self.seen is None:  # an array, not an ndarray: 50 bytes less a stream
            self.seen = array("q", bytes(8 * self.size))
        self.seen[self.seen_n % self.size] = key
        self.seen_n += 1

    def has_seen(self, key: int) -> bool:
        """Whether ``key`` is one of the last ``size`` readings' (a redelivered reading)."""
        if self.seen is None:
            return False
        return key in (self.seen if self.seen_n >= self.size else self.seen[: self.seen_n])

    def seen_keys(self) -> bytes | None:
        """The remembered keys, oldest first (what the journal keeps); None: none."""
        if self.seen is None:
            return None
        if self.seen_n <= self.size:
            return self.seen[: self.seen_n].tobytes()
        at = self.seen_n % self.size
        return (self.seen[at:] + self.seen[:at]).tobytes()

    def remember(self, keys: bytes) -> None:
        """Take back keys :meth:`seen_keys` gave (a restart), oldest first."""
        found: array[int] = array("q")
        found.frombytes(keys[: len(keys) - len(keys) % 8])  # whole keys only
        for key in found[-self.size :]:
            self.note(key)

    def _emit(self, received: float) -> Window:
        first_id, first_ts, _ = self.starts.pop(0)
        last_id, last_ts, seq, row = self.last_id, self.last_sample_ts, self.last_seq, self.last_row
        # Where the next window starts (hop < size: already buffered), else the next sample.
        resume = self.starts[0][2] if self.starts else (seq, row + 1)
        window = Window(
            self.key,
            self.topic,
            self.data.copy(),
            self.size,
            first_id,
            last_id,
            first_ts,
            last_ts,
            received,
            resume,
            self,
        )
        keep = self.size - self.hop
        if keep > 0:
            self.data[:keep] = self.data[self.hop :]
        self.count = max(0, keep)
        self.fresh = 0
        return window

    def flush(self, pad: bool, received: float) -> tuple[Window | None, Position | None]:
        """End a partial window (a gap): padded with zeros and returned, or dropped (None);
        and where the stream resumes after it (None: nothing new was buffered).

        Samples that only overlap an answered window are not a partial window:
        without a fresh sample since, nothing is padded or counted as dropped.
        """
        if self.fresh == 0:
            self._restart()
            return None, None
        last_id, last_ts = self.last_id, self.last_sample_ts
        resume = (self.last_seq, self.last_row + 1)
        window = None
        if pad:
            first_id, first_ts, _ = self.starts[0]
            data = np.zeros_like(self.data)
            data[: self.count] = self.data[: self.count]
            window = Window(
                self.key,
                self.topic,
                data,
                self.count,
                first_id,
                last_id,
                first_ts,
                last_ts,
                received,
                resume,
                self,
            )
        self._restart()
        self.floor = resume
        return window, resume

    def _restart(self) -> None:
        self.count = 0
        self.fresh = 0
        self.origin = 0  # the next sample starts a window afresh
        self.starts.clear()

    def start_position(self) -> Position:
        """Where the journal holds this stream from: its first buffered sample, or the next."""
        if self.starts:
            return self.starts[0][2]
        return (self.last_seq, self.last_row + 1)

    @property
    def nbytes(self) -> int:
        """About what this stream holds in memory (its buffer, bookkeeping and state)."""
        state = sum(a.nbytes for a in self.state.values()) if self.state else 0
        starts = -(-self.size // self.hop) * 200  # a tuple each, with its id, ts and position
        seen = 0 if self.seen is None else 8 * self.size + 64
        return int(self.data.nbytes) + state + starts + seen + 620
