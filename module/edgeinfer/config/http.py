"""``[http]``: the module's HTTP address, and who may use its pages and ``/predict``."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from edgeinfer.errors import ConfigError

#: A bearer token shorter than this is refused (it would be guessed).
MIN_TOKEN_CHARS = 16


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
