"""The stream journal: samples waiting in windows, kept in SQLite so a killed module loses none.

MQTT acknowledges readings in arrival order, so a sample cannot keep its
acknowledgement until its last window is answered without holding back every
reading behind it. Instead each sample is appended here and acknowledged once
it is committed: the journal, not the broker, then holds it. A window's result,
once the broker has it, moves the stream's start past what no later window
needs (and saves the stream's state as of that window, in the same
transaction), so on restart each stream resumes exactly after its last
answered window, with the state that window left. A window answered but not
yet forgotten when the module dies is answered again: at least once.

Writes are grouped: :meth:`Journal.commit` writes everything appended since
the last one in one transaction (WAL mode). ``synchronous=NORMAL`` survives a
killed process; ``FULL`` also a power cut. One thread uses it at a time (the
serving loop).

Redelivery: a reading's ``id`` and ``ts`` make its key (:func:`sample_key`).
A stream remembers the keys of its last ``size`` readings; each time the
stream moves on, those keys are kept beside its start (table ``seen``), so a
reading the broker redelivers after a crash is recognised even when the
window it fell in was answered and its row forgotten.

A journal that cannot be opened (not a database, damaged, another schema, an
unreadable row at restore) is set aside as ``streams.sqlite.corrupt-<UTC
time>`` (with its ``-wal``), what it held is counted where it can be, and an
empty journal takes its place: :attr:`Journal.set_aside` says what happened,
for the caller to report. A journal locked by another process, or a
directory that cannot be written, is not damage: that error stands.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from edgeinfer.runtimes.base import Array

log = logging.getLogger(__name__)

#: The journal's file, in the state directory (windowed models only).
JOURNAL_NAME = "streams.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    seq INTEGER PRIMARY KEY, stream TEXT NOT NULL, topic TEXT NOT NULL, n INTEGER NOT NULL,
    at REAL NOT NULL, meta BLOB NOT NULL, dtype TEXT NOT NULL, shape TEXT NOT NULL,
    data BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS readings_by_stream ON readings (stream, seq);
CREATE TABLE IF NOT EXISTS streams (
    stream TEXT PRIMARY KEY, seq INTEGER NOT NULL, row INTEGER NOT NULL, state BLOB,
    at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS seen (stream TEXT PRIMARY KEY, keys BLOB NOT NULL);
"""
#: The columns each table must have: a database with other ones is no stream journal.
_COLUMNS = {
    "readings": ["seq", "stream", "topic", "n", "at", "meta", "dtype", "shape", "data"],
    "streams": ["stream", "seq", "row", "state", "at"],
    "seen": ["stream", "keys"],
}
#: SQLite's primary result codes that mean the file itself is bad (not busy, not full):
#: SQLITE_IOERR (a sector that cannot be read), SQLITE_CORRUPT, SQLITE_NOTADB.
_DAMAGED = {10, 11, 26}


class DamagedJournalError(Exception):
    """The journal's file is not a stream journal this module can read."""


def sample_meta(rid: Any, ts: Any) -> bytes:
    """How a reading's id and ts are journalled (and keyed)."""
    return orjson.dumps([rid, ts], option=orjson.OPT_SERIALIZE_NUMPY)


def sample_key(meta: bytes) -> int:
    """The 64-bit key of a reading's journalled id and ts (the same in every process)."""
    return int.from_bytes(hashlib.blake2b(meta, digest_size=8).digest(), "little", signed=True)


@dataclass(frozen=True)
class SetAside:
    """A journal that could not be opened, and where it went."""

    path: Path  # where the damaged file is now
    reason: str  # what was wrong with it
    size: int  # its bytes (with its -wal)
    readings: int | None  # journalled readings it held, when they could be counted
    streams: int | None  # and of how many streams

    def describe(self) -> str:
        """What was lost, in words (the log line and the report)."""
        if self.readings is None:
            held = "its samples are lost (its rows cannot be read)"
        else:
            held = f"its {self.readings} journalled readings of {self.streams} streams are lost"
        return (
            f"the stream journal cannot be opened ({self.reason}): set aside as "
            f"{self.path.name} ({self.size} bytes); {held}, and an empty journal starts"
        )


@dataclass(frozen=True)
class Journalled:
    """One journalled reading of samples, as restored."""

    seq: int
    topic: str
    rid: Any
    ts: Any
    rows: Array
    first_row: int  # rows before it were used by windows already answered
    at: float  # time.time() when it arrived
    key: int | None  # its id and ts (sample_key), when it had both


