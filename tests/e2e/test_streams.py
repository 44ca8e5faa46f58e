"""Streams of samples in-process: windows, order, gaps, limits, bad input, state, the journal.

A real model admitted as the module admits it, on the engine with a fake
publisher. End to end through mosquitto: tests/e2e/test_streams_e2e.py.
"""

from __future__ import annotations

import sqlite3
import time
import tracemalloc
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgeinfer.errors import ModelError, UpdateError
from edgeinfer.manifest.document import Manifest
from edgeinfer.manifest.streams import WindowSpec
from edgeinfer.pipeline.streams.windows import Stream
from edgeinfer.serving.admission import admit
from edgeinfer.tools.recordings import Recordings
from tests.compat.fetch import model_file
from tests.fakes import runtime_options
from tests.streams_support import InProcess, reference_windows, vad_reference, windowed_model
from tests.support import ONNX_MODEL


def test_windows_of_single_samples_equal_an_offline_windowed_reference(
    tmp_path: Path, recordings: Recordings
) -> None:
    model = windowed_model(tmp_path, {"size": 100, "hop": 50})
    rig = InProcess(model)
    streams = {f"s/{k}": np.concatenate(recordings.windows[2 * k : 2 * k + 2]) for k in range(6)}
    for i in range(200):  # interleaved, one 6-value sample a message
        for topic, samples in streams.items():
            rig.send(topic, {"features": samples[i].tolist(), "id": i, "ts": 1000 + i})
    got = {(d["topic"], d["window"]["first_id"]): d for d in rig.results()}
    assert len(rig.results()) == len(got) == 6 * 3  # each window once
    for topic, samples in streams.items():
        for first, last, want in reference_windows(ONNX_MODEL, samples, 100, 50):
            doc = got[(topic, first)]
            assert doc["window"] == {
                "key": topic,
                "first_id": first,
                "last_id": last,
                "first_ts": 1000 + first,
                "last_ts": 1000 + last,
                "samples": 100,
            }
            assert doc["id"] == last and doc["ts"] == 1000 + last
            np.testing.assert_allclose(doc["outputs"]["probabilities"][0], want, rtol=1e-5)
    assert len(rig.acked) == 6 * 200  # every sample acknowledged, windows or not
    assert rig.errors() == []


def test_a_reading_may_carry_several_samples(tmp_path: Path, recordings: Recordings) -> None:
    model = windowed_model(tmp_path, {"size": 100, "hop": 25})
    one, rows = InProcess(model), InProcess(model)
    samples = np.concatenate(recordings.windows[:2])
    for i in range(200):
        one.send("s/a", {"features": samples[i].tolist(), "id": i})
    for start in range(0, 200, 7):  # chunks that straddle window boundaries
        rows.send("s/a", {"features": samples[start : start + 7].tolist(), "id": start})
    assert len(one.results()) == len(rows.results()) == 5
    for a, b in zip(one.results(), rows.results(), strict=True):
        np.testing.assert_allclose(a["outputs"]["probabilities"], b["outputs"]["probabilities"])
        assert b["window"]["first_id"] == a["window"]["first_id"] // 7 * 7  # its reading's id


def test_streams_keyed_by_a_payload_field(tmp_path: Path, recordings: Recordings) -> None:
    rig = InProcess(windowed_model(tmp_path, {"size": 100, "hop": 100, "key": "device"}))
    for i in range(100):
        for device in ("d1", "d2"):
            # Both devices on one topic: the field, not the topic, keeps them apart.
            row = recordings.windows[0 if device == "d1" else 5][i].tolist()
            rig.send("s/shared", {"features": row, "id": i, "device": device})
    keys = sorted(d["window"]["key"] for d in rig.results())
    assert keys == ["d1", "d2"]
    rig.send("s/shared", {"features": recordings.windows[0][0].tolist(), "id": 7})
    rig.send("s/shared", recordings.windows[0][0].astype(np.float32).tobytes())
    (missing, binary) = rig.errors()
    assert missing["error"] == "bad_payload" and "'device'" in missing["reason"]
    assert missing["id"] == 7
    assert binary["error"] == "bad_payload"


