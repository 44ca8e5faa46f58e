"""The HTTP address under slow bodies and connect floods (issue 21, findings 4 and 5).

A ``/predict`` slot is taken only once a request's body has arrived; bodies still
on their way are bounded apart (``http.body_timeout_s``, ``http.max_pending_bodies``);
the listen queue (``http.listen_backlog``) holds a burst of connects without SYN
retries, so that probes keep answering.
"""

from __future__ import annotations

import http.client
import threading
import time
from pathlib import Path

import numpy as np
import orjson
import pytest

from edgeinfer.config import HttpConfig, load_config
from edgeinfer.errors import ConfigError
from edgeinfer.http.server import HealthServer
from edgeinfer.tools.broker import LocalBroker
from edgeinfer.tools.recordings import Recordings
from tests.http_faults import SYN_RETRY_S, HalfSentBodies, HalfSentBody, connect_flood, http_server
from tests.support import ONNX_MODEL, ModuleProcess

#: A normal request behind held bodies must be answered about as fast as without them.
PROMPT_S = 2.0
#: Kubernetes' default probe timeout.
PROBE_TIMEOUT_S = 1.0


def post(port: int, body: bytes, timeout: float = 30) -> tuple[int, dict[str, object], float]:
    """(status, document, seconds) of one ``POST /predict``."""
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/predict", body, {"Content-Type": "application/json"})
        answer = conn.getresponse()
        return answer.status, orjson.loads(answer.read()), time.monotonic() - started
    finally:
        conn.close()


def reading(recordings: Recordings) -> bytes:
    return orjson.dumps({"features": recordings.windows[0].astype(np.float32).tolist()})


@pytest.mark.parametrize("held", [4, 8, 24])
def test_half_sent_bodies_do_not_shut_predict_out(
    broker: LocalBroker, tmp_path: Path, recordings: Recordings, held: int
) -> None:
    """Held half-sent bodies take no /predict slot; those beyond the cap are turned away."""
    module = ModuleProcess(broker.url, ONNX_MODEL, tmp_path).start()
    with HalfSentBodies(module.http_port, held, declared=5000, sent=1) as bodies:
        time.sleep(0.5)  # every one of them is past its headers and waiting
        status, doc, seconds = post(module.http_port, reading(recordings))
        assert status == 200, f"with {held} half-sent bodies held: {status} {doc}"
        assert seconds < PROMPT_S, f"answered after {seconds:.1f} s"

        cap = HttpConfig().max_pending_bodies
        assert held <= 8 < cap or held > cap, "the variants are below and above the cap"
        # Those over the cap are answered and closed at once (after a second's linger);
        # those within it wait for their deadline, http.body_timeout_s, well after this.
        time.sleep(3.0)
        turned_away = [b for b in bodies if b.status is not None]
        assert len(turned_away) == max(0, held - cap), [b.answer[:12] for b in turned_away]
        for body in turned_away:
            assert body.status == 503, body.answer
            assert body.header("Retry-After") == "1"
            assert "http.max_pending_bodies" in body.answer
            assert body.closed_after_s is not None
        assert all(b.closed_after_s is None for b in bodies if b not in turned_away)
    assert module.metric('edgeinfer_http_predictions_total{status="200"}') == 1


def test_a_half_sent_body_gets_408_after_the_body_timeout_and_is_closed(
    broker: LocalBroker, tmp_path: Path, recordings: Recordings
) -> None:
    """Whatever part of the body came (none, one byte, all but one, a trickle)."""
    module = ModuleProcess(broker.url, ONNX_MODEL, tmp_path).start()
    timeout = HttpConfig().body_timeout_s
    bodies = [
        HalfSentBody(module.http_port, declared=5000, sent=0),
        HalfSentBody(module.http_port, declared=5000, sent=1),
        HalfSentBody(module.http_port, declared=5000, sent=4999),
        HalfSentBody(module.http_port, declared=5000, sent=1, trickle_s=0.5),
    ]
    try:
        for body in bodies:
            assert body.wait_closed(timeout + 3.0), f"still open: {body.answer[:80]!r}"
        for body in bodies:
            assert body.status == 408, body.answer
            assert '"error":"timeout"' in body.answer
            assert "http.body_timeout_s" in body.answer
            assert body.header("Connection") == "close"
            closed = body.closed_after_s
            assert closed is not None and timeout - 0.5 < closed < timeout + 3.0, closed
        status, _, _ = post(module.http_port, reading(recordings))
        assert status == 200  # still serving
    finally:
        for body in bodies:
            body.close()
    assert module.metric('edgeinfer_http_predictions_total{status="408"}') == 4


