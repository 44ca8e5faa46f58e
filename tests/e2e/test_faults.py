"""Delivery under faults: refused publishes, slow reconnects, retained readings, strict brokers.

Each test puts a fault between the module and a real mosquitto (tests/faults.py)
and checks one promise of the README's "Guarantees".
"""

from __future__ import annotations

import io
import itertools
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest

from edgeinfer.tools.broker import LocalBroker
from edgeinfer.tools.recordings import Recordings
from tests.faults import TcpProxy, acl_broker
from tests.support import ONNX_MODEL, Collector, ModuleProcess, Publisher, unique
from tests.updates_support import slow_model


def reading(recordings: Recordings, i: int) -> dict[str, object]:
    return {"id": i, "features": recordings.windows[i % 40].tolist()}


def wait_until(predicate: object, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return bool(predicate())  # type: ignore[operator]


@pytest.fixture
def proxy(broker: LocalBroker) -> Iterator[TcpProxy]:
    p = TcpProxy(broker.port)
    yield p
    p.close()


def test_a_result_the_broker_refuses_is_reported_on_the_errors_topic_and_only_then_acked(
    tmp_path: Path, modules: list[ModuleProcess], recordings: Recordings
) -> None:
    mid = unique("acl")
    acl = f"topic readwrite {mid}/#\ntopic readwrite edgeinfer/#\n"  # denied/# is not granted
    with acl_broker(tmp_path, acl)[0].start() as broker:
        module = ModuleProcess(
            broker.url,
            ONNX_MODEL,
            tmp_path,
            module_id=mid,
            env={"EDGEINFER_TOPICS_OUTPUT": "denied/{topic}"},
        ).start()
        modules.append(module)
        sink = Collector(broker.url, [module.errors_topic])
        pub = Publisher(broker.url)
        for i in range(10):
            pub.send(module.topic("imu"), reading(recordings, i))
        sink.wait_for(10)
        errors = sorted(sink.docs(), key=lambda d: d["id"])
        # Once failed under the suite's parallel load with no report at all: say what the
        # module and the broker saw if it does again.
        seen = f"module: {module.log()[-3000:]}\nbroker: {broker.log_path.read_text()[-2000:]}"
        assert [d["id"] for d in errors] == list(range(10)), seen
        for doc in errors:
            assert doc["error"] == "publish_refused"
            assert doc["topic"] == module.topic("imu")
            assert doc["reason"] == (
                f"the broker refused the result on 'denied/{module.topic('imu')}': "
                "Not authorized (0x87)"
            )
        assert module.wait_metric("edgeinfer_publish_refused_total", 10) == 10
        assert wait_until(lambda: module.metric("edgeinfer_unacked_readings") == 0)
        assert f"the broker refused the result on 'denied/{module.topic('imu')}'" in module.log()
        sink.close()
        pub.close()


def test_when_the_errors_topic_is_refused_too_the_reading_waits_unacknowledged_until_it_can_be(
    tmp_path: Path, modules: list[ModuleProcess], recordings: Recordings
) -> None:
    mid = unique("acl")
    base = f"topic readwrite {mid}/#\ntopic readwrite edgeinfer/{mid}/status\n"
    base += f"topic readwrite edgeinfer/{mid}/reported\ntopic readwrite edgeinfer/{mid}/desired\n"
    broker, acl_file = acl_broker(tmp_path, base)
    broker.start()
    try:
        module = ModuleProcess(
            broker.url,
            ONNX_MODEL,
            tmp_path,
            module_id=mid,
            env={"EDGEINFER_TOPICS_OUTPUT": "denied/{topic}"},
        ).start()
        modules.append(module)
        pub = Publisher(broker.url)
        for i in range(5):
            pub.send(module.topic("imu"), reading(recordings, i))
        assert wait_until(lambda: module.metric("edgeinfer_unacked_readings") == 5)
        # The readings are in before the broker's refusals of their reports come back.
        assert wait_until(lambda: module.http_get("/readyz")[0] == 503)
        status, body = module.http_get("/readyz")
        assert status == 503
        assert "the broker refuses answers" in orjson.loads(body)["reason"]
        # The operator grants the errors topic: the waiting reports go out, the readings are acked.
        acl_file.write_text(base + f"topic readwrite edgeinfer/{mid}/errors\n")
        broker.reload()
        sink = Collector(broker.url, [module.errors_topic])
        assert wait_until(lambda: module.metric("edgeinfer_unacked_readings") == 0, 40)
        assert module.http_get("/readyz")[0] == 200
        assert sorted({d["id"] for d in sink.docs()}) == list(range(5))
        sink.close()
        pub.close()
    finally:
        broker.cleanup()


def first_arrivals(ids: list[int]) -> list[int]:
    seen: set[int] = set()
    order = []
    for i in ids:
        if i not in seen:
            seen.add(i)
            order.append(i)
    return order


def test_results_keep_their_order_per_topic_across_reconnects_with_a_slow_connack(
    collector: Callable[..., Collector],
    publisher: Callable[..., Publisher],
    broker: LocalBroker,
    proxy: TcpProxy,
    modules: list[ModuleProcess],
    tmp_path: Path,
    recordings: Recordings,
) -> None:
    """The module has a backlog when the link drops: it answers it while reconnecting, and
    the broker takes 0.5 s to answer the CONNECT (the proxy holds the CONNACK back)."""
    proxy.first_reply_delay_s = 0.5
    model = tmp_path / "slow" / "model.onnx"
    model.parent.mkdir()
    model.write_bytes(slow_model())
    one_at_a_time = {"EDGEINFER_PIPELINE_MAX_BATCH": "1", "EDGEINFER_MODEL_THREADS": "1"}
    module = ModuleProcess(proxy.url, model, tmp_path, env=one_at_a_time).start()
    modules.append(module)
    sink = collector([module.result_topic("+")])
    pub = publisher()
    total = 4000
    payloads = [orjson.dumps(reading(recordings, i)) for i in range(total)]
    for i in range(total):
        pub.send(module.topic(f"dev{i % 2}"), payloads[i])
    pub.flush(30)
    for cuts in range(2):
        assert wait_until(lambda: module.metric("edgeinfer_queue_depth") > 300, 20)
        proxy.cut()
        assert wait_until(lambda c=cuts: proxy.connections >= c + 2, 20)
    assert wait_until(lambda: {d["id"] for d in sink.docs()} >= set(range(total)), 60)
    assert proxy.connections >= 3
    for dev in range(2):
        got = [d["id"] for d in sink.docs(f"/dev{dev}")]
        order = first_arrivals(got)
        overtaken = sum(1 for a, b in itertools.pairwise(order) if b < a)
        assert overtaken == 0, f"dev{dev}: {overtaken} results arrived before older ones"
        assert order == list(range(dev, total, 2))
    pub.flush()


def test_readyz_waits_for_the_subscriptions_so_a_reading_sent_once_ready_is_answered(
    collector: Callable[..., Collector],
    publisher: Callable[..., Publisher],
    proxy: TcpProxy,
    modules: list[ModuleProcess],
    tmp_path: Path,
    recordings: Recordings,
) -> None:
    """Ready meant connected: on a slow link (every packet to the broker 0.4 s late) the
    SUBSCRIBE reached the broker after /readyz said 200, and a reading published then, to a
    new session with no subscription yet, was dropped by the broker (a CI run lost one so,
    at the full speed of loopback)."""
    proxy.request_delay_s = 0.4
    module = ModuleProcess(proxy.url, ONNX_MODEL, tmp_path)
    modules.append(module.start(wait=False))
    sink = collector([module.result_topic("+")])
    pub = publisher()
    module.wait_ready(timeout=30)
    pub.send(module.topic("live"), reading(recordings, 7))  # straight to the broker
    pub.flush()
    assert [d["id"] for d in sink.wait_for(1, timeout=10) and sink.docs()] == [7]


def test_a_retained_reading_is_not_answered_by_default_not_even_after_a_reconnect(
    collector: Callable[..., Collector],
    publisher: Callable[..., Publisher],
    broker: LocalBroker,
    proxy: TcpProxy,
    modules: list[ModuleProcess],
    tmp_path: Path,
    recordings: Recordings,
) -> None:
    module = ModuleProcess(proxy.url, ONNX_MODEL, tmp_path)
    pub = publisher()
    pub.send(module.topic("retained"), reading(recordings, 1), retain=True)
    pub.flush()
    modules.append(module.start())
    sink = collector([module.result_topic("+")])
    pub.send(module.topic("live"), reading(recordings, 2))
    sink.wait_for(1)
    # Its acknowledgement must reach the broker first, or the cut redelivers it (at least once).
    assert wait_until(lambda: module.metric("edgeinfer_unacked_readings") == 0)
    time.sleep(0.2)
    proxy.cut()
    assert wait_until(lambda: proxy.connections >= 2 and module.http_get("/readyz")[0] == 200)
    pub.send(module.topic("live"), reading(recordings, 3))
    sink.wait_for(2)
    time.sleep(0.5)
    assert [d["id"] for d in sink.docs()] == [2, 3]
    pub.send(module.topic("retained"), b"", retain=True)  # clear it
    pub.flush()


def test_with_retained_once_a_retained_reading_is_answered_once_across_reconnects(
    collector: Callable[..., Collector],
    publisher: Callable[..., Publisher],
    broker: LocalBroker,
    proxy: TcpProxy,
    modules: list[ModuleProcess],
    tmp_path: Path,
    recordings: Recordings,
) -> None:
    module = ModuleProcess(
        proxy.url, ONNX_MODEL, tmp_path, env={"EDGEINFER_TOPICS_RETAINED": "once"}
    )
    pub = publisher()
    pub.send(module.topic("retained"), reading(recordings, 1), retain=True)
    pub.flush()
    sink = collector([module.result_topic("+")])
    modules.append(module.start())
    sink.wait_for(1)
    assert wait_until(lambda: module.metric("edgeinfer_unacked_readings") == 0)
    time.sleep(0.2)
    for _ in range(2):
        connections = proxy.connections
        proxy.cut()
        assert wait_until(
            lambda c=connections: proxy.connections > c and module.http_get("/readyz")[0] == 200
        )
    time.sleep(0.5)
    assert [d["id"] for d in sink.docs()] == [1]
    pub.send(module.topic("retained"), b"", retain=True)
    pub.flush()


def huge_npy() -> bytes:
    """A valid .npy header declaring a 1e12-element float32 array, with 16 bytes of data."""
    header = np.lib.format.header_data_from_array_1_0(np.zeros(1, np.float32))
    header["shape"] = (10**6, 10**6)
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue() + b"\x00" * 16


def test_one_bad_reading_gets_its_own_error_and_never_breaks_its_batch(
    collector: Callable[..., Collector],
    publisher: Callable[..., Publisher],
    broker: LocalBroker,
    modules: list[ModuleProcess],
    tmp_path: Path,
    recordings: Recordings,
) -> None:
    module = ModuleProcess(
        broker.url,
        ONNX_MODEL,
        tmp_path,
        env={"EDGEINFER_PIPELINE_MAX_BATCH": "16", "EDGEINFER_PIPELINE_MAX_DELAY_MS": "50"},
    ).start()
    modules.append(module)
    long_leaf = "x" * (65_535 - len(module.topic("")) - 5)
    sink = collector([module.result_topic("+"), module.errors_topic])
    pub = publisher()
    for round_no in range(3):
        base = round_no * 10
        pub.send(module.topic("ok"), reading(recordings, base + 1))
        pub.send(module.topic("npy"), huge_npy())
        pub.send(module.topic("ok"), reading(recordings, base + 2))
        pub.send(module.topic(long_leaf), reading(recordings, base + 3))
        pub.send(module.topic("ok"), reading(recordings, base + 4))
    sink.wait_for(15, timeout=20)
    time.sleep(0.3)
    results = sink.docs("/inference/")
    errors = sink.docs("/errors")
    assert sorted(d["id"] for d in results) == [1, 2, 4, 11, 12, 14, 21, 22, 24]
    assert sorted((d["error"], d["id"]) for d in errors) == sorted(
        [("bad_npy", None)] * 3 + [("bad_topic", 3), ("bad_topic", 13), ("bad_topic", 23)]
    )
    npy_error = next(d for d in errors if d["error"] == "bad_npy")
    assert npy_error["reason"] == (
        ".npy header declares shape [1000000, 1000000] of float32 (4000000000000 bytes) "
        "but the payload carries 16: expected a whole array saved with numpy.save"
    )
    assert module.metric("edgeinfer_reading_errors_total") == 6
    assert module.http_get("/readyz")[0] == 200
    pub.flush()


def test_the_module_never_has_more_answers_in_flight_than_the_brokers_receive_maximum(
    tmp_path: Path, modules: list[ModuleProcess], recordings: Recordings
) -> None:
    with LocalBroker(kind="mosquitto", max_inflight=5) as broker:
        strict = TcpProxy(broker.port)
        strict.max_inflight = 5  # a broker that enforces Receive Maximum drops such a client
        try:
            module = ModuleProcess(strict.url, ONNX_MODEL, tmp_path).start()
            modules.append(module)
            sink = Collector(broker.url, [module.result_topic("+")])
            pub = Publisher(broker.url)
            for i in range(400):
                pub.send(module.topic("imu"), reading(recordings, i))
            pub.flush(30)
            assert wait_until(lambda: len({d["id"] for d in sink.docs()}) == 400, 30)
            assert strict.violations == 0
            assert module.metric("edgeinfer_broker_connects_total") == 1
            sink.close()
            pub.close()
        finally:
            strict.close()


def test_a_link_that_stalls_without_closing_is_noticed_and_nothing_is_lost(
    collector: Callable[..., Collector],
    publisher: Callable[..., Publisher],
    broker: LocalBroker,
    proxy: TcpProxy,
    modules: list[ModuleProcess],
    tmp_path: Path,
    recordings: Recordings,
) -> None:
    module = ModuleProcess(
        proxy.url, ONNX_MODEL, tmp_path, env={"EDGEINFER_BROKER_KEEPALIVE_S": "5"}
    ).start()
    modules.append(module)
    sink = collector([module.result_topic("+")])
    pub = publisher()
    proxy.stall()  # packets stop; no FIN, no RST
    for i in range(100):
        pub.send(module.topic("imu"), reading(recordings, i))
    pub.flush()
    assert wait_until(lambda: module.http_get("/readyz")[0] == 503, 20), "stall never noticed"
    proxy.resume()
    assert wait_until(lambda: {d["id"] for d in sink.docs()} >= set(range(100)), 30)
    assert module.metric("edgeinfer_broker_connects_total") >= 2
    pub.flush()
