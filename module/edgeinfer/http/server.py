"""The module's HTTP address: metrics, health, the status page and ``POST /predict``.

``/metrics``, ``/healthz`` and ``/readyz`` are always open (scrapers and
probes carry no token). The status page (``/``), its data (``/api/status``)
and ``/predict`` answer only the bearer token when one is configured, and
stay closed (403, saying why) when the address is not a loopback one and no
token is. A request to ``/predict`` is refused before its body is read when it
is too large. Its body must arrive whole within ``body_timeout_s`` (else 408);
a body still on its way after a moment waits in one of ``max_pending_bodies``
places (beyond them: 503), and only a request whose body has arrived takes one
of the ``max_concurrent`` places to be answered (beyond them: 429). So clients
that send headers and hold their body back cannot shut ``/predict`` out.
"""

from __future__ import annotations

import hmac
import logging
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from edgeinfer.http.pages import LOGIN_PAGE, static_file, status_page

log = logging.getLogger(__name__)

#: Returns (ready, reason); the reason says what is missing when not ready.
Readiness = Callable[[], tuple[bool, str]]
#: Answers a posted reading (body, topic) with (HTTP status, JSON document).
Predict = Callable[[bytes, str | None], tuple[int, bytes]]
#: A slow client's request is dropped after this many seconds of silence (a posted body
#: has its own, shorter deadline: ``Operator.body_timeout_s``).
CLIENT_TIMEOUT_S = 30.0
#: A body not whole this long after its headers is a slow one: it waits in one of the
#: ``max_pending_bodies`` places. A body sent with its headers (what clients do with a
#: reading's few KB) is whole by then and waits for nothing, even while those are full.
BODY_GRACE_S = 0.2
#: A refused body still on its way is read and dropped for at most this long and this much,
#: so that the client reads the refusal instead of a reset connection.
LINGER_S = 1.0
LINGER_BYTES = 16 << 20
#: Host names a page on this machine reaches the module by (anything else, on an open
#: loopback address, is a page elsewhere reaching it through DNS rebinding).
LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]", "::1")


@dataclass(frozen=True)
class Operator:
    """What the HTTP address serves to people, beyond metrics and health.

    Built from the configuration (``[http]``, ``pipeline.max_payload_bytes``) by the app:
    no defaults here, so a setting left out is an error, never a second default.
    """

    status: Callable[[], dict[str, Any]]
    predict: Predict | None  # None: no /predict
    token: str | None = field(repr=False)  # the bearer token; None: none set
    open_without_token: bool  # a loopback address: no token needed when none is set
    max_body: int  # pipeline.max_payload_bytes
    max_concurrent: int  # http.predict_concurrency
    body_timeout_s: float  # http.body_timeout_s
    max_pending_bodies: int  # http.max_pending_bodies
    counted: Callable[[int], None] = lambda status: None  # each /predict answer's status


class HealthServer:
    """Serves metrics, health and the operator's pages on its own daemon thread."""

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        readiness: Readiness,
        operator: Operator | None,
        backlog: int,
    ) -> None:
        """``backlog``: the listen queue's length (``http.listen_backlog``: the standard
        library's 5 overflows under a burst of connects, and each dropped SYN waits 1 s to
        be sent again)."""
        handler = _make_handler(registry, readiness, operator)
        try:
            self._server = _Server((host, port), handler, backlog)
        except OSError as exc:
            from edgeinfer.errors import ConfigError

            raise ConfigError(
                "http.listen", f"{host}:{port}", f"a free address to listen on ({exc.strerror})"
            ) from exc
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()
        host = self._server.server_address[0]
        log.info("status, metrics and health on http://%s:%d", host, self.port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _Server(ThreadingHTTPServer):
    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], backlog: int
    ) -> None:
        # Read by server_activate, inside the base __init__: set before it runs.
        self.request_queue_size = backlog
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Through the log (one JSON object a line), not a traceback on stderr.
        log.warning("HTTP request from %s failed", client_address[0], exc_info=True)


def _error(code: str, reason: str) -> bytes:
    return orjson.dumps({"error": code, "reason": reason})


def _make_handler(
    registry: CollectorRegistry, readiness: Readiness, operator: Operator | None
) -> type[BaseHTTPRequestHandler]:
    class Handler(_Handler):
        pass

    Handler.registry = registry
    Handler.readiness = staticmethod(readiness)
    Handler.operator = operator
    Handler.busy = threading.BoundedSemaphore(operator.max_concurrent if operator else 1)
    Handler.pending = threading.BoundedSemaphore(operator.max_pending_bodies if operator else 1)
    return Handler


class _Refused(Exception):  # noqa: N818 (a refusal sent, not an error)
    """The body was not read, and the refusal has been sent."""