def test_a_sample_whose_ts_goes_back_is_reported_and_not_mixed_in(
    tmp_path: Path, recordings: Recordings
) -> None:
    rig = InProcess(windowed_model(tmp_path, {"size": 100, "hop": 100}))
    samples = recordings.windows[0]
    for i in range(60):
        rig.send("s/a", {"features": samples[i].tolist(), "id": i, "ts": 10.0 + i})
    rig.send("s/a", {"features": [9.0] * 6, "id": "late", "ts": 12.5})
    for i in range(60, 100):
        rig.send("s/a", {"features": samples[i].tolist(), "id": i, "ts": 10.0 + i})
    (error,) = rig.errors()
    assert error["error"] == "out_of_order" and error["id"] == "late"
    assert "12.5" in error["reason"] and "69.0" in error["reason"]
    (result,) = rig.results()
    (_, _, want), *_ = reference_windows(ONNX_MODEL, samples, 100, 100)
    np.testing.assert_allclose(result["outputs"]["probabilities"][0], want, rtol=1e-5)


def test_a_sample_of_the_wrong_width_is_reported_and_its_stream_goes_on(
    tmp_path: Path, recordings: Recordings
) -> None:
    rig = InProcess(windowed_model(tmp_path, {"size": 100, "hop": 100}))
    for i in range(100):
        rig.send("s/a", {"features": recordings.windows[0][i].tolist(), "id": i})
        if i == 50:
            rig.send("s/a", {"features": [1.0] * 7, "id": "wide"})
    (error,) = rig.errors()
    assert error["error"] == "wrong_shape" and error["id"] == "wide"
    assert "[6]" in error["reason"]
    assert len(rig.results()) == 1


def free_width_model(tmp_path: Path) -> Path:
    """y = mean over time and width: input [batch, 10, width] with the width left free."""
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["x"], ["y"], keepdims=0, axes=[1, 2])],
        "free",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 10, "width"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch"])],
    )
    path = tmp_path / "free" / "model.onnx"
    path.parent.mkdir()
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    (path.parent / "manifest.json").write_text('{"window": {"size": 10, "hop": 10}}')
    return path


def test_a_stream_that_changes_its_sample_width_is_refused_others_are_not(
    tmp_path: Path,
) -> None:
    rig = InProcess(free_width_model(tmp_path))
    for i in range(10):
        rig.send("s/a", {"features": [1.0, 2.0, 3.0], "id": i})
        rig.send("s/b", {"features": [4.0] * 5, "id": i})  # its own width: fine
        if i == 3:
            rig.send("s/a", {"features": [1.0, 2.0], "id": "narrow"})
    (error,) = rig.errors()
    assert error["error"] == "wrong_shape" and error["id"] == "narrow"
    assert "[3]" in error["reason"] and "[2]" in error["reason"]
    assert sorted((d["topic"], d["outputs"]["y"]) for d in rig.results()) == [
        ("s/a", [2.0]),
        ("s/b", [4.0]),
    ]


def test_a_flood_of_new_stream_keys_is_refused_and_known_streams_go_on(
    tmp_path: Path, recordings: Recordings
) -> None:
    model = windowed_model(tmp_path, {"size": 100, "hop": 100, "max_streams": 3})
    rig = InProcess(model)
    for i in range(50):
        for k in range(3):
            rig.send(f"s/{k}", {"features": recordings.windows[k][i].tolist(), "id": i})
    for n in range(20):
        rig.send(f"s/flood-{n}", {"features": [0.0] * 6, "id": n})
    for i in range(50, 100):
        for k in range(3):
            rig.send(f"s/{k}", {"features": recordings.windows[k][i].tolist(), "id": i})
    errors = rig.errors()
    assert len(errors) == 20 and {e["error"] for e in errors} == {"too_many_streams"}
    assert "max_streams = 3" in errors[0]["reason"]
    assert sorted(d["topic"] for d in rig.results()) == ["s/0", "s/1", "s/2"]
    assert rig.metrics.stream_evictions._value.get() == 0


def test_a_stream_silent_past_the_timeout_is_evicted_for_a_new_one(
    tmp_path: Path, recordings: Recordings
) -> None:
    model = windowed_model(tmp_path, {"size": 100, "hop": 100, "max_streams": 2, "timeout_s": 0.2})
    rig = InProcess(model)
    for i in range(30):
        rig.send("s/old", {"features": recordings.windows[0][i].tolist(), "id": i})
        rig.send("s/kept", {"features": recordings.windows[1][i].tolist(), "id": i})
    time.sleep(0.25)
    rig.send("s/kept", {"features": recordings.windows[1][30].tolist(), "id": 30})
    rig.send("s/new", {"features": recordings.windows[2][0].tolist(), "id": 0})
    assert rig.errors() == []
    assert rig.metrics.stream_evictions._value.get() == 1
    streams = rig.engine._windowed.streams  # type: ignore[union-attr]
    assert set(streams.live) == {"s/kept", "s/new"} and not streams.quiet


