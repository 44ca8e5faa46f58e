"""``POST /predict`` on a running module: the MQTT answer over HTTP, with its limits and token."""

from __future__ import annotations

import http.client
import io
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson

from edgeinfer.tools.broker import LocalBroker
from edgeinfer.tools.recordings import Recordings
from tests.http_faults import http_server
from tests.support import ONNX_MODEL, Collector, ModuleProcess, Publisher, off_loopback

STREAM_MODEL = ONNX_MODEL.parent.parent / "stream" / "model.onnx"
TOKEN = "s3cret-token-0123456789"


def post(
    port: int, body: bytes, path: str = "/predict", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, object]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", path, body, {"Content-Type": "application/json", **(headers or {})})
        answer = conn.getresponse()
        return answer.status, orjson.loads(answer.read())
    finally:
        conn.close()


def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


def exchange(port: int, request: bytes) -> str:
    """Send ``request`` as it is; everything the server sends until it closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def test_a_posted_reading_gets_the_same_answer_and_error_codes_as_over_mqtt(
    collector: Callable[..., Collector],
    publisher: Callable[..., Publisher],
    broker: LocalBroker,
    modules: list[ModuleProcess],
    tmp_path: Path,
    recordings: Recordings,
) -> None:
    module = ModuleProcess(broker.url, ONNX_MODEL, tmp_path).start()
    window = recordings.windows[3].astype(np.float32)
    sink = collector([module.result_topic("+"), module.errors_topic])
    pub = publisher()
    pub.send(module.topic("a"), {"id": "m1", "features": window.tolist()})
    pub.send(module.topic("a"), {"id": "m2", "features": [1.0, 2.0]})
    sink.wait_for(2)
    over_mqtt = {d["id"]: d for d in sink.docs()}

    status, as_json = post(
        module.http_port, orjson.dumps({"id": "h1", "features": window.tolist()})
    )
    assert status == 200, as_json
    status, as_npy = post(
        module.http_port, npy(window), headers={"Content-Type": "application/x-npy"}
    )
    assert status == 200, as_npy
    for doc in (as_json, as_npy):
        assert doc["label"] == over_mqtt["m1"]["label"]
        assert doc["outputs"] == over_mqtt["m1"]["outputs"]
        assert doc["version"] == "1.0.0"
    assert as_json["id"] == "h1"

    status, refused = post(module.http_port, orjson.dumps({"id": "h2", "features": [1.0, 2.0]}))
    assert status == 400
    assert refused["error"] == over_mqtt["m2"]["error"] == "wrong_shape"
    assert refused["reason"] == over_mqtt["m2"]["reason"]
    assert refused["id"] == "h2"
    status, refused = post(module.http_port, b'{"features": [1,')
    assert (status, refused["error"]) == (400, "bad_json")
    # Posted readings are answered, not published: the broker saw only the two above.
    assert len(sink.wait_for(3, timeout=1.0)) == 2
    assert module.metric('edgeinfer_http_predictions_total{status="200"}') == 2
    assert module.metric('edgeinfer_http_predictions_total{status="400"}') == 2
    pub.flush()


def test_an_oversize_body_is_refused_before_it_is_read(broker: LocalBroker, tmp_path: Path) -> None:
    module = ModuleProcess(
        broker.url, ONNX_MODEL, tmp_path, env={"EDGEINFER_PIPELINE_MAX_PAYLOAD_BYTES": "4096"}
    ).start()
    # Headers only: a server that waited for the 50 MB would never answer.
    answer = exchange(
        module.http_port,
        b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 50000000\r\n\r\n",
    )
    assert answer.startswith("HTTP/1.1 413"), answer
    assert '"error":"oversize"' in answer
    assert "expected at most 4096" in answer
    answer = exchange(
        module.http_port,
        b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    assert answer.startswith("HTTP/1.1 411"), answer  # no size said: not read either
    assert module.wait_ready() >= 0  # still serving


def test_a_windowed_model_is_refused_with_409(broker: LocalBroker, tmp_path: Path) -> None:
    module = ModuleProcess(broker.url, STREAM_MODEL, tmp_path).start()
    status, doc = post(module.http_port, b"[0.0, 0.0, 0.0]")
    assert status == 409
    assert doc["error"] == "windowed_model"
    assert "over MQTT" in str(doc["reason"])


def test_off_loopback_the_page_and_predict_need_the_token_and_never_log_it(
    broker: LocalBroker, tmp_path: Path, recordings: Recordings
) -> None:
    closed = off_loopback(broker.url, ONNX_MODEL, tmp_path)
    for path in ("/", "/api/status"):
        status, body = get(closed.http_port, path)
        assert status == 403, path
        assert b"http.token_file" in body
    assert post(closed.http_port, b"[1]")[0] == 403
    assert get(closed.http_port, "/metrics")[0] == 200
    assert get(closed.http_port, "/readyz")[0] == 200

    guarded = off_loopback(broker.url, ONNX_MODEL, tmp_path, token=TOKEN)
    window = recordings.windows[0].astype(np.float32)
    reading = orjson.dumps({"features": window.tolist()})
    status, doc = post(guarded.http_port, reading)
    assert (status, doc["error"]) == (401, "unauthorized")
    wrong = {"Authorization": "Bearer " + TOKEN[:-1] + "x"}
    assert post(guarded.http_port, reading, headers=wrong)[0] == 401
    right = {"Authorization": f"Bearer {TOKEN}"}
    assert post(guarded.http_port, reading, headers=right)[0] == 200
    status, page = get(guarded.http_port, "/")
    assert status == 401 and b"Bearer token" in page  # the page that asks for it
    assert get(guarded.http_port, "/", right)[0] == 200
    assert get(guarded.http_port, "/api/status", right)[0] == 200
    assert get(guarded.http_port, "/metrics")[0] == 200  # scrapers carry no token
    guarded.stop()
    assert TOKEN not in guarded.log()


def test_requests_beyond_the_concurrency_bound_are_turned_away_not_queued() -> None:
    """One stage: the HTTP server in front of a predictor that holds its callers."""
    release = threading.Event()
    entered = threading.Semaphore(0)

    def slow(body: bytes, topic: str | None) -> tuple[int, bytes]:
        entered.release()
        release.wait(10)
        return 200, b'{"ok": true}'

    server = http_server(slow, max_concurrent=2, max_body=1000)
    try:
        answers: list[int] = []
        held = [
            threading.Thread(target=lambda: answers.append(post(server.port, b"{}")[0]))
            for _ in range(2)
        ]
        for thread in held:
            thread.start()
        for _ in range(2):
            assert entered.acquire(timeout=5)
        started = time.monotonic()
        status, doc = post(server.port, b"{}")
        assert (status, doc["error"]) == (429, "busy")
        assert time.monotonic() - started < 2  # turned away at once, not after a wait
        release.set()
        for thread in held:
            thread.join(10)
        assert answers == [200, 200]
        assert post(server.port, b"{}")[0] == 200  # room again
    finally:
        release.set()
        server.stop()


def test_a_refused_body_is_never_taken_for_the_next_request(
    broker: LocalBroker, tmp_path: Path
) -> None:
    """A 401's unread body, on a keep-alive connection, must not be parsed as a request."""
    module = off_loopback(broker.url, ONNX_MODEL, tmp_path, token=TOKEN)
    smuggled = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
    answer = exchange(
        module.http_port,
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(smuggled)
        + smuggled,
    )
    assert answer.startswith("HTTP/1.1 401"), answer
    assert "edgeinfer_messages_received" not in answer  # /metrics was not answered
    assert answer.count("HTTP/1.1 ") == 1
    assert module.metric('edgeinfer_http_predictions_total{status="401"}') == 1


