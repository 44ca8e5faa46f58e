"""The configuration's sections: frozen dataclasses, each validated on construction.

Every key has its default here; ``deployment/edgeinfer.example.toml`` documents
every key, and a test keeps the two in step. A bad value raises ConfigError
naming the key, the value and what was expected.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, unquote, urlsplit

from edgeinfer.config.cascade import CascadeConfig
from edgeinfer.config.http import HttpConfig
from edgeinfer.config.streams import StreamsConfig
from edgeinfer.errors import ConfigError
from edgeinfer.topics import TemplatePlaceholderError, TopicTemplate, valid_filter

_LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_BROKER_SCHEMES = {"mqtt": 1883, "tcp": 1883, "mqtts": 8883, "ssl": 8883}


def _require(ok: bool, key: str, value: object, expected: str) -> None:
    if not ok:
        raise ConfigError(key, value, expected)


@dataclass(frozen=True)
class ModuleConfig:
    """Identity and lifecycle of this module instance."""

    id: str = "edgeinfer"
    state_dir: str = "./state"
    shutdown_timeout_s: float = 5.0
    labels: dict[str, str] = field(default_factory=dict)
    health_interval_s: float = 5.0  # the retained health summary; 0: not published

    def __post_init__(self) -> None:
        for key, value in self.labels.items():
            _require(
                bool(_LABEL_RE.match(key)) and isinstance(value, str) and len(value) <= 128,
                "module.labels",
                {key: value},
                "names of letters, digits, '_', '-', '.' with string values (at most 128 "
                "characters)",
            )
        _require(
            bool(_ID_RE.match(self.id)),
            "module.id",
            self.id,
            "1-64 characters of letters, digits, '_', '-', '.', starting with a letter or digit",
        )
        _require(bool(self.state_dir), "module.state_dir", self.state_dir, "a directory path")
        _require(
            self.health_interval_s >= 0,
            "module.health_interval_s",
            self.health_interval_s,
            "a number of seconds >= 0 (0: off)",
        )
        _require(
            self.shutdown_timeout_s > 0,
            "module.shutdown_timeout_s",
            self.shutdown_timeout_s,
            "a number of seconds > 0",
        )


@dataclass(frozen=True)
class ModelConfig:
    """Which model to serve and how the runtime may use the CPU."""

    path: str = ""
    threads: int = 0
    providers: list[str] = field(default_factory=lambda: ["CPUExecutionProvider"])

    def __post_init__(self) -> None:
        _require(
            self.threads >= 0,
            "model.threads",
            self.threads,
            "an integer >= 0 (0 chooses by how long a reading takes)",
        )
        _require(
            len(self.providers) > 0,
            "model.providers",
            self.providers,
            "at least one ONNX Runtime execution provider name",
        )


@dataclass(frozen=True)
class BrokerConfig:
    """How to reach the MQTT broker."""

    url: str = "mqtt://localhost:1883"
    protocol: str = "5"
    client_id: str = ""
    username: str = ""
    password: str = field(default="", repr=False)
    password_file: str = ""
    keepalive_s: int = 30
    session_expiry_s: int = 86400
    #: A replica on a shared subscription: how long the broker keeps the share
    #: dealt to it while it is away (see the README's "Scale-out").
    shared_session_expiry_s: int = 30
    receive_maximum: int = 256
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    tls_verify: bool = True

    def __post_init__(self) -> None:
        self._take_url_credentials()
        parts = urlsplit(self.url)
        _require(
            parts.scheme in _BROKER_SCHEMES and bool(parts.hostname),
            "broker.url",
            self.url,
            "mqtt://HOST[:PORT] or mqtts://HOST[:PORT]",
        )
        try:
            port = parts.port
        except ValueError:
            port = -1
        _require(port is None or 0 < port < 65536, "broker.url", self.url, "a port in 1..65535")
        _require(
            self.protocol in ("5", "3.1.1"), "broker.protocol", self.protocol, '"5" or "3.1.1"'
        )
        _require(self.keepalive_s >= 5, "broker.keepalive_s", self.keepalive_s, "an integer >= 5")
        for key in ("session_expiry_s", "shared_session_expiry_s"):
            value = getattr(self, key)
            _require(value >= 0, f"broker.{key}", value, "an integer >= 0")
        _require(
            1 <= self.receive_maximum <= 65535,
            "broker.receive_maximum",
            self.receive_maximum,
            "an integer in 1..65535",
        )
        _require(
            0 < self.reconnect_min_s <= self.reconnect_max_s,
            "broker.reconnect_min_s",
            self.reconnect_min_s,
            f"a number of seconds in (0, {self.reconnect_max_s}]",
        )
        _require(
            bool(self.cert_file) == bool(self.key_file),
            "broker.cert_file",
            self.cert_file,
            "cert_file and key_file given together",
        )
        _require(
            not (self.password and self.password_file),
            "broker.password_file",
            self.password_file,
            "either password or password_file, not both",
        )

    def _take_url_credentials(self) -> None:
        """``mqtt://user:password@host``: used as username and password, then cut from the URL."""
        parts = urlsplit(self.url)
        if parts.username is None and parts.password is None:
            return
        port = f":{_port_of(parts)}" if _port_of(parts) else ""
        shown = parts._replace(netloc=f"{parts.username or ''}:***@{parts.hostname}{port}").geturl()
        _require(
            not (self.username or self.password or self.password_file),
            "broker.url",
            shown,
            "credentials either in the URL or in broker.username/password, not both",
        )
        # frozen: set through object.__setattr__, once, during construction
        object.__setattr__(self, "username", unquote(parts.username or ""))
        object.__setattr__(self, "password", unquote(parts.password or ""))
        object.__setattr__(self, "url", parts._replace(netloc=f"{parts.hostname}{port}").geturl())

    @property
    def display_url(self) -> str:
        """The URL as logs and /readyz show it (never with credentials)."""
        return self.url

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "localhost"

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or _BROKER_SCHEMES[parts.scheme]

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme in ("mqtts", "ssl")

    def resolved_password(self) -> str:
        """The password, read from ``password_file`` when that is set."""
        if not self.password_file:
            return self.password
        try:
            return Path(self.password_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(
                "broker.password_file", self.password_file, f"a readable file ({exc.strerror})"
            ) from exc


@dataclass(frozen=True)
class TopicsConfig:
    """Which topics to read and where results go."""

    inputs: list[str] = field(default_factory=lambda: ["sensors/#"])
    output: str = "inference/{topic}"
    input_qos: int = 1
    output_qos: int = 1
    retained: str = "ignore"
    #: The broker deals each topic of a shared subscription to one replica (EMQX's
    #: hash_topic strategy): only then may windows and per-stream state be used on one.
    shared_by_topic: bool = False

    def __post_init__(self) -> None:
        _require(
            self.retained in ("ignore", "once"),
            "topics.retained",
            self.retained,
            '"ignore" (retained readings are not answered) or "once" (answered once, '
            "when the subscription is new)",
        )
        _require(
            len(self.inputs) > 0 and all(self.inputs),
            "topics.inputs",
            self.inputs,
            "a non-empty list of MQTT topic filters",
        )
        for flt in self.inputs:
            _require(
                valid_filter(flt),
                "topics.inputs",
                flt,
                "a topic filter where '#' is last and wildcards fill whole levels "
                "(or $share/<group>/<filter>)",
            )
        try:
            TopicTemplate.parse(self.output)
        except TemplatePlaceholderError:
            raise ConfigError(
                "topics.output",
                self.output,
                "a template using only {topic}, {module_id}, {1}, {2}, ...",
            ) from None
        except ValueError as exc:
            raise ConfigError(
                "topics.output", self.output, f"a topic template (this one has {exc})"
            ) from None
        _require(self.input_qos in (0, 1), "topics.input_qos", self.input_qos, "0 or 1")
        _require(self.output_qos in (0, 1), "topics.output_qos", self.output_qos, "0 or 1")

    @property
    def output_template(self) -> TopicTemplate:
        return TopicTemplate.parse(self.output)


@dataclass(frozen=True)
class ImageLimits:
    """What one image reading may cost to decode: ``pipeline.max_image_*``, whose defaults
    these are (the one place they are written)."""

    #: Width x height, read from the header: larger images are refused undecoded (a
    #: 20000 x 20000 PNG of zeros is a few KB on the wire and 1.2 GB decoded).
    max_pixels: int = 25_000_000
    #: Scans a JPEG may have. Encoders write 1 (baseline; up to 4 non-interleaved), 6 (a
    #: grey progressive JPEG) or 10 (a colour one, libjpeg's and mozjpeg's progression);
    #: every scan costs a pass over the whole picture (about 20 ms at 25 M pixels here).
    max_scans: int = 32
    #: CPU time one decode may spend, in milliseconds: over 3x what the slowest image the
    #: other limits let through takes on a server core (0.6 s: 25 M pixels in 32 scans; a
    #: 2048x3072 photograph takes 25 ms), and well inside the 7.5 s the broker waits on
    #: the shortest keepalive (``broker.keepalive_s`` >= 5) before it drops the module.
    max_decode_ms: float = 2000.0


_IMAGES = ImageLimits()


@dataclass(frozen=True)
class PipelineConfig:
    """Decode, batch and run settings."""

    max_batch: int = 32
    max_delay_ms: float = 0.0
    #: How long one batch may keep the serving thread (and so the network) busy, decoding
    #: and running: a slow model gets batches that fit it.
    step_budget_ms: float = 250.0
    queue_size: int = 1024
    max_payload_bytes: int = 1_048_576
    allow_non_finite: bool = False
    #: Image readings larger than this (width x height) are refused from their header.
    max_image_pixels: int = _IMAGES.max_pixels
    #: JPEG readings of more scans are refused from their marker segments, undecoded
    #: (a progressive JPEG has about 10; each scan is decoded over the whole picture).
    max_image_scans: int = _IMAGES.max_scans
    #: A decode that has spent this much CPU time is stopped and the bytes refused when they
    #: come again.
    max_image_decode_ms: float = _IMAGES.max_decode_ms

    def image_limits(self) -> ImageLimits:
        """The ``max_image_*`` keys, as the image decoder takes them."""
        return ImageLimits(self.max_image_pixels, self.max_image_scans, self.max_image_decode_ms)

    def __post_init__(self) -> None:
        _require(
            1 <= self.max_batch <= 4096,
            "pipeline.max_batch",
            self.max_batch,
            "an integer in 1..4096",
        )
        _require(
            0 <= self.max_delay_ms <= 1000,
            "pipeline.max_delay_ms",
            self.max_delay_ms,
            "milliseconds in 0..1000",
        )
        _require(
            10 <= self.step_budget_ms <= 2000,
            "pipeline.step_budget_ms",
            self.step_budget_ms,
            "milliseconds in 10..2000 (the network waits that long: well inside the keepalive)",
        )
        _require(self.queue_size >= 1, "pipeline.queue_size", self.queue_size, "an integer >= 1")
        _require(
            self.max_payload_bytes >= 64,
            "pipeline.max_payload_bytes",
            self.max_payload_bytes,
            "an integer >= 64",
        )
        _require(
            1 <= self.max_image_pixels <= 1_000_000_000,
            "pipeline.max_image_pixels",
            self.max_image_pixels,
            "a pixel count in 1..1000000000",
        )
        _require(
            1 <= self.max_image_scans <= 100_000,
            "pipeline.max_image_scans",
            self.max_image_scans,
            "an integer in 1..100000",
        )
        _require(
            1.0 <= self.max_image_decode_ms <= 5000.0,
            "pipeline.max_image_decode_ms",
            self.max_image_decode_ms,
            "milliseconds in 1..5000 (well inside broker.keepalive_s, at least 5 s)",
        )


@dataclass(frozen=True)
class UpdatesConfig:
    """Over-the-air model updates."""

    trusted_keys: list[str] = field(default_factory=list)
    allow_http: bool = False
    file_roots: list[str] = field(default_factory=list)
    ca_file: str = ""
    max_download_bytes: int = 268_435_456
    download_timeout_s: float = 15.0
    download_retries: int = 3
    self_test_runs: int = 20
    probation_s: float = 60.0
    probation_max_error_rate: float = 0.05
    probation_max_latency_ms: float = 0.0
    probation_min_readings: int = 20
    keep_versions: int = 3
    watch: bool = True

    def __post_init__(self) -> None:
        for root in self.file_roots:
            _require(
                Path(root).is_absolute(),
                "updates.file_roots",
                root,
                "absolute directory paths that file:// model URLs may point into",
            )
        _require(
            self.max_download_bytes > 0,
            "updates.max_download_bytes",
            self.max_download_bytes,
            "an integer > 0",
        )
        _require(
            self.download_timeout_s > 0,
            "updates.download_timeout_s",
            self.download_timeout_s,
            "seconds > 0",
        )
        _require(
            self.download_retries >= 0,
            "updates.download_retries",
            self.download_retries,
            "an integer >= 0",
        )
        _require(
            self.self_test_runs >= 1,
            "updates.self_test_runs",
            self.self_test_runs,
            "an integer >= 1",
        )
        _require(self.probation_s >= 0, "updates.probation_s", self.probation_s, "seconds >= 0")
        _require(
            0 <= self.probation_max_error_rate <= 1,
            "updates.probation_max_error_rate",
            self.probation_max_error_rate,
            "a fraction in 0..1",
        )
        _require(
            self.probation_max_latency_ms >= 0,
            "updates.probation_max_latency_ms",
            self.probation_max_latency_ms,
            "milliseconds >= 0 (0: the self-test's limit)",
        )
        _require(
            self.probation_min_readings >= 1,
            "updates.probation_min_readings",
            self.probation_min_readings,
            "an integer >= 1",
        )
        _require(
            self.keep_versions >= 2,
            "updates.keep_versions",
            self.keep_versions,
            "an integer >= 2 (current and previous are always kept)",
        )


@dataclass(frozen=True)
class LogConfig:
    """Logging on stderr."""

    level: str = "INFO"
    format: str = "json"

    def __post_init__(self) -> None:
        _require(
            self.level.upper() in ("DEBUG", "INFO", "WARNING", "ERROR"),
            "log.level",
            self.level,
            "DEBUG, INFO, WARNING or ERROR",
        )
        _require(self.format in ("json", "text"), "log.format", self.format, '"json" or "text"')


@dataclass(frozen=True)
class Config:
    """The whole configuration of one module."""

    module: ModuleConfig = field(default_factory=ModuleConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    topics: TopicsConfig = field(default_factory=TopicsConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    streams: StreamsConfig = field(default_factory=StreamsConfig)
    cascade: CascadeConfig = field(default_factory=CascadeConfig)
    updates: UpdatesConfig = field(default_factory=UpdatesConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    log: LogConfig = field(default_factory=LogConfig)

    @property
    def client_id(self) -> str:
        return self.broker.client_id or f"edgeinfer-{self.module.id}"


def _port_of(parts: SplitResult) -> int | None:
    try:
        return parts.port
    except ValueError:
        return None


SECTIONS: dict[str, type[Any]] = {
    f.name: typing.get_type_hints(Config)[f.name] for f in dataclasses.fields(Config)
}
