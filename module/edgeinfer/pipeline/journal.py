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
"""

from __future__ import annotations

import io
import sqlite3
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from edgeinfer.runtimes.base import Array

_SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    seq INTEGER PRIMARY KEY, stream TEXT NOT NULL, topic TEXT NOT NULL, n INTEGER NOT NULL,
    at REAL NOT NULL, meta BLOB NOT NULL, dtype TEXT NOT NULL, shape TEXT NOT NULL,
    data BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS readings_by_stream ON readings (stream, seq);
CREATE TABLE IF NOT EXISTS streams (
    stream TEXT PRIMARY KEY, seq INTEGER NOT NULL, row INTEGER NOT NULL, state BLOB,
    at REAL NOT NULL);
"""


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


class Journal:
    """Samples and per-stream state in ``<state_dir>/streams.sqlite``."""

    def __init__(self, path: Path, sync: str = "normal") -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if sync == 'full' else 'NORMAL'}")
        self._db.executescript(_SCHEMA)
        # Resume positions may name readings already deleted: new ones must come after.
        last = self._db.execute(
            "SELECT max(coalesce((SELECT max(seq) FROM readings), 0), "
            "coalesce((SELECT max(seq) FROM streams), 0))"
        ).fetchone()[0]
        self._seq = int(last or 0)
        self._closed = False
        self._appended: list[tuple[Any, ...]] = []
        self._resumed: dict[str, tuple[int, int, bytes | None, float]] = {}
        self._forgotten: set[str] = set()

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    @property
    def pending(self) -> bool:
        """Whether anything waits for :meth:`commit`."""
        return bool(self._appended or self._resumed or self._forgotten)

    def append(self, seq: int, stream: str, topic: str, rid: Any, ts: Any, rows: Array) -> None:
        """Journal one reading's samples (written at the next :meth:`commit`)."""
        if self._closed:
            return
        meta = orjson.dumps([rid, ts], option=orjson.OPT_SERIALIZE_NUMPY)
        shape = ",".join(str(d) for d in rows.shape)
        data = np.ascontiguousarray(rows).tobytes()
        n = rows.shape[0]
        row = (seq, stream, topic, n, time.time(), meta, rows.dtype.str, shape, data)
        self._appended.append(row)

    def resume(self, stream: str, at: tuple[int, int], state: Mapping[str, Array] | None) -> None:
        """The stream now starts at ``at``, with ``state`` (written at the next commit)."""
        self._forgotten.discard(stream)
        self._resumed[stream] = (at[0], at[1], _pack(state) if state else None, time.time())

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
            db.executemany(
                "INSERT INTO readings VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", self._appended
            )
            for stream, (seq, row, state, at) in self._resumed.items():
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
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._appended.clear()
        self._resumed.clear()
        self._forgotten.clear()

    def restore(
        self,
    ) -> Iterator[tuple[str, dict[str, Array] | None, list[Journalled], float]]:
        """Each journalled stream: its saved state, its readings from where it resumes, and
        when it was last heard from (``time.time()``), least recently heard first."""
        starts = {
            row[0]: (row[1], row[2], row[3], row[4])
            for row in self._db.execute("SELECT stream, seq, row, state, at FROM streams")
        }
        heard = dict(self._db.execute("SELECT stream, max(at) FROM readings GROUP BY stream"))
        keys = set(heard) | set(starts)
        last = {k: max(heard.get(k, 0.0), starts.get(k, (0, 0, None, 0.0))[3]) for k in keys}
        for stream in sorted(keys, key=lambda k: last[k]):
            seq0, row0, state, _ = starts.get(stream, (0, 0, None, 0.0))
            readings = []
            query = (
                "SELECT seq, topic, at, meta, dtype, shape, data FROM readings "
                "WHERE stream = ? AND seq >= ? ORDER BY seq"
            )
            for seq, topic, at, meta, dtype, shape, data in self._db.execute(query, (stream, seq0)):
                rid, ts = orjson.loads(meta)
                dims = tuple(int(d) for d in shape.split(",") if d)
                rows = np.frombuffer(data, dtype=np.dtype(dtype)).reshape(dims)
                first = row0 if seq == seq0 else 0
                if first < rows.shape[0]:
                    readings.append(Journalled(seq, topic, rid, ts, rows, first, at))
            yield stream, (_unpack(state) if state else None), readings, last[stream]

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
