"""Replicas on an MQTT 5 shared subscription (``$share/<group>/...``), on real mosquitto.

Two module processes share one filter. A replica stopped with SIGTERM under load
leaves the subscription, answers what was dealt to it and ends its session: no
reading is lost and none is left in a session. A replica killed with SIGKILL
holds its share in its session until it returns (nothing lost when it does) or
the session expires (then the other replica takes every reading). Windows and
per-stream state are refused on a broker that deals out regardless of topic.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from edgeinfer.manifest.document import load_manifest
from edgeinfer.tools.broker import LocalBroker
from edgeinfer.tools.recordings import Recordings
from edgeinfer.updates.startup import seed_store
from edgeinfer.updates.store import ModelStore
from tests.fakes import runtime_options
from tests.support import ONNX_MODEL, ROOT, Collector, ModuleProcess, Publisher, unique

EXPIRY_S = 2
STREAM_MODEL = ROOT / "models" / "har" / "stream" / "model.onnx"


class Replicas:
    """Modules sharing ``$share/<group>/<prefix>/sensors/#``, and a steady load on it."""

    def __init__(
        self, broker: LocalBroker, tmp: Path, count: int = 2, expiry_s: int = EXPIRY_S
    ) -> None:
        self.broker, self.tmp = broker, tmp
        self.prefix = unique("rep")
        self.env = {
            "EDGEINFER_TOPICS_INPUTS": f"$share/{self.prefix}/{self.prefix}/sensors/#",
            "EDGEINFER_TOPICS_OUTPUT": f"{self.prefix}/inference/{{topic}}",
            "EDGEINFER_BROKER_SHARED_SESSION_EXPIRY_S": str(expiry_s),
        }
        self.modules = [self.replica(f"{self.prefix}-r{n}") for n in range(count)]
        for module in self.modules:
            module.start(wait=False)
        for module in self.modules:
            module.wait_ready(timeout=60)
        self.sink = Collector(broker.url, [f"{self.prefix}/inference/#"])
        self.sent: list[float] = []  # time.monotonic() each reading was sent, by id

    def replica(self, module_id: str) -> ModuleProcess:
        return ModuleProcess(
            self.broker.url, ONNX_MODEL, self.tmp, module_id=module_id, env=self.env
        )

    def load(self, recordings: Recordings, count: int, rate: float) -> threading.Thread:
        """Send ``count`` readings at ``rate`` a second over 10 topics, from a thread."""

        def send() -> None:
            pub = Publisher(self.broker.url)
            start = time.monotonic()
            for i in range(count):
                delay = start + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                self.sent.append(time.monotonic())
                row = recordings.windows[i % 40].tolist()
                pub.send(f"{self.prefix}/sensors/dev{i % 10}", {"id": i, "features": row})
            pub.close()

        thread = threading.Thread(target=send, daemon=True)
        thread.start()
        return thread

    def answered(self) -> dict[int, dict[str, Any]]:
        return {doc["id"]: doc for doc in self.sink.docs()}

    def wait_answered(self, ids: set[int], timeout: float = 30) -> set[int]:
        """The ids of ``ids`` still unanswered at the timeout (empty when all were)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not ids <= set(self.answered()):
            time.sleep(0.1)
        return ids - set(self.answered())


def test_a_replica_stopped_under_load_leaves_nothing_unanswered(
    broker: LocalBroker, tmp_path: Path, recordings: Recordings
) -> None:
    reps = Replicas(broker, tmp_path)
    a, b = reps.modules
    sender = reps.load(recordings, 3000, rate=400)
    while len(reps.sent) < 1000:
        time.sleep(0.02)
    a.signal(signal.SIGTERM)
    assert a.wait(30) == 0
    sender.join(30)
    missing = reps.wait_answered(set(range(3000)))
    assert missing == set(), f"{len(missing)} readings lost, e.g. {sorted(missing)[:5]}"
    assert "leaving the shared subscriptions" in a.log()
    # Both took a share before the stop; the survivor took every reading after it.
    taken = b.metric("edgeinfer_messages_received_total")
    assert 1800 < taken < 3000, taken
    # The stopped replica ended its session: it comes back to none, and to no old readings.
    again = reps.replica(a.module_id).start()
    assert "(session present: False)" in again.log(), again.log()[-800:]
    reps.sink.close()


def test_a_killed_replicas_share_waits_for_it_and_others_take_all_after_the_expiry(
    broker: LocalBroker, tmp_path: Path, recordings: Recordings
) -> None:
    reps = Replicas(broker, tmp_path)
    a, _ = reps.modules
    sender = reps.load(recordings, 4000, rate=250)  # 16 s
    while len(reps.sent) < 500:
        time.sleep(0.02)
    a.signal(signal.SIGKILL)
    a.wait(10)
    killed_at = time.monotonic()
    sender.join(40)
    late = {i for i, at in enumerate(reps.sent) if at > killed_at + EXPIRY_S + 5}
    assert len(late) > 500
    missing = reps.wait_answered(late, timeout=20)
    assert missing == set(), f"{len(missing)} readings sent after expiry + 5 s unanswered"
    # Those dealt to the killed replica meanwhile waited in its session, and are gone
    # with it: the README says so (run replicas so that they come back within the expiry).
    gap = {i for i, at in enumerate(reps.sent) if killed_at < at < killed_at + EXPIRY_S}
    lost = gap - set(reps.answered())
    assert 0 < len(lost) < len(gap)
    print(f"\nSIGKILL, no return: {len(lost)} of {len(gap)} readings in the expiry were lost")
    reps.sink.close()


def test_a_killed_replica_back_within_the_expiry_answers_its_share(
    broker: LocalBroker, tmp_path: Path, recordings: Recordings
) -> None:
    reps = Replicas(broker, tmp_path, expiry_s=30)  # the default: time to start again
    a, _ = reps.modules
    sender = reps.load(recordings, 2000, rate=250)
    while len(reps.sent) < 500:
        time.sleep(0.02)
    a.signal(signal.SIGKILL)
    a.wait(10)
    time.sleep(1)
    reps.replica(a.module_id).start()  # same id: same client id, same session
    sender.join(30)
    missing = reps.wait_answered(set(range(2000)))
    assert missing == set(), f"{len(missing)} readings lost, e.g. {sorted(missing)[:5]}"
    reps.sink.close()


def run_module(
    broker: LocalBroker, state: Path, model: Path | None = STREAM_MODEL, **env: str
) -> subprocess.CompletedProcess[str]:
    seed = ["--model", str(model)] if model is not None else []
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "edgeinfer",
            "run",
            "--broker",
            broker.url,
            *seed,
            "--module-id",
            unique("w"),
            "--state-dir",
            str(state),
        ],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_windows_on_a_shared_subscription_need_a_broker_that_keeps_topics_together(
    broker: LocalBroker, tmp_path: Path
) -> None:
    shared = {"EDGEINFER_TOPICS_INPUTS": f"$share/g/{unique('w')}/sensors/#"}
    refused = run_module(broker, tmp_path / "state", **shared)
    assert refused.returncode == 2
    assert "keeps windows or state per stream" in refused.stderr
    assert "topics.shared_by_topic" in refused.stderr
    by_topic = {**shared, "EDGEINFER_TOPICS_SHARED_BY_TOPIC": "true"}
    module = ModuleProcess(broker.url, STREAM_MODEL, tmp_path, env=by_topic)
    module.start()  # the operator says the broker hashes by topic: served
    module.stop()


def test_a_shared_subscription_never_rolls_a_windowed_current_back(
    broker: LocalBroker, tmp_path: Path
) -> None:
    """A configuration conflict, not a bad model: the store keeps serving what it served."""
    store = ModelStore(tmp_path / "state")
    seed_store(store, ONNX_MODEL, runtime_options())  # har 1.0.0, becomes previous
    manifest = dataclasses.replace(
        load_manifest(STREAM_MODEL), version="2.0.0", format="onnx", source=str(STREAM_MODEL)
    )
    store.activate(store.install(STREAM_MODEL, manifest))
    shared = {"EDGEINFER_TOPICS_INPUTS": f"$share/g/{unique('w')}/sensors/#"}
    refused = run_module(broker, tmp_path / "state", model=None, **shared)
    assert refused.returncode == 2, refused.stderr
    assert "topics.shared_by_topic" in refused.stderr and "har 2.0.0" in refused.stderr
    current = store.link("current")
    assert current is not None and current.version == "2.0.0"
    assert not store.is_failed("har", "2.0.0")