@pytest.mark.parametrize("partial", ["drop", "pad"])
def test_a_gap_ends_the_partial_window_as_the_manifest_says(
    tmp_path: Path, recordings: Recordings, partial: str
) -> None:
    model = windowed_model(
        tmp_path, {"size": 100, "hop": 100, "timeout_s": 0.1, "partial": partial}
    )
    rig = InProcess(model)
    samples = recordings.windows[0]
    for i in range(40):
        rig.send("s/a", {"features": samples[i].tolist(), "id": i})
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and not rig.results():
        due = rig.engine.due()
        if due == 0:
            rig.engine.work()
        time.sleep(0.01)
    if partial == "drop":
        assert rig.results() == []
        assert rig.metrics.windows.labels("dropped")._value.get() == 1
    else:
        (doc,) = rig.results()
        assert doc["window"]["samples"] == 40 and doc["window"]["last_id"] == 39
        padded = np.zeros((100, 6), np.float32)
        padded[:40] = samples[:40]
        (_, _, want), *_ = reference_windows(ONNX_MODEL, padded, 100, 100)
        np.testing.assert_allclose(doc["outputs"]["probabilities"][0], want, rtol=1e-5)
    # After the gap the stream starts a window afresh.
    for i in range(100):
        rig.send("s/a", {"features": samples[i].tolist(), "id": 100 + i})
    assert rig.results()[-1]["window"]["first_id"] == 100


def test_the_journal_restores_buffered_samples_and_state_after_a_crash(
    tmp_path: Path, recordings: Recordings
) -> None:
    model = windowed_model(tmp_path, {"size": 100, "hop": 50})
    journal = tmp_path / "streams.sqlite"
    samples = np.concatenate(recordings.windows[:3])
    first = InProcess(model, journal)
    for i in range(170):  # windows at 100 and 150 answered; 20 samples wait
        first.send("s/a", {"features": samples[i].tolist(), "id": i})
    first.engine.work()  # what is left to commit is; then the process "dies" (no close)
    second = InProcess(model, journal)
    for i in range(170, 300):
        second.send("s/a", {"features": samples[i].tolist(), "id": i})
    firsts = [d["window"]["first_id"] for d in first.results() + second.results()]
    assert firsts == [0, 50, 100, 150, 200]  # none lost, none repeated
    want = reference_windows(ONNX_MODEL, samples[:300], 100, 50)
    got = [d["outputs"]["probabilities"][0] for d in first.results() + second.results()]
    np.testing.assert_allclose(got, [w for _, _, w in want], rtol=1e-5)


def test_a_window_answered_but_not_yet_journalled_is_answered_again_never_lost(
    tmp_path: Path, recordings: Recordings
) -> None:
    model = windowed_model(tmp_path, {"size": 100, "hop": 100})
    journal = tmp_path / "streams.sqlite"
    first = InProcess(model, journal)
    for i in range(100):
        first.send("s/a", {"features": recordings.windows[0][i].tolist(), "id": i})
    assert len(first.results()) == 1  # published, acknowledged, not yet committed as answered
    second = InProcess(model, journal)
    second.engine.work()
    (again,) = second.results()
    assert again["window"] == first.results()[0]["window"]
    rows = sqlite3.connect(journal).execute("SELECT count(*) FROM readings").fetchone()[0]
    assert rows == 100  # forgotten only once the second answer's commit comes
    second.engine.close()
    assert sqlite3.connect(journal).execute("SELECT count(*) FROM readings").fetchone()[0] == 0


def test_a_model_swap_keeps_buffered_samples_of_the_same_window(
    tmp_path: Path, recordings: Recordings
) -> None:
    model = windowed_model(tmp_path, {"size": 100, "hop": 100})
    rig = InProcess(model)
    samples = recordings.windows[0]
    for i in range(60):
        rig.send("s/a", {"features": samples[i].tolist(), "id": i})
    newer = admit(windowed_model(tmp_path, {"size": 100, "hop": 100}), None, runtime_options())
    rig.engine.swap(newer).wait(1)
    for i in range(60, 100):
        rig.send("s/a", {"features": samples[i].tolist(), "id": i})
    (doc,) = rig.results()
    assert doc["window"]["first_id"] == 0 and doc["window"]["samples"] == 100


