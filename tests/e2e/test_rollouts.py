"""Progressive delivery end to end: shadow, canary and A/B candidates on live readings.

Against the suite's mosquitto, with the sample model active and candidates
served over HTTP: a confidently wrong candidate (the sample model with its
classes shuffled) is rolled back from a shadow without answering a reading; a
good one (the INT8 model) is promoted; a canary answers the same streams, a
quarter of them; a module killed mid-canary resumes at its step. Every reading
is answered exactly once throughout.
"""

from __future__ import annotations

import collections
import io
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from edgeinfer.pipeline.delivery.routing import bucket
from edgeinfer.tools.recordings import Recordings
from tests.support import ONNX_MODEL, ROOT, ModuleProcess
from tests.updates_support import (
    HAR_LABELS,
    HAR_SELF_TEST,
    ModelServer,
    Rig,
    desired_for,
    nan_below_model,
    update_is,
    wait_reported,
)

INT8 = (ROOT / "models" / "har" / "int8-static" / "model.onnx").read_bytes()


def shuffled_model() -> bytes:
    """The sample model, its classes rotated: as sure of itself as ever, and wrong."""
    model = onnx.load(str(ONNX_MODEL))
    graph = model.graph
    (out,) = graph.output
    for node in graph.node:
        node.output[:] = ["unshuffled" if o == out.name else o for o in node.output]
    graph.initializer.append(numpy_helper.from_array(np.array([1, 2, 3, 0], np.int64), "perm"))
    graph.node.append(helper.make_node("Gather", ["unshuffled", "perm"], [out.name], axis=1))
    return bytes(model.SerializeToString())


#: The INT8 model is 2-4x slower a reading than the float one at small batches here (a
#: tiny model: per-call overhead): its latency is not what these tests judge.
LENIENT = {"max_latency_ratio": 50.0}


def rollout_desired(server: ModelServer, body: bytes, version: str, **rollout: Any) -> dict:
    url = server.add(f"/har-{version}.onnx", body)
    if body == INT8:
        rollout.setdefault("gates", LENIENT)
    return desired_for(
        url,
        body,
        version=version,
        labels=HAR_LABELS,
        rollout=rollout,
        self_test={"inputs": HAR_SELF_TEST["inputs"]},
    )


def send(rig: Rig, recordings: Recordings, ids: range, devices: list[str] | None = None) -> None:
    devices = devices or ["dev0"]
    for i in ids:
        topic = rig.module.topic(devices[i % len(devices)])
        rig.pub.send(topic, {"id": i, "features": recordings.windows[i % 40].tolist()})
    rig.pub.flush()


def send_until(
    rig: Rig,
    recordings: Recordings,
    matches: Callable[[dict[str, Any]], bool],
    chunk: int,
    devices: list[str] | None = None,
) -> tuple[dict[str, Any], int]:
    """Send readings ``chunk`` at a time until a reported state matches; (it, readings sent).

    Mirrored runs are bounded by a CPU budget, so how many of one burst a shadow
    compares depends on the machine's load: more traffic, as live sensors would
    send, brings the verdict without the test guessing how much is enough.
    """
    for sent in range(chunk, 10 * chunk + 1, chunk):
        send(rig, recordings, range(sent - chunk, sent), devices=devices)
        try:
            return wait_reported(rig.sink, matches, timeout=3), sent
        except AssertionError:
            continue
    return wait_reported(rig.sink, matches), sent


def split(rig: Rig, inside: int, outside: int, percent: float) -> list[str]:
    """Device names, ``inside`` of them in the candidate's ``percent`` and ``outside`` not.

    Topics carry the rig's random prefix; choosing the streams by their bucket keeps
    what a test asserts from depending on how that prefix happened to hash.
    """
    names = [f"dev{n}" for n in range(10_000)]
    ins = [d for d in names if bucket(rig.module.topic(d)) < percent][:inside]
    outs = [d for d in names if bucket(rig.module.topic(d)) >= percent][:outside]
    return ins + outs


def wait_answered(rig: Rig, ids: range, timeout: float = 20) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        results = rig.results()
        if {d["id"] for d in results} >= set(ids):
            return results
        time.sleep(0.05)
    missing = set(ids) - {d["id"] for d in rig.results()}
    raise AssertionError(f"{len(missing)} readings unanswered")


def exactly_once(results: list[dict[str, Any]]) -> None:
    counts = collections.Counter(d["id"] for d in results)
    twice = [i for i, n in counts.items() if n > 1]
    assert twice == [], f"answered more than once: {twice[:10]}"