@dataclass(frozen=True)
class Restored:
    """One journalled stream as restored."""

    key: str
    state: dict[str, Array] | None  # its recurrent state as its last answered window left it
    readings: list[Journalled]  # from where it resumes
    heard: float  # time.time() it was last heard from
    seen: bytes | None  # keys of its last readings (redeliveries), oldest first


class Journal:
    """Samples and per-stream state in ``<state_dir>/streams.sqlite``."""

    def __init__(self, path: Path, sync: str = "normal") -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._sync = sync
        #: set when the journal found was damaged and set aside (for the caller to report)
        self.set_aside: SetAside | None = None
        self._closed = False
        self._appended: list[tuple[Any, ...]] = []
        self._resumed: dict[str, tuple[int, int, bytes | None, float, bytes | None]] = {}
        self._forgotten: set[str] = set()
        try:
            self._db = self._open()
        except DamagedJournalError as exc:
            # A crash loop (every start failing on the same file) would serve nothing on
            # any topic: the samples it held are lost either way, so say so and go on.
            self._set_aside(str(exc))
            self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            # Checked before anything is written: a damaged file is set aside as it was found.
            problems = [row[0] for row in db.execute("PRAGMA quick_check(3)")]
            if problems != ["ok"]:
                raise DamagedJournalError(f"quick_check: {'; '.join(problems)}")
            for table, columns in _COLUMNS.items():  # before the schema's index needs them
                found = [row[1] for row in db.execute(f"PRAGMA table_info({table})")]
                if found and found != columns:
                    raise DamagedJournalError(
                        f"table {table!r} has columns {found}: expected {columns} "
                        "(not a stream journal)"
                    )
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={'FULL' if self._sync == 'full' else 'NORMAL'}")
            db.executescript(_SCHEMA)
            # Resume positions may name readings already deleted: new ones must come after.
            last = db.execute(
                "SELECT max(coalesce((SELECT max(seq) FROM readings), 0), "
                "coalesce((SELECT max(seq) FROM streams), 0))"
            ).fetchone()[0]
        except sqlite3.DatabaseError as exc:
            db.close()
            if (exc.sqlite_errorcode & 0xFF) in _DAMAGED:
                raise DamagedJournalError(f"{exc.sqlite_errorname}: {exc}") from exc
            raise  # locked by another process, a full disk...: not the file's fault
        except DamagedJournalError:
            db.close()
            raise
        self._seq = int(last or 0)
        return db

    def _set_aside(self, reason: str) -> None:
        """Rename the damaged file (and its -wal, -shm) out of the way; count what it held."""
        readings = streams = None
        with (
            contextlib.suppress(sqlite3.Error),
            contextlib.closing(sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)) as db,
        ):
            readings, streams = db.execute(
                "SELECT count(*), count(DISTINCT stream) FROM readings"
            ).fetchone()
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while target.exists():  # set aside twice in one second: keep both
            target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
            n += 1
        size = 0
        for suffix in ("", "-wal", "-shm"):
            source = Path(f"{self.path}{suffix}")
            if not source.exists():
                continue
            if suffix != "-shm":
                size += source.stat().st_size
            # -wal beside its database, named as SQLite looks for it, for whoever inspects it.
            os.replace(source, f"{target}{suffix}")
        self.set_aside = SetAside(target, reason, size, readings, streams)
        log.error("%s", self.set_aside.describe())

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    @property
    def pending(self) -> bool:
        """Whether anything waits for :meth:`commit`."""
        return bool(self._appended or self._resumed or self._forgotten)

    def append(
        self,
        seq: int,
        stream: str,
        topic: str,
        rid: Any,
        ts: Any,
        rows: Array,
        meta: bytes | None = None,
    ) -> None:
        """Journal one reading's samples (written at the next :meth:`commit`); ``meta`` is
        :func:`sample_meta` of its id and ts when the caller has it already."""
        if self._closed:
            return
        meta = meta if meta is not None else sample_meta(rid, ts)
        shape = ",".join(str(d) for d in rows.shape)
        data = np.ascontiguousarray(rows).tobytes()
        n = rows.shape[0]
        row = (seq, stream, topic, n, time.time(), meta, rows.dtype.str, shape, data)
        self._appended.append(row)

    def resume(
        self,
        stream: str,
        at: tuple[int, int],
        state: Mapping[str, Array] | None,
        seen: bytes | None = None,
    ) -> None:
        """The stream now starts at ``at``, with ``state``, and the keys of its last readings
        ``seen`` (written at the next commit, with the readings they name)."""
        self._forgotten.discard(stream)
        packed = _pack(state) if state else None
        self._resumed[stream] = (at[0], at[1], packed, time.time(), seen)

    def forget(self, stream: str) -> None:
        """Drop everything of ``stream`` (evicted, or reset by a new model)."""
        self._resumed.pop(stream, None)
        self._appended = [a for a in self._appended if a[1] != stream]
        self._forgotten.add(stream)

    def commit(self) -> None:
        """Write what was appended, resumed and forgotten, in one transaction.

        On failure (a full disk) nothing is cleared: the next commit tries it all
        again, and the caller acknowledges nothing meanwhile.
        """
        if not self.pending or self._closed:
            return
        db = self._db
        db.execute("BEGIN")
        try:
            for stream in self._forgotten:
                db.execute("DELETE FROM readings WHERE stream = ?", (stream,))
                db.execute("DELETE FROM streams WHERE stream = ?", (stream,))
                db.execute("DELETE FROM seen WHERE stream = ?", (stream,))
            db.executemany(
                "INSERT INTO readings VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", self._appended
            )
            for stream, (seq, row, state, at, seen) in self._resumed.items():
                db.execute(
                    "DELETE FROM readings WHERE stream = ? AND (seq < ? OR (seq = ? AND n <= ?))",
                    (stream, seq, seq, row),
                )
                db.execute(
                    "INSERT INTO streams VALUES (?, ?, ?, ?, ?) ON CONFLICT (stream) DO UPDATE "
                    "SET seq = excluded.seq, row = excluded.row, state = excluded.state, "
                    "at = excluded.at",
                    (stream, seq, row, state, at),
                )
                if seen is not None:
                    db.execute(
                        "INSERT INTO seen VALUES (?, ?) ON CONFLICT (stream) DO UPDATE "
                        "SET keys = excluded.keys",
                        (stream, seen),
                    )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._appended.clear()
        self._resumed.clear()
        self._forgotten.clear()

    def discard(self, reason: str) -> None:
        """Set the journal aside (its rows cannot be read: ``reason``) and start an empty one;
        what was appended, resumed or forgotten meanwhile goes with it."""
        self._db.close()
        self._set_aside(reason)
        self._db = self._open()
        self._appended.clear()
        self._resumed.clear()
        self._forgotten.clear()

    def restore(self) -> Iterator[Restored]:
        """Each journalled stream: its saved state, its readings from where it resumes, when
        it was last heard from and the keys of its last readings; least recently heard first.

        One stream at a time (a large journal is not held twice). Raises sqlite3.DatabaseError,
        ValueError or TypeError for a row that cannot be read: see :meth:`discard`.
        """
        db = self._db
        starts = {
            row[0]: (row[1], row[2], row[3], row[4])
            for row in db.execute("SELECT stream, seq, row, state, at FROM streams")
        }
        heard = dict(db.execute("SELECT stream, max(at) FROM readings GROUP BY stream"))
        seen = dict(db.execute("SELECT stream, keys FROM seen"))
        keys = set(heard) | set(starts)
        last = {k: max(heard.get(k, 0.0), starts.get(k, (0, 0, None, 0.0))[3]) for k in keys}
        for stream in sorted(keys, key=lambda k: last[k]):
            seq0, row0, state, _ = starts.get(stream, (0, 0, None, 0.0))
            readings = []
            query = (
                "SELECT seq, topic, at, meta, dtype, shape, data FROM readings "
                "WHERE stream = ? AND seq >= ? ORDER BY seq"
            )
            for seq, topic, at, meta, dtype, shape, data in db.execute(query, (stream, seq0)):
                rid, ts = orjson.loads(meta)
                dims = tuple(int(d) for d in shape.split(",") if d)
                rows = np.frombuffer(data, dtype=np.dtype(dtype)).reshape(dims)
                first = row0 if seq == seq0 else 0
                key = sample_key(meta) if rid is not None and ts is not None else None
                if first < rows.shape[0]:
                    readings.append(Journalled(seq, topic, rid, ts, rows, first, at, key))
            unpacked = _unpack(state) if state else None
            yield Restored(stream, unpacked, readings, last[stream], seen.get(stream))

    def close(self) -> None:
        """Close the database; later calls do nothing (a late answer after shutdown)."""
        self._closed = True
        self._db.close()


def _pack(state: Mapping[str, Array]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **dict(state))
    return buffer.getvalue()


def _unpack(blob: bytes) -> dict[str, Array]:
    with np.load(io.BytesIO(blob), allow_pickle=False) as found:
        return {name: found[name] for name in found.files}