def test_a_window_that_does_not_fit_the_model_is_refused_at_admission(tmp_path: Path) -> None:
    with pytest.raises(UpdateError, match=r"window.size = 50: input 'window' takes 100"):
        admit(windowed_model(tmp_path, {"size": 50, "hop": 10}), None, runtime_options())
    with pytest.raises(UpdateError, match=r"state.map names input 'h'"):
        admit(
            windowed_model(tmp_path, {"size": 100, "hop": 10}, {"map": {"h": "probabilities"}}),
            None,
            runtime_options(),
        )


@pytest.mark.parametrize(
    ("window", "message"),
    [
        ({"size": 0}, r"window.size = 0: expected a number of samples >= 1"),
        ({"size": 10, "hop": 11}, r"window.hop = 11: expected 1..10"),
        ({"size": 10, "partial": "zero"}, r'window.partial = .zero.: expected "drop" or "pad"'),
        ({"size": 10, "timeout_s": -1}, r"window.timeout_s = -1: expected a number of seconds"),
        ({"size": 10, "stride": 2}, r"unknown keys \['stride'\]"),
    ],
)
def test_bad_window_keys_are_named(window: dict[str, object], message: str) -> None:
    with pytest.raises(ModelError, match=message):
        Manifest.from_doc({"window": window}, "manifest.json")


def test_config_overrides_the_manifest_window(tmp_path: Path) -> None:
    options = runtime_options(window_overrides=(("size", 100), ("hop", 20), ("key", "device")))
    loaded = admit(ONNX_MODEL, None, options)
    assert loaded.streams is not None
    assert (loaded.streams.window.size, loaded.streams.window.hop) == (100, 20)
    assert loaded.streams.window.key == "device"
    loaded.model.close()
    with pytest.raises(UpdateError, match=r"window.hop = 200: expected 1..100"):
        admit(ONNX_MODEL, None, runtime_options(window_overrides=(("size", 100), ("hop", 200))))


#: What the README states one stream of the sample model holds at most.
STREAM_BYTES = 4300


def test_ten_thousand_streams_stay_within_the_stated_memory(recordings: Recordings) -> None:
    spec = WindowSpec(size=100, hop=50)
    sample = recordings.windows[0][:99]  # a window short of one sample: the fullest buffer
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    streams = []
    for k in range(10_000):
        stream = Stream(f"sensors/gw{k}/imu", spec.size, spec.hop, (6,), np.float32)
        stream.add(sample, k, float(k), k, 0.0)
        streams.append(stream)
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert used / len(streams) <= STREAM_BYTES, f"{used / len(streams):.0f} bytes a stream"
    assert all(s.nbytes <= STREAM_BYTES for s in streams)


def test_a_new_model_starts_every_streams_state_over(tmp_path: Path) -> None:
    source = model_file("silero-vad", "silero_vad/data/silero_vad.onnx")
    window = {"size": 576, "hop": 512, "fixed": {"sr": 16000}}
    model = windowed_model(tmp_path, window, {"map": {"state": "stateN"}}, source=source)
    rig = InProcess(model)
    rng = np.random.default_rng(1)
    audio = 0.3 * np.sin(np.arange(576 + 512 * 5) / 4) + 0.02 * rng.standard_normal(3136)
    audio = audio.astype(np.float32)
    for start in range(0, 576 + 512 * 2, 64):  # three windows with the first model
        rig.send("mic/a", {"features": audio[start : start + 64].tolist(), "id": start})
    newer = admit(model, None, runtime_options())
    rig.engine.swap(newer).wait(1)
    for start in range(576 + 512 * 2, len(audio), 64):
        rig.send("mic/a", {"features": audio[start : start + 64].tolist(), "id": start})
    got = [d["outputs"]["output"][0][0] for d in rig.results()]
    assert len(got) == 6
    alone = vad_reference(source, audio, 576, 512)
    np.testing.assert_allclose(got[:3], alone[:3], atol=1e-6)
    # The samples carried over; the state started from zeros at the swap.
    after = vad_reference(source, audio[512 * 3 :], 576, 512)
    np.testing.assert_allclose(got[3:], after, atol=1e-6)
    assert not np.allclose(got[3:], alone[3:], atol=1e-6), "the state made no difference"


