"""Delivery guarantees end to end: order, broker restarts, crashes and graceful drain."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson

from edgeinfer.tools.broker import LocalBroker
from edgeinfer.tools.recordings import Recordings
from tests.support import ONNX_MODEL, Collector, ModuleProcess, Publisher


def reading(recordings: Recordings, i: int) -> bytes:
    return orjson.dumps({"id": i, "features": recordings.windows[i % 40].tolist()})


def send_paced(
    pub: Publisher,
    topic: str,
    recordings: Recordings,
    ids: range,
    rate: float,
    during: threading.Event | None = None,
) -> None:
    start = time.perf_counter()
    for n, i in enumerate(ids):
        delay = start + n / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        pub.send(topic, reading(recordings, i))
        if during is not None and n == len(ids) // 3:
            during.set()
    pub.flush(30)


def wait_ids(sink: Collector, want: set[int], timeout: float) -> set[int]:
    deadline = time.monotonic() + timeout
    got: set[int] = set()
    while time.monotonic() < deadline:
        got = {d["id"] for d in sink.docs("/inference/")}
        if want <= got:
            break
        time.sleep(0.05)
    return got


def test_results_for_one_topic_keep_the_order_of_its_readings(
    collector: Callable[..., Collector],
    publisher: Callable[..., Publisher],
    broker: LocalBroker,
    modules: list[ModuleProcess],
    tmp_path: Path,
    recordings: Recordings,
) -> None:
    module = ModuleProcess(broker.url, ONNX_MODEL, tmp_path).start()
    modules.append(module)
    sink = collector([module.result_topic("+")])
    pub = publisher()
    for i in range(600):
        pub.send(module.topic(f"dev{i % 3}"), reading(recordings, i))
    sink.wait_for(600, timeout=30)
    for dev in range(3):
        ids = [d["id"] for d in sink.docs(f"/dev{dev}")]
        assert ids == list(range(dev, 600, 3))
    pub.flush()


def test_after_a_broker_restart_mid_stream_every_qos1_reading_gets_a_result(
    own_broker: LocalBroker, modules: list[ModuleProcess], tmp_path: Path, recordings: Recordings
) -> None:
    """Readings in flight at the restart and readings sent while it was down all get results.

    mosquitto drops a message for a persistent session when it is published
    after a restart and before that client reconnects (mosquitto issue #769),
    so the clients come back in a fixed order: the sink (0.1 s), the module
    (0.5-1 s), then the publisher (2 s), which replays what it buffered.
    """
    module = ModuleProcess(
        own_broker.url,
        ONNX_MODEL,
        tmp_path,
        env={"EDGEINFER_BROKER_RECONNECT_MIN_S": "1", "EDGEINFER_BROKER_RECONNECT_MAX_S": "1"},
    ).start()
    modules.append(module)
    sink = Collector(own_broker.url, [module.result_topic("+")], persistent=True)
    pub = Publisher(own_broker.url, persistent=True, reconnect_delay_s=2.0)
    third = threading.Event()
    sender = threading.Thread(
        target=send_paced, args=(pub, module.topic("imu"), recordings, range(600), 300, third)
    )
    sender.start()
    assert third.wait(10)
    own_broker.restart()
    sender.join(60)
    got = wait_ids(sink, set(range(600)), timeout=30)
    assert set(range(600)) - got == set()
    assert module.metric("edgeinfer_broker_connects_total") >= 2
    assert module.http_get("/readyz")[0] == 200
    sink.close()
    pub.close()


def test_a_module_killed_under_load_loses_no_reading_once_restarted(
    collector: Callable[..., Collector],
    publisher: Callable[..., Publisher],
    broker: LocalBroker,
    modules: list[ModuleProcess],
    tmp_path: Path,
    recordings: Recordings,
) -> None:
    module = ModuleProcess(broker.url, ONNX_MODEL, tmp_path).start()
    modules.append(module)
    status_topic = f"edgeinfer/{module.module_id}/status"
    sink = collector([module.result_topic("+"), status_topic])
    pub = publisher()
    third = threading.Event()
    sender = threading.Thread(
        target=send_paced, args=(pub, module.topic("imu"), recordings, range(1500), 500, third)
    )
    sender.start()
    assert third.wait(10)
    module.signal(signal.SIGKILL)
    module.wait()
    time.sleep(0.5)  # readings keep arriving while it is down
    assert sink.docs("/status")[-1] == {"state": "offline"}, "the last will should have fired"
    module.start()
    sender.join(60)
    got = wait_ids(sink, set(range(1500)), timeout=30)
    assert set(range(1500)) - got == set()
    pub.flush()


def test_sigterm_drains_in_flight_readings_and_exits_0_with_offline_status(
    collector: Callable[..., Collector],
    publisher: Callable[..., Publisher],
    broker: LocalBroker,
    modules: list[ModuleProcess],
    tmp_path: Path,
    recordings: Recordings,
) -> None:
    module = ModuleProcess(broker.url, ONNX_MODEL, tmp_path).start()
    modules.append(module)
    sink = collector([module.result_topic("+"), f"edgeinfer/{module.module_id}/status"])
    pub = publisher()
    for i in range(2000):
        pub.send(module.topic("imu"), reading(recordings, i))
    pub.flush()
    while not sink.docs("/inference/"):
        time.sleep(0.005)
    started = time.monotonic()
    module.signal(signal.SIGTERM)
    assert module.wait(10) == 0
    took = time.monotonic() - started
    assert took < 5, f"shutdown took {took:.1f} s"
    answered_before = Counter(d["id"] for d in sink.docs("/inference/"))
    time.sleep(0.3)
    assert sink.docs("/status")[-1] == {"state": "offline"}
    assert "draining" in module.log()
    # Readings the module had not taken stayed at the broker and come now.
    module.start()
    got = wait_ids(sink, set(range(2000)), timeout=30)
    assert set(range(2000)) - got == set()
    counts = Counter(d["id"] for d in sink.docs("/inference/"))
    duplicated = [i for i, n in counts.items() if n > 1]
    assert duplicated == [], f"{len(duplicated)} readings answered twice ({len(answered_before)} "
    "answered before the restart): the drained ones should have been acknowledged"
    pub.flush()


def test_results_at_qos_0_are_published(
    collector: Callable[..., Collector],
    publisher: Callable[..., Publisher],
    broker: LocalBroker,
    modules: list[ModuleProcess],
    tmp_path: Path,
    recordings: Recordings,
) -> None:
    """paho writes a QoS 0 message inside publish() and reports it at once: the outbox,
    which calls it, must not wait on itself (it hung on the first QoS 0 result)."""
    env = {"EDGEINFER_TOPICS_OUTPUT_QOS": "0"}
    module = ModuleProcess(broker.url, ONNX_MODEL, tmp_path, env=env).start()
    modules.append(module)
    sink = collector([module.result_topic("+")])
    pub = publisher()
    for i in range(50):
        pub.send(module.topic("imu"), reading(recordings, i))
    pub.flush()
    assert wait_ids(sink, set(range(50)), timeout=15) == set(range(50))
    assert module.http_get("/readyz")[0] == 200
    pub.flush()
