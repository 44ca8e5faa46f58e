"""Samples the broker redelivers, and a stream journal a failing disk damaged.

Redelivery: readings whose PUBACK was lost (a dropped connection, or a module
killed after it committed them) come again; each is recognised by its ``id``
and ``ts`` against every sample of its stream's window buffer (and what the
journal kept of the samples before it), so none enters a window twice and
none is reported ``out_of_order``. In-process first (an engine with a fake
publisher), then end to end through mosquitto, with a proxy that loses the
module's PUBACKs.

A damaged journal (random bytes, a truncated file, a zeroed header page, a
database that is not a journal) is set aside, said and reported, and the
module starts with an empty one.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import sqlite3
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeinfer.pipeline.streams.windows import Stream
from edgeinfer.tools.broker import LocalBroker
from edgeinfer.tools.recordings import Recordings
from tests.e2e.test_streams import STREAM_BYTES
from tests.faults import JOURNAL_DAMAGE, TcpProxy, corrupt_journal
from tests.streams_support import (
    InProcess,
    journal_with_samples,
    reference_windows,
    windowed_model,
)
from tests.support import ONNX_MODEL, Collector, ModuleProcess, Publisher

#: A sensor's ts: whole seconds at 5 samples a second, or tenths of a second.
TS: dict[str, Callable[[int], Any]] = {"coarse": lambda i: i // 5, "fine": lambda i: i / 10}


def _set_aside(folder: Path) -> list[Path]:
    """The journals set aside in ``folder`` (not their -wal and -shm)."""
    found = folder.glob("streams.sqlite.corrupt-*")
    return [p for p in found if not p.name.endswith(("-wal", "-shm"))]


def _sample(samples: np.ndarray, i: int, ts: str) -> dict[str, Any]:
    return {"features": samples[i].tolist(), "id": i, "ts": TS[ts](i)}


def _check_windows(docs: list[dict[str, Any]], samples: np.ndarray, count: int) -> None:
    """Every result is the reference window it names (a repeat, at least once, included)
    and every window up to ``count`` samples came: none holds a sample twice."""
    want = {first: (last, p) for first, last, p in reference_windows(ONNX_MODEL, samples, 100, 50)}
    firsts = {first for first in want if first + 99 < count}
    got = sorted({(d["window"]["first_id"], d["window"]["last_id"]) for d in docs})
    assert got == [(first, want[first][0]) for first in sorted(firsts)]
    for doc in docs:
        np.testing.assert_allclose(
            doc["outputs"]["probabilities"][0], want[doc["window"]["first_id"]][1], rtol=1e-5
        )


# -- in-process ------------------------------------------------------------------------


@pytest.mark.parametrize("ts", sorted(TS))
def test_samples_redelivered_on_a_live_stream_are_recognised_across_its_buffer(
    tmp_path: Path, recordings: Recordings, ts: str
) -> None:
    """As after a dropped connection: the module goes on, the broker sends 20 again."""
    model = windowed_model(tmp_path, {"size": 100, "hop": 50})
    rig = InProcess(model, tmp_path / "streams.sqlite")
    samples = np.concatenate(recordings.windows[:2])
    for i in range(110):
        rig.send("s/a", _sample(samples, i, ts))
    for i in range(90, 110):  # their PUBACKs were lost: the broker redelivers them
        rig.send("s/a", _sample(samples, i, ts))
    for i in range(110, 200):
        rig.send("s/a", _sample(samples, i, ts))
    assert rig.errors() == []
    _check_windows(rig.results(), samples, 200)
    assert len(rig.results()) == 3
    assert rig.metrics.duplicate_samples._value.get() == 20
    assert len(rig.acked) == 220  # the samples sent again are acknowledged, not added


@pytest.mark.parametrize("ts", sorted(TS))
def test_samples_redelivered_after_a_crash_are_recognised_even_before_the_journals_start(
    tmp_path: Path, recordings: Recordings, ts: str
) -> None:
    """Killed after committing 40..109 unacknowledged; window 0..99 answered moved the
    journal past 0..49, so 40..49 are known only from what the journal kept of them."""
    model = windowed_model(tmp_path, {"size": 100, "hop": 50})
    journal = tmp_path / "streams.sqlite"
    samples = np.concatenate(recordings.windows[:2])
    first = InProcess(model, journal)
    for i in range(110):
        first.send("s/a", _sample(samples, i, ts))
    first.engine.work()  # the answered window is committed; then the process "dies"
    kept = sqlite3.connect(journal).execute("SELECT count(*) FROM readings").fetchone()[0]
    assert kept == 60  # 50..109: the samples before 50 are forgotten
    second = InProcess(model, journal)
    for i in range(40, 200):  # 40..109 again (redelivered), then new samples
        second.send("s/a", _sample(samples, i, ts))
    assert second.errors() == []
    _check_windows(first.results() + second.results(), samples, 200)
    assert second.metrics.duplicate_samples._value.get() == 70


def test_samples_without_id_or_ts_are_never_taken_for_duplicates(
    tmp_path: Path, recordings: Recordings
) -> None:
    """The documented caveat, and its other side: equal ts without an id (or the same id
    with another ts) is a new sample."""
    model = windowed_model(tmp_path, {"size": 100, "hop": 100})
    rig = InProcess(model, tmp_path / "streams.sqlite")
    samples = recordings.windows[0]
    for i in range(50):
        rig.send("s/a", {"features": samples[i].tolist(), "ts": i // 10})
    for i in range(50, 100):
        rig.send("s/a", {"features": samples[i].tolist(), "id": 7, "ts": i})
    (doc,) = rig.results()
    assert doc["window"]["samples"] == 100
    assert rig.metrics.duplicate_samples._value.get() == 0


def test_streams_that_remember_their_samples_stay_within_the_stated_memory(
    recordings: Recordings,
) -> None:
    """The fullest buffer of one-sample readings, each with an id and a ts (each kept)."""
    sample = recordings.windows[0][:1]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    streams = []
    for k in range(2000):
        stream = Stream(f"sensors/gw{k}/imu", 100, 50, (6,), np.float32)
        for i in range(99):
            stream.add(sample, 100_000 + i, 1.7e9 + i / 10, i + 1, 0.0, key=i * 7919 + k)
        streams.append(stream)
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert used / len(streams) <= STREAM_BYTES, f"{used / len(streams):.0f} bytes a stream"
    assert all(s.nbytes <= STREAM_BYTES for s in streams)


@pytest.mark.parametrize("how", [*JOURNAL_DAMAGE, "not_a_journal", "unreadable_row"])
def test_a_damaged_journal_is_set_aside_reported_and_started_afresh(
    tmp_path: Path, recordings: Recordings, how: str
) -> None:
    model = windowed_model(tmp_path, {"size": 100, "hop": 100})
    samples = recordings.windows[0]
    journal = tmp_path / "streams.sqlite"
    if how == "not_a_journal":  # a database, but not one this module wrote
        with contextlib.closing(sqlite3.connect(journal)) as db:
            db.executescript("CREATE TABLE readings (x); INSERT INTO readings VALUES (1);")
        damaged = journal.read_bytes()
    elif how == "unreadable_row":  # passes the quick check; one row does not decode
        journal_with_samples(journal, model, samples)
        with contextlib.closing(sqlite3.connect(journal)) as db:
            db.execute("UPDATE readings SET meta = x'7b7b' WHERE seq = 5")
            db.commit()
        damaged = journal.read_bytes()
    else:
        journal_with_samples(journal, model, samples)
        damaged = corrupt_journal(journal, how)
    rig = InProcess(model, journal)
    (aside,) = _set_aside(tmp_path)
    assert aside.read_bytes() == damaged
    (report,) = rig.errors()
    assert report["error"] == "journal_lost"
    assert aside.name in report["reason"] and f"{len(damaged)} bytes" in report["reason"]
    if how == "unreadable_row":  # readable enough to say how much was lost
        assert "a row cannot be read" in report["reason"]
        assert "its 270 journalled readings of 3 streams are lost" in report["reason"]
    assert rig.results() == []  # nothing restored from it, rather than half of it
    for i in range(100):  # it serves, on a journal of its own
        rig.send("s/a", {"features": samples[i].tolist(), "id": i})
    (doc,) = rig.results()
    assert doc["window"]["samples"] == 100
    rig.engine.close()
    again = InProcess(model, journal)  # the new journal opens cleanly: nothing set aside
    assert again.errors() == [] and len(_set_aside(tmp_path)) == 1


# -- end to end ------------------------------------------------------------------------


@pytest.fixture
def proxy(broker: LocalBroker) -> Iterator[TcpProxy]:
    p = TcpProxy(broker.port, watch_pubacks=True)
    yield p
    p.close()


def _wait(predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)
    return predicate()


@pytest.mark.parametrize("ts", sorted(TS))
@pytest.mark.parametrize("fault", ["cut", "kill"])
def test_samples_whose_pubacks_were_lost_enter_no_window_twice_end_to_end(
    collector: Callable[..., Collector],
    publisher: Callable[..., Publisher],
    broker: LocalBroker,
    proxy: TcpProxy,
    tmp_path: Path,
    recordings: Recordings,
    fault: str,
    ts: str,
) -> None:
    """The PUBACKs of 40..109 are lost; then the link is cut (the module goes on) or the
    module is killed (-9) and started again: mosquitto redelivers all 70."""
    model = windowed_model(tmp_path, {"size": 100, "hop": 50})
    module = ModuleProcess(proxy.url, model, tmp_path).start()
    sink = collector([module.result_topic("imu"), module.errors_topic])
    pub = publisher()
    samples = np.concatenate(recordings.windows[:3])
    for i in range(40):
        pub.send(module.topic("imu"), _sample(samples, i, ts))
    assert _wait(lambda: proxy.pubacks >= 40), f"{proxy.pubacks} of 40 acknowledged"
    proxy.lose_pubacks(70)
    for i in range(40, 110):
        pub.send(module.topic("imu"), _sample(samples, i, ts))
    assert _wait(lambda: len(proxy.lost) == 70), f"{len(proxy.lost)} PUBACKs lost of 70"
    assert _wait(lambda: len(sink.docs("/inference/")) == 1)  # window 0..99 is answered
    time.sleep(0.3)  # and the journal has noted it (forgetting 0..49)
    if fault == "cut":
        proxy.cut()
    else:
        module.signal(signal.SIGKILL)
        module.wait()
        module.start()
    for i in range(110, 300):
        pub.send(module.topic("imu"), _sample(samples, i, ts))
    pub.flush()
    firsts = lambda: {d["window"]["first_id"] for d in sink.docs("/inference/")}  # noqa: E731
    assert _wait(lambda: 200 in firsts()), f"windows {sorted(firsts())}: expected 0..200 by 50"
    assert module.wait_metric("edgeinfer_duplicate_samples_total", 70) == 70
    assert sink.docs("/errors") == []
    _check_windows(sink.docs("/inference/"), samples, 300)
    pub.flush()


@pytest.mark.parametrize("how", JOURNAL_DAMAGE)
def test_a_module_whose_journal_is_damaged_starts_serves_and_says_what_was_lost(
    collector: Callable[..., Collector],
    publisher: Callable[..., Publisher],
    broker: LocalBroker,
    tmp_path: Path,
    recordings: Recordings,
    how: str,
) -> None:
    model = windowed_model(tmp_path, {"size": 100, "hop": 100})
    samples = recordings.windows[0]
    module = ModuleProcess(broker.url, model, tmp_path)
    module.state_dir.mkdir(parents=True)
    journal = module.state_dir / "streams.sqlite"
    journal_with_samples(tmp_path / "real.sqlite", model, samples)
    shutil.copyfile(tmp_path / "real.sqlite", journal)
    damaged = corrupt_journal(journal, how)
    sink = collector([module.result_topic("imu"), module.errors_topic])
    module.start()  # before: exit 1, "sqlite3.DatabaseError: file is not a database"
    pub = publisher()
    for i in range(100):
        pub.send(module.topic("imu"), {"features": samples[i].tolist(), "id": i})
    pub.flush()
    assert _wait(lambda: len(sink.docs("/inference/")) == 1), module.log()
    (aside,) = _set_aside(module.state_dir)
    assert aside.read_bytes() == damaged
    (report,) = sink.docs("/errors")
    assert report["error"] == "journal_lost" and aside.name in report["reason"]
    assert "set aside" in module.log() and "Traceback" not in module.log()
    pub.flush()