def test_after_a_gap_overlapping_samples_alone_are_no_partial_window(
    tmp_path: Path, recordings: Recordings
) -> None:
    model = windowed_model(tmp_path, {"size": 100, "hop": 50, "timeout_s": 0.05, "partial": "pad"})
    rig = InProcess(model)
    samples = recordings.windows[0]
    for i in range(100):  # one full window; its last 50 samples stay for the next one
        rig.send("s/a", {"features": samples[i].tolist(), "id": i})
    time.sleep(0.1)
    rig.engine.work()
    assert [d["window"]["samples"] for d in rig.results()] == [100]  # nothing padded
    assert rig.metrics.windows.labels("dropped")._value.get() == 0
    for i in range(100, 110):  # fresh samples after the gap start a window of their own
        rig.send("s/a", {"features": samples[i - 100].tolist(), "id": i})
    time.sleep(0.1)
    rig.engine.work()
    padded = rig.results()[-1]["window"]
    assert (padded["first_id"], padded["last_id"], padded["samples"]) == (100, 109, 10)


def test_a_restart_after_the_journal_forgot_every_reading_keeps_new_samples(
    tmp_path: Path, recordings: Recordings
) -> None:
    model = windowed_model(tmp_path, {"size": 100, "hop": 100})
    journal = tmp_path / "streams.sqlite"
    samples = np.concatenate(recordings.windows[:3])
    first = InProcess(model, journal)
    for i in range(100):  # a window ending on a reading's last row: every reading forgotten
        first.send("s/a", {"features": samples[i].tolist(), "id": i})
    first.engine.close()
    second = InProcess(model, journal)
    for i in range(100, 150):
        second.send("s/a", {"features": samples[i].tolist(), "id": i})
    second.engine.close()
    third = InProcess(model, journal)
    for i in range(150, 200):
        third.send("s/a", {"features": samples[i].tolist(), "id": i})
    (doc,) = third.results()
    assert (doc["window"]["first_id"], doc["window"]["last_id"]) == (100, 199)


def test_a_partial_window_is_not_joined_across_a_long_restart(
    tmp_path: Path, recordings: Recordings
) -> None:
    model = windowed_model(tmp_path, {"size": 100, "hop": 100, "timeout_s": 0.2})
    journal = tmp_path / "streams.sqlite"
    first = InProcess(model, journal)
    for i in range(60):
        first.send("s/a", {"features": recordings.windows[0][i].tolist(), "id": i})
    first.engine.close()
    time.sleep(0.3)  # down longer than the gap timeout
    second = InProcess(model, journal)
    for i in range(100):
        second.send("s/a", {"features": recordings.windows[1][i].tolist(), "id": 100 + i})
    (doc,) = second.results()
    assert doc["window"]["first_id"] == 100  # the 60 old samples were a partial window


def test_a_sample_redelivered_after_a_restart_is_not_added_twice(
    tmp_path: Path, recordings: Recordings
) -> None:
    model = windowed_model(tmp_path, {"size": 100, "hop": 100})
    journal = tmp_path / "streams.sqlite"
    samples = recordings.windows[0]
    first = InProcess(model, journal)
    for i in range(50):
        first.send("s/a", {"features": samples[i].tolist(), "id": i, "ts": i})
    second = InProcess(model, journal)  # died before the last acknowledgement went out
    for i in range(49, 100):
        second.send("s/a", {"features": samples[i].tolist(), "id": i, "ts": i})
    (doc,) = second.results()
    assert (doc["window"]["first_id"], doc["window"]["last_id"]) == (0, 99)
    (want,) = [w for _, _, w in reference_windows(ONNX_MODEL, samples, 100, 100)]
    np.testing.assert_allclose(doc["outputs"]["probabilities"][0], want, rtol=1e-5)
    assert second.metrics.duplicate_samples._value.get() == 1


def test_a_recurrent_streams_state_survives_a_restart(tmp_path: Path) -> None:
    source = model_file("silero-vad", "silero_vad/data/silero_vad.onnx")
    window = {"size": 576, "hop": 512, "fixed": {"sr": 16000}}
    model = windowed_model(tmp_path, window, {"map": {"state": "stateN"}}, source=source)
    journal = tmp_path / "streams.sqlite"
    audio = (0.3 * np.sin(np.arange(576 + 512 * 5) / 4)).astype(np.float32)
    first = InProcess(model, journal)
    for start in range(0, 2000, 100):  # three windows, and samples waiting for the fourth
        first.send("mic/a", {"features": audio[start : start + 100].tolist(), "id": start})
    first.engine.work()  # the answered windows' state committed; then it "dies"
    second = InProcess(model, journal)
    for start in range(2000, len(audio), 100):
        second.send("mic/a", {"features": audio[start : start + 100].tolist(), "id": start})
    got = [d["outputs"]["output"][0][0] for d in first.results() + second.results()]
    np.testing.assert_allclose(got, vad_reference(source, audio, 576, 512), atol=1e-6)