def test_a_confidently_wrong_candidate_in_shadow_is_rolled_back_and_never_answers(
    rig: Rig, server: ModelServer, recordings: Recordings
) -> None:
    rig.sink.client.subscribe(f"edgeinfer/{rig.module.module_id}/shadow/#", qos=0)
    rig.desire(
        rollout_desired(
            server, shuffled_model(), "9.0.0", mode="shadow", percent=100, min_samples=40
        )
    )
    wait_reported(rig.sink, lambda d: d.get("rollout", {}).get("verdict") == "running")
    report, sent = send_until(rig, recordings, update_is("rolled_back", "9.0.0"), 200)
    assert "min_agreement" in report["update"]["error"]
    rollout = report["rollout"]
    assert rollout["verdict"] == "rolled_back"
    assert rollout["compared"] == 40  # judged on exactly min_samples mirrored readings
    results = wait_answered(rig, range(sent))
    assert {d["version"] for d in results} == {"1.0.0"}  # the candidate answered nothing
    exactly_once(results)
    shadow = rig.sink.docs("/shadow/")
    assert shadow and {d["version"] for d in shadow} == {"9.0.0"}
    assert rig.link("current").endswith("1.0.0")
    # The retained document again (a reconnect) does not bring it back.
    rig.module.stop()
    rig.module.start()
    time.sleep(1)
    assert rig.sink.docs("/reported")[-1]["update"]["state"] in ("failed", "idle")


def test_a_good_candidate_in_shadow_is_promoted_through_the_store(
    rig: Rig, server: ModelServer, recordings: Recordings
) -> None:
    rig.desire(rollout_desired(server, INT8, "1.1.0", mode="shadow", percent=50, min_samples=30))
    wait_reported(rig.sink, lambda d: d.get("rollout", {}).get("verdict") == "running")
    report, sent = send_until(
        rig, recordings, lambda d: d.get("rollout", {}).get("verdict") == "promoted", 150
    )
    assert report["update"]["state"] == "probation"  # promoted: on probation like any update
    assert report["model"]["version"] == "1.1.0"
    gates = report["rollout"]["gates"]
    assert gates["min_agreement"]["value"] >= 0.9
    wait_reported(rig.sink, update_is("active", "1.1.0"), timeout=30)
    assert rig.link("current").endswith("1.1.0") and rig.link("previous").endswith("1.0.0")
    send(rig, recordings, range(sent, sent + 10))
    results = wait_answered(rig, range(sent + 10))
    assert {d["version"] for d in results if d["id"] >= sent} == {"1.1.0"}
    exactly_once(results)


def test_a_canary_answers_a_quarter_of_the_streams_always_the_same_ones(
    rig: Rig, server: ModelServer, recordings: Recordings
) -> None:
    rig.desire(
        rollout_desired(
            server, INT8, "1.1.0", mode="canary", steps=[25, 100], dwell_s=600, min_samples=10
        )
    )
    wait_reported(rig.sink, lambda d: d.get("rollout", {}).get("percent") == 25)
    devices = split(rig, 10, 30, 25)
    send(rig, recordings, range(400), devices=devices)
    results = wait_answered(rig, range(400))
    exactly_once(results)
    by_topic: dict[str, set[str]] = collections.defaultdict(set)
    for doc in results:
        by_topic[doc["topic"]].add(doc["version"])
    assert all(len(v) == 1 for v in by_topic.values()), "a stream switched versions"
    canary = {t for t, v in by_topic.items() if v == {"1.1.0"}}
    assert canary == {t for t in by_topic if bucket(t) < 25}  # sticky by topic
    assert canary == {rig.module.topic(d) for d in devices[:10]}
    report = wait_reported(rig.sink, lambda d: d.get("rollout", {}).get("compared", 0) >= 10)
    counts = report["rollout"]["counts"]
    assert counts["1.1.0"]["answered"] > 0 and counts["active"]["answered"] > 0
    shown = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgeinfer",
            "status",
            "--module-id",
            rig.module.module_id,
            "--broker",
            rig.module.cmd[rig.module.cmd.index("--broker") + 1],
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert "rollout   canary of har 1.1.0: step 1/2, 25%" in shown
    assert re.search(r"  1\.1\.0\s+\d+\s+0\s+0", shown), shown
    assert re.search(r"  min_agreement\s+[\d.]+\s+0\.9\s+ok", shown), shown


