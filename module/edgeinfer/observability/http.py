"""The module's HTTP address: metrics, health, the status page and ``POST /predict``.

``/metrics``, ``/healthz`` and ``/readyz`` are always open (scrapers and
probes carry no token). The status page (``/``), its data (``/api/status``)
and ``/predict`` answer only the bearer token when one is configured, and
stay closed (403, saying why) when the address is not a loopback one and no
token is. A request to ``/predict`` is refused before its body is read when it
is too large, and when ``max_concurrent`` others are being answered.
"""

from __future__ import annotations

import hmac
import logging
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

from edgeinfer.observability.pages import LOGIN_PAGE, static_file, status_page

log = logging.getLogger(__name__)

#: Returns (ready, reason); the reason says what is missing when not ready.
Readiness = Callable[[], tuple[bool, str]]
#: Answers a posted reading (body, topic) with (HTTP status, JSON document).
Predict = Callable[[bytes, str | None], tuple[int, bytes]]
#: A slow client's request is dropped after this many seconds of silence; a posted body
#: must have arrived whole within this many seconds.
CLIENT_TIMEOUT_S = 30.0
#: A refused body still on its way is read and dropped for at most this long and this much,
#: so that the client reads the refusal instead of a reset connection.
LINGER_S = 1.0
LINGER_BYTES = 16 << 20
#: Host names a page on this machine reaches the module by (anything else, on an open
#: loopback address, is a page elsewhere reaching it through DNS rebinding).
LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]", "::1")


@dataclass(frozen=True)
class Operator:
    """What the HTTP address serves to people, beyond metrics and health."""

    status: Callable[[], dict[str, Any]]
    predict: Predict | None = None
    token: str | None = field(default=None, repr=False)  # the bearer token; None: none set
    open_without_token: bool = True  # a loopback address: no token needed when none is set
    max_body: int = 1_048_576
    max_concurrent: int = 4
    counted: Callable[[int], None] = lambda status: None  # each /predict answer's status


class HealthServer:
    """Serves metrics, health and the operator's pages on its own daemon thread."""

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        readiness: Readiness,
        operator: Operator | None = None,
    ) -> None:
        handler = _make_handler(registry, readiness, operator)
        try:
            self._server = _Server((host, port), handler)
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
    return Handler


class _Handler(BaseHTTPRequestHandler):
    """One connection's requests; the server's parts are class attributes (one class a server)."""

    registry: CollectorRegistry
    readiness: Readiness
    operator: Operator | None
    busy: threading.BoundedSemaphore
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
        if not self.busy.acquire(blocking=False):
            reason = f"{operator.max_concurrent} readings are being answered: retry shortly"
            self._answer_post(429, _error("busy", reason), retry_after=1)
            return
        try:
            body = self._read_body(int(self.headers["Content-Length"]))
            if body is None:
                reason = f"the body did not arrive within {CLIENT_TIMEOUT_S:g} s"
                self._answer_post(408, _error("timeout", reason))
                return
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
        if not self._allowed(operator):
            operator.counted(401 if operator.token else 403)
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

    def _read_body(self, length: int) -> bytes | None:
        """The body, or None when it did not arrive whole within CLIENT_TIMEOUT_S."""
        deadline = time.monotonic() + CLIENT_TIMEOUT_S
        chunks: list[bytes] = []
        left = length
        try:
            while left > 0:
                self.connection.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = self.rfile.read1(min(left, 65536))
                if not chunk:
                    return None
                chunks.append(chunk)
                left -= len(chunk)
        except (TimeoutError, OSError):
            return None
        finally:
            self.connection.settimeout(self.timeout)
        self._body_read = True
        return b"".join(chunks)

    def _answer_post(self, status: int, body: bytes, retry_after: int | None = None) -> None:
        assert self.operator is not None
        self.operator.counted(status)
        self._send(status, body, "application/json", retry_after=retry_after)

    def _allowed(self, operator: Operator, page: bool = False) -> bool:
        """Check the bearer token (or, open on loopback, the Host); refusals are sent here."""
        if operator.token is None:
            if not operator.open_without_token:
                reason = (
                    "http.listen is not a loopback address and no token is set: "
                    "set http.token_file (or http.token) to open the status page and /predict"
                )
                self._send(403, _error("forbidden", reason), "application/json")
                return False
            host = self.headers.get("Host", "")
            name = host[: host.index("]") + 1] if host.startswith("[") else host.split(":")[0]
            if name.lower() in LOCAL_HOSTS:
                return True
            reason = f"Host {host[:100]!r}: expected localhost or 127.0.0.1 with no token set"
            self._send(403, _error("forbidden", reason), "application/json")
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
            self._send(401, _error("unauthorized", reason), "application/json", bearer=True)
        return False

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
