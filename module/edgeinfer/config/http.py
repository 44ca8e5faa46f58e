"""``[http]``: the module's HTTP address, and who may use its pages and ``/predict``."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from edgeinfer.errors import ConfigError

#: A bearer token shorter than this is refused (it would be guessed).
MIN_TOKEN_CHARS = 16
#: The longest ``body_timeout_s`` taken: a body slower than five minutes is no reading.
MAX_BODY_TIMEOUT_S = 300.0


def _usable(token: str) -> bool:
    """Long enough, and what an Authorization header carries unchanged."""
    return len(token) >= MIN_TOKEN_CHARS and all("!" <= c <= "~" for c in token)


def _require(ok: bool, key: str, value: object, expected: str) -> None:
    if not ok:
        raise ConfigError(key, value, expected)


@dataclass(frozen=True)
class HttpConfig:
    """The HTTP address: metrics, health, the status page and ``POST /predict``."""

    listen: str = "127.0.0.1:9108"
    token: str = field(default="", repr=False)
    token_file: str = ""
    predict_concurrency: int = 4
    #: A ``/predict`` body must have arrived whole this many seconds after its headers, or
    #: the request is answered 408 and its connection closed. 1 MB over a 1 Mbit/s uplink
    #: takes 8 s; a client holding a body open for longer is stalling, not sending.
    body_timeout_s: float = 10.0
    #: Connections whose ``/predict`` body is still on its way, at most; more are answered
    #: 503 (``Retry-After: 1``) and closed. They hold a thread and up to
    #: ``pipeline.max_payload_bytes`` each, and no ``predict_concurrency`` slot.
    max_pending_bodies: int = 16
    #: The listen queue: connects the kernel completes before the server accepts them. The
    #: standard library's 5 overflows under a burst, and a dropped SYN waits 1 s to be sent
    #: again (past Kubernetes' default probe timeout); 128 still dropped one of 200
    #: back-to-back connects. 511 is nginx's default on Linux; the kernel caps it at
    #: net.core.somaxconn.
    listen_backlog: int = 511

    def __post_init__(self) -> None:
        if self.listen:
            host, _, port = self.listen.rpartition(":")
            _require(
                bool(host) and port.isdigit() and int(port) < 65536,
                "http.listen",
                self.listen,
                'HOST:PORT (port 0 picks a free one), or "" to disable',
            )
        _require(
            not (self.token and self.token_file),
            "http.token_file",
            self.token_file,
            "either token or token_file, not both",
        )
        _require(
            not self.token or _usable(self.token),
            "http.token",
            "(hidden)",
            f"at least {MIN_TOKEN_CHARS} printable ASCII characters, no spaces",
        )
        _require(
            1 <= self.predict_concurrency <= 256,
            "http.predict_concurrency",
            self.predict_concurrency,
            "an integer in [1, 256]",
        )
        _require(
            0 < self.body_timeout_s <= MAX_BODY_TIMEOUT_S,
            "http.body_timeout_s",
            self.body_timeout_s,
            f"a number of seconds in (0, {MAX_BODY_TIMEOUT_S:g}]",
        )
        _require(
            1 <= self.max_pending_bodies <= 1024,
            "http.max_pending_bodies",
            self.max_pending_bodies,
            "an integer in [1, 1024]",
        )
        _require(
            1 <= self.listen_backlog <= 65535,
            "http.listen_backlog",
            self.listen_backlog,
            "an integer in [1, 65535] (the kernel caps it at net.core.somaxconn)",
        )

    @property
    def address(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)

    @property
    def on_loopback(self) -> bool:
        """True when only this machine can reach the address."""
        host = self.address[0]
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False  # a host name (or 0.0.0.0-like wildcard): reachable from elsewhere

    def resolved_token(self) -> str | None:
        """The bearer token, read from ``token_file`` when that is set; None when neither is."""
        if not self.token_file:
            return self.token or None
        try:
            token = Path(self.token_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(
                "http.token_file", self.token_file, f"a readable file ({exc.strerror})"
            ) from exc
        _require(
            _usable(token),
            "http.token_file",
            self.token_file,
            f"a file holding a token of at least {MIN_TOKEN_CHARS} printable ASCII "
            "characters, no spaces",
        )
        return token