class _Handler(BaseHTTPRequestHandler):
    """One connection's requests; the server's parts are class attributes (one class a server)."""

    registry: CollectorRegistry
    readiness: Readiness
    operator: Operator | None
    busy: threading.BoundedSemaphore  # places for requests being answered
    pending: threading.BoundedSemaphore  # places for slow bodies still on their way
    timeout = CLIENT_TIMEOUT_S
    protocol_version = "HTTP/1.1"  # keep-alive: the page polls every second
    _body_read = True  # False while a request's declared body is unread

    def parse_request(self) -> bool:
        ok = super().parse_request()
        declared = self.headers.get("Content-Length", "0") != "0" if ok else False
        self._body_read = not (declared or (ok and "Transfer-Encoding" in self.headers))
        return ok

    def handle_expect_100(self) -> bool:
        # "Expect: 100-continue": refuse here, before the client is told to send its body
        # (parse_request has not yet noted the body: it is unread, whatever it says).
        self._body_read = False
        if self.command == "POST" and self._refused_before_body():
            return False
        return super().handle_expect_100()

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/metrics":
            self._send(200, generate_latest(self.registry), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            self._send(200, b'{"status":"alive"}', "application/json")
        elif path == "/readyz":
            ready, reason = self.readiness()
            body = orjson.dumps({"ready": ready, "reason": reason})
            self._send(200 if ready else 503, body, "application/json")
        elif self.operator is not None:
            self._operator_get(self.operator, path)
        else:
            self._not_found()

    def _operator_get(self, operator: Operator, path: str) -> None:
        if path.startswith("/static/"):
            found = static_file(path.removeprefix("/static/"))
            if found is None:
                self._send(404, _error("not_found", f"no file {path!r}"), "application/json")
            else:
                self._send(200, found[0], found[1], cache="max-age=300")
        elif path in ("/", "/index.html"):
            if self._allowed(operator, page=True):
                self._send(200, status_page(), "text/html; charset=utf-8")
        elif path == "/api/status":
            if self._allowed(operator):
                self._send_status(operator)
        else:
            self._not_found()

    def _send_status(self, operator: Operator) -> None:
        try:
            body = orjson.dumps(operator.status())
        except Exception:  # a bug in gathering the figures: say so, keep serving
            log.exception("building /api/status failed")
            reason = "the module failed to gather its status; see its log"
            self._send(500, _error("internal_error", reason), "application/json")
            return
        self._send(200, body, "application/json")

    def do_POST(self) -> None:
        if self._refused_before_body():
            return
        operator = self.operator
        assert operator is not None and operator.predict is not None
        try:
            body = self._receive(operator, int(self.headers["Content-Length"]))
        except _Refused:
            return
        # Only now, with the body here, may the request take a place to be answered: one
        # whose body is still coming would hold it for as long as its sender likes.
        if not self.busy.acquire(blocking=False):
            reason = f"{operator.max_concurrent} readings are being answered: retry shortly"
            self._answer_post(429, _error("busy", reason), retry_after=1)
            return
        try:
            topic = parse_qs(urlsplit(self.path).query).get("topic", [None])[0]
            status, answer = operator.predict(body, topic)
        finally:
            self.busy.release()
        self._answer_post(status, answer)

    def _refused_before_body(self) -> bool:
        """Refuse a POST for what its headers say (where, who, how big); True if refused."""
        operator = self.operator
        if operator is None or operator.predict is None or urlsplit(self.path).path != "/predict":
            self._not_found()
            return True
        if not self._allowed(operator, counted=True):
            return True
        length = self.headers.get("Content-Length", "")
        if not (length.isascii() and length.isdigit() and len(length) <= 18):
            reason = "expected a Content-Length header with the body's size in bytes"
            self._answer_post(411, _error("length_required", reason))
            return True
        if int(length) > operator.max_body:
            limit = operator.max_body
            reason = f"{length} bytes: expected at most {limit} (pipeline.max_payload_bytes)"
            self._answer_post(413, _error("oversize", reason))
            return True
        return False

    def _receive(self, operator: Operator, length: int) -> bytes:
        """The whole body, read within ``body_timeout_s``; a body still coming after
        :data:`BODY_GRACE_S` waits in a ``pending`` place or is refused (503).

        Raises:
            _Refused: the body was not read (too slow, no place to wait, or the client
                left); what there was to answer has been sent.
        """
        chunks: list[bytes] = []
        # Non-blocking reads from the buffered file (what came with the headers first),
        # poll() for the rest: after a socket timeout the file would be unreadable.
        self.connection.setblocking(False)
        try:
            outcome = self._read_within(operator, length, chunks)
        except OSError:  # reset by the client
            outcome = "gone"
        finally:
            self.connection.settimeout(self.timeout)  # blocking again, to answer
        if outcome == "gone":  # nobody left to answer
            self.close_connection = True
            raise _Refused
        if outcome == "no_place":
            # 503, as nginx's limit_conn answers a connection over its limit: the server
            # is out of room, not this client over a rate (429). The unread body closes it.
            reason = (
                f"{operator.max_pending_bodies} connections are already sending a body "
                "(http.max_pending_bodies): retry shortly"
            )
            self._answer_post(503, _error("busy", reason), retry_after=1)
            raise _Refused
        if outcome == "too_slow":
            # 408, as nginx's client_body_timeout and Apache's RequestReadTimeout answer.
            got = sum(map(len, chunks))
            reason = (
                f"the body did not arrive whole within {operator.body_timeout_s:g} s "
                f"(http.body_timeout_s): {got} of {length} bytes came"
            )
            self._answer_post(408, _error("timeout", reason))
            raise _Refused
        self._body_read = True
        return b"".join(chunks)

    def _read_within(self, operator: Operator, length: int, chunks: list[bytes]) -> str:
        """Read ``length`` bytes into ``chunks`` from the non-blocking connection: "whole",
        or why not ("too_slow", "no_place", "gone")."""
        started = time.monotonic()
        deadline = started + operator.body_timeout_s
        grace_end = min(deadline, started + BODY_GRACE_S)
        poller = select.poll()
        poller.register(self.connection, select.POLLIN)
        left = length
        waiting = False  # holding a pending place
        try:
            while left > 0:
                chunk = self.rfile.read1(min(left, 65536))  # b"": nothing yet (or EOF)
                if chunk:
                    chunks.append(chunk)
                    left -= len(chunk)
                    continue
                now = time.monotonic()
                if now >= deadline:
                    return "too_slow"
                if not waiting and now >= grace_end:
                    if not self.pending.acquire(blocking=False):
                        return "no_place"
                    waiting = True
                until = deadline if waiting else grace_end
                if not poller.poll(max(0.0, until - now) * 1000):
                    continue  # the grace or the deadline is over: the checks above
                chunk = self.rfile.read1(min(left, 65536))
                if not chunk:  # readable, yet nothing: the client closed its side
                    return "gone"
                chunks.append(chunk)
                left -= len(chunk)
        finally:
            if waiting:
                self.pending.release()
        return "whole"

    def _answer_post(self, status: int, body: bytes, retry_after: int | None = None) -> None:
        assert self.operator is not None
        self.operator.counted(status)
        self._send(status, body, "application/json", retry_after=retry_after)

    def _allowed(self, operator: Operator, page: bool = False, counted: bool = False) -> bool:
        """Check the bearer token (or, open on loopback, the Host); refusals are sent here.

        ``counted``: a ``/predict`` refusal is counted before it is sent, so that whoever
        reads the metric after the answer finds it there.
        """
        if operator.token is None:
            if not operator.open_without_token:
                reason = (
                    "http.listen is not a loopback address and no token is set: "
                    "set http.token_file (or http.token) to open the status page and /predict"
                )
                self._refuse(operator, counted, 403, _error("forbidden", reason))
                return False
            host = self.headers.get("Host", "")
            name = host[: host.index("]") + 1] if host.startswith("[") else host.split(":")[0]
            if name.lower() in LOCAL_HOSTS:
                return True
            reason = f"Host {host[:100]!r}: expected localhost or 127.0.0.1 with no token set"
            self._refuse(operator, counted, 403, _error("forbidden", reason))
            return False
        scheme, _, token = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode("latin-1", "replace"), operator.token.encode()
        ):
            return True
        if page:  # a browser cannot send the header by itself: a page that asks for it
            self._send(401, LOGIN_PAGE, "text/html; charset=utf-8", bearer=True)
        else:
            reason = "expected the header Authorization: Bearer <http.token>"
            self._refuse(operator, counted, 401, _error("unauthorized", reason), bearer=True)
        return False

    def _refuse(
        self, operator: Operator, counted: bool, status: int, body: bytes, bearer: bool = False
    ) -> None:
        if counted:
            operator.counted(status)
        self._send(status, body, "application/json", bearer=bearer)

    def _not_found(self) -> None:
        paths = "/metrics, /healthz, /readyz"
        if self.operator is not None:
            paths += ", /, /api/status, POST /predict"
        self._send(404, _error("not_found", f"try {paths}"), "application/json")

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str,
        cache: str = "no-store",
        retry_after: int | None = None,
        bearer: bool = False,
    ) -> None:
        unread = not self._body_read
        if unread:  # what follows on this connection would be the body, not a request
            self.close_connection = True
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache)
        self.send_header("X-Content-Type-Options", "nosniff")
        if retry_after is not None:
            self.send_header("Retry-After", str(retry_after))
        if bearer:
            self.send_header("WWW-Authenticate", 'Bearer realm="edgeinfer"')
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        if unread:
            self._linger()

    def _linger(self) -> None:
        """Read and drop what the client still sends of a refused body (for a moment), so
        that closing does not reset the connection before it reads the refusal."""
        self.wfile.flush()
        deadline = time.monotonic() + LINGER_S
        dropped = 0
        try:
            self.connection.shutdown(socket.SHUT_WR)
            while dropped < LINGER_BYTES and time.monotonic() < deadline:
                self.connection.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = self.connection.recv(65536)
                if not chunk:
                    break
                dropped += len(chunk)
        except OSError:
            pass

    def log_message(self, format: str, *args: object) -> None:
        return  # scrapes every few seconds would drown the log