def test_expect_100_continue_gets_the_refusal_instead_of_a_go_ahead(
    broker: LocalBroker, tmp_path: Path
) -> None:
    module = ModuleProcess(
        broker.url, ONNX_MODEL, tmp_path, env={"EDGEINFER_PIPELINE_MAX_PAYLOAD_BYTES": "4096"}
    ).start()
    answer = exchange(
        module.http_port,
        b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 50000000\r\n"
        b"Expect: 100-continue\r\n\r\n",
    )
    assert answer.startswith("HTTP/1.1 413"), answer
    assert "100 Continue" not in answer


def test_a_client_sending_an_oversize_body_reads_the_refusal(
    broker: LocalBroker, tmp_path: Path
) -> None:
    """http.client sends the whole body at once: it gets the 413, not a reset connection."""
    module = ModuleProcess(
        broker.url, ONNX_MODEL, tmp_path, env={"EDGEINFER_PIPELINE_MAX_PAYLOAD_BYTES": "4096"}
    ).start()
    status, doc = post(module.http_port, b"[" + b"0.5, " * 400_000 + b"0]")
    assert (status, doc["error"]) == (413, "oversize")


def test_open_on_loopback_only_for_local_host_names(broker: LocalBroker, tmp_path: Path) -> None:
    """Without a token, a page elsewhere must not reach the module by DNS rebinding."""
    module = ModuleProcess(broker.url, ONNX_MODEL, tmp_path).start()
    assert get(module.http_port, "/api/status", {"Host": f"localhost:{module.http_port}"})[0] == 200
    status, body = get(module.http_port, "/api/status", {"Host": "evil.example:9108"})
    assert status == 403 and b"evil.example" in body
    assert post(module.http_port, b"[1]", headers={"Host": "evil.example"})[0] == 403
    assert get(module.http_port, "/metrics", {"Host": "evil.example"})[0] == 200