def test_healthz_answers_under_a_connect_flood(broker: LocalBroker, tmp_path: Path) -> None:
    """200 back-to-back connects: none waits for a SYN retry, and probes keep answering."""
    module = ModuleProcess(broker.url, ONNX_MODEL, tmp_path).start()
    probes: list[tuple[int, float]] = []
    flooding = threading.Event()
    flooding.set()

    def probe() -> None:
        while flooding.is_set():
            started = time.monotonic()
            conn = http.client.HTTPConnection("127.0.0.1", module.http_port, timeout=5)
            try:
                conn.request("GET", "/healthz")
                probes.append((conn.getresponse().status, time.monotonic() - started))
            except OSError:
                probes.append((0, time.monotonic() - started))
            finally:
                conn.close()
            time.sleep(0.02)

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    try:
        flood = connect_flood(module.http_port, 200)
    finally:
        flooding.clear()
        prober.join(10)
    assert max(flood.seconds) < SYN_RETRY_S / 2, flood.summary()
    assert probes, "no probe was made during the flood"
    late = [(status, round(s, 2)) for status, s in probes if status != 200 or s >= PROBE_TIMEOUT_S]
    assert not late, f"{len(late)} of {len(probes)} /healthz probes failed: {late[:5]}"


def limited_server(predict_s: float = 0.0, **limits: float) -> tuple[HealthServer, list[float]]:
    """The HTTP server alone, in front of a predictor that takes ``predict_s`` a reading."""
    calls: list[float] = []

    def predict(body: bytes, topic: str | None) -> tuple[int, bytes]:
        calls.append(time.monotonic())
        time.sleep(predict_s)
        return 200, orjson.dumps({"bytes": len(body)})

    server = http_server(predict, max_concurrent=2, max_body=10_000, **limits)
    return server, calls


@pytest.mark.parametrize("cap", [1, 3])
def test_the_body_limits_hold_as_configured(cap: int) -> None:
    server, calls = limited_server(body_timeout_s=1.0, max_pending_bodies=cap)
    try:
        with HalfSentBodies(server.port, cap, declared=100, sent=10) as held:
            time.sleep(0.3)
            over = HalfSentBody(server.port, declared=100, sent=10)
            assert over.wait_closed(2.0), "the connection over the cap was left open"
            assert over.status == 503 and over.header("Retry-After") == "1", over.answer
            over.close()
            # A whole body is answered even with the cap full: it waits for nothing.
            status, doc, seconds = post(server.port, b"{}")
            assert (status, doc, seconds < PROMPT_S) == (200, {"bytes": 2}, True)
            for body in held:
                assert body.wait_closed(3.0)
                assert body.status == 408, body.answer
                assert 0.8 < (body.closed_after_s or 0) < 3.0
        assert len(calls) == 1  # nothing unfinished reached the predictor
    finally:
        server.stop()


def test_a_slow_body_that_arrives_in_time_is_answered() -> None:
    """A body that takes a while (but less than the timeout) waits in a pending slot."""
    server, _ = limited_server(body_timeout_s=3.0, max_pending_bodies=1)
    try:
        body = HalfSentBody(server.port, declared=4, sent=2)
        time.sleep(0.5)
        body.sock.sendall(b"{}")
        assert body.wait_status(3.0) == 200, body.answer
        assert not body.wait_closed(0.2)  # keep-alive: the whole body was read
        body.close()
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("BODY_TIMEOUT_S", "0", "http.body_timeout_s = 0.0: expected a number of seconds"),
        ("BODY_TIMEOUT_S", "301", "http.body_timeout_s = 301.0: expected a number of seconds"),
        ("MAX_PENDING_BODIES", "0", "http.max_pending_bodies = 0: expected an integer"),
        ("LISTEN_BACKLOG", "0", "http.listen_backlog = 0: expected an integer"),
        ("LISTEN_BACKLOG", "70000", "http.listen_backlog = 70000: expected an integer"),
    ],
)
def test_bad_limits_are_refused_naming_the_value(key: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_config(env={f"EDGEINFER_HTTP_{key}": value})


def test_the_configured_body_limits_reach_the_running_module(
    broker: LocalBroker, tmp_path: Path
) -> None:
    """http.body_timeout_s and http.max_pending_bodies set in the environment are the ones
    the module's HTTP address holds to, not the defaults."""
    env = {"EDGEINFER_HTTP_BODY_TIMEOUT_S": "1.5", "EDGEINFER_HTTP_MAX_PENDING_BODIES": "2"}
    module = ModuleProcess(broker.url, ONNX_MODEL, tmp_path, env=env).start()
    with HalfSentBodies(module.http_port, 3, declared=5000, sent=1) as bodies:
        time.sleep(1.0)
        assert sorted(b.status or 0 for b in bodies) == [0, 0, 503]
        for body in bodies:
            if body.status is None:
                assert body.wait_closed(3.0), "the 1.5 s body timeout was not applied"
                assert body.status == 408, body.answer