def test_a_module_killed_mid_canary_resumes_at_its_step(
    rig: Rig, server: ModelServer, recordings: Recordings, modules: list[ModuleProcess]
) -> None:
    rig.desire(
        rollout_desired(
            server, INT8, "1.1.0", mode="canary", steps=[25, 50, 100], dwell_s=2, min_samples=10
        )
    )
    wait_reported(rig.sink, lambda d: d.get("rollout", {}).get("verdict") == "running")
    devices = split(rig, 10, 30, 25)
    send(rig, recordings, range(200), devices=devices)  # a quarter of 40 streams: 50 readings
    wait_reported(rig.sink, lambda d: d.get("rollout", {}).get("step") == 1, timeout=30)
    rig.module.signal(signal.SIGKILL)
    rig.module.wait()
    before = len(rig.sink.docs("/reported"))
    rig.module.start()
    resumed = wait_reported(
        rig.sink, lambda d: d.get("rollout", {}).get("resumed") is True, timeout=20
    )
    assert resumed["rollout"]["step"] == 1  # where it was, not from the start
    assert len(rig.sink.docs("/reported")) > before
    send(rig, recordings, range(200, 400), devices=devices)
    wait_reported(rig.sink, update_is("active", "1.1.0"), timeout=40)
    results = wait_answered(rig, range(400))
    assert {d["id"] for d in results} >= set(range(400))  # at least once across the kill


def test_a_newer_desired_state_supersedes_a_rollout(
    rig: Rig, server: ModelServer, recordings: Recordings
) -> None:
    rig.desire(rollout_desired(server, INT8, "1.1.0", mode="ab", percent=50, min_samples=5))
    wait_reported(rig.sink, lambda d: d.get("rollout", {}).get("mode") == "ab")
    devices = split(rig, 4, 4, 50)
    # Until the verdict: how many readings both versions compare depends on the load.
    passing = lambda d: d.get("rollout", {}).get("verdict") == "passing"  # noqa: E731
    report, sent = send_until(rig, recordings, passing, chunk=40, devices=devices)
    assert report["update"]["state"] == "probation"  # A/B waits for an operator
    url = server.add("/har-1.2.0.onnx", INT8)
    rig.desire(desired_for(url, INT8, version="1.2.0", labels=HAR_LABELS))
    wait_reported(rig.sink, update_is("active", "1.2.0"), timeout=30)
    assert "rollout" not in rig.sink.docs("/reported")[-1]
    send(rig, recordings, range(sent, sent + 20), devices=devices)
    results = wait_answered(rig, range(sent + 20))
    assert {d["version"] for d in results if d["id"] >= sent} == {"1.2.0"}
    exactly_once(results)


@pytest.mark.parametrize(
    ("rollout", "message"),
    [
        ({"mode": "blue"}, r"rollout.mode = 'blue': expected one of \['shadow', 'canary', 'ab'\]"),
        ({"mode": "shadow", "percent": 0}, r"rollout.percent = 0: expected a percentage"),
        (
            {"mode": "canary", "steps": [50, 5]},
            r"rollout.steps = \[50.0, 5.0\]: expected strictly increasing",
        ),
        ({"mode": "ab", "gates": {"min_agreemnt": 0.9}}, r"rollout.gates = .*min_agreemnt"),
        ({"mode": "shadow", "on_fail": "explode"}, r"rollout.on_fail = 'explode'"),
        ({"mode": "canary", "steps": 5}, r"rollout.steps = 5: expected a list"),
        ({"mode": "canary", "steps": [5, 5]}, r"expected strictly increasing"),
        ({"mode": "shadow", "min_samples": 0.5}, r"rollout.min_samples = 0.5: expected a whole"),
    ],
)
def test_a_bad_rollout_block_is_refused_naming_the_key(
    rig: Rig, server: ModelServer, rollout: dict[str, Any], message: str
) -> None:
    rig.desire(rollout_desired(server, INT8, "1.1.0", **rollout))
    report = wait_reported(rig.sink, update_is("failed", "1.1.0"))
    assert re.search(message, report["update"]["error"]), report["update"]["error"]


def test_a_canary_that_answers_nan_is_rolled_back_on_its_own_answers(
    rig: Rig, server: ModelServer, recordings: Recordings
) -> None:
    """Nothing to compare a NaN with: the error and non-finite gates judge it anyway."""
    means = recordings.windows.mean(axis=(1, 2))
    best = int(means.argmax())
    body = nan_below_model(float(means[best]) - 1e-3)  # finite on one recording of 40
    url = server.add("/har-6.6.6.onnx", body)
    self_test = {"inputs": {"features": recordings.windows[best].tolist()}}
    rig.desire(
        desired_for(
            url,
            body,
            version="6.6.6",
            self_test=self_test,
            rollout={"mode": "canary", "steps": [50, 100], "min_samples": 10, "dwell_s": 600},
        )
    )
    wait_reported(rig.sink, lambda d: d.get("rollout", {}).get("verdict") == "running")
    devices = split(rig, 10, 10, 50)
    send(rig, recordings, range(200), devices=devices)
    report = wait_reported(rig.sink, update_is("rolled_back", "6.6.6"))
    assert "max_non_finite_rate" in report["update"]["error"]
    results = wait_answered(rig, range(200))
    exactly_once(results)
    send(rig, recordings, range(200, 220), devices=devices)
    later = wait_answered(rig, range(220))
    assert {d["version"] for d in later if d["id"] >= 200} == {"1.0.0"}


def test_a_paused_rollout_stays_paused_across_a_restart(
    rig: Rig, server: ModelServer, recordings: Recordings
) -> None:
    rig.desire(
        rollout_desired(
            server,
            shuffled_model(),
            "9.1.0",
            mode="canary",
            steps=[50, 100],
            min_samples=20,
            on_fail="pause",
        )
    )
    wait_reported(rig.sink, lambda d: d.get("rollout", {}).get("verdict") == "running")
    devices = split(rig, 10, 10, 50)
    send(rig, recordings, range(200), devices=devices)
    paused = wait_reported(rig.sink, lambda d: d.get("rollout", {}).get("verdict") == "paused")
    assert "min_agreement" in paused["rollout"]["reason"]
    rig.module.stop()
    rig.module.start()
    again = wait_reported(
        rig.sink,
        lambda d: d.get("rollout", {}).get("reason") == "paused before the module restarted",
    )
    assert again["rollout"]["percent"] == 0.0
    send(rig, recordings, range(200, 260), devices=devices)
    results = wait_answered(rig, range(260))
    assert {d["version"] for d in results if d["id"] >= 200} == {"1.0.0"}  # out of the traffic


def test_sticky_by_a_payload_field_routes_devices_and_keeps_each_topics_order(
    rig: Rig, server: ModelServer, recordings: Recordings
) -> None:
    rig.desire(
        rollout_desired(
            server, INT8, "1.1.0", mode="ab", percent=50, sticky_by="device", min_samples=10**6
        )
    )
    wait_reported(rig.sink, lambda d: d.get("rollout", {}).get("mode") == "ab")
    topic = rig.module.topic("gateway")
    devices = [f"dev-{n}" for n in range(16)]
    for i in range(160):  # every device on the one topic
        row = recordings.windows[i % 40].tolist()
        rig.pub.send(topic, {"id": i, "device": devices[i % 16], "features": row})
    rig.pub.send(topic, {"id": 160, "features": recordings.windows[0].tolist()})  # no field
    npy = io.BytesIO()
    np.save(npy, recordings.windows[1].astype(np.float32))
    rig.pub.send(topic, npy.getvalue())  # not JSON
    rig.pub.flush()
    results = wait_answered(rig, range(161))
    assert rig.sink.docs("/errors") == []  # the active model still takes every reading
    by_device = collections.defaultdict(set)
    for doc in results:
        if doc["id"] is not None and doc["id"] < 160:
            by_device[devices[doc["id"] % 16]].add(doc["version"])
    assert all(len(v) == 1 for v in by_device.values())
    assert {d for d, v in by_device.items() if v == {"1.1.0"}} == {
        d for d in devices if bucket(d) < 50
    }
    ids = [d["id"] for d in results if d["id"] is not None]
    assert ids == sorted(ids)  # one topic: results in arrival order, whichever version


def test_buckets_spread_stream_keys_evenly_and_stay_put() -> None:
    keys = [f"site-{n % 7}/sensors/dev{n}" for n in range(20_000)]
    places = [bucket(k) for k in keys]
    assert places == [bucket(k) for k in keys]  # stable: a stream never changes version
    for percent in (5, 25, 50):
        share = sum(p < percent for p in places) / len(places) * 100
        assert abs(share - percent) < 1.0, (percent, share)
