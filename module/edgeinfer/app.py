"""The long-running module: wires config, model, engine, MQTT and HTTP together.

Lifecycle: :meth:`EdgeInferModule.start` loads the model, starts the engine,
the health server and the MQTT connection; :meth:`EdgeInferModule.stop` stops
taking readings, answers those in flight, waits for the broker to acknowledge
them (so their readings get acknowledged), publishes ``offline`` and
disconnects, all within ``module.shutdown_timeout_s``.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from types import FrameType

from edgeinfer.config import Config
from edgeinfer.errors import ConfigError, ModelError
from edgeinfer.manifest import load_manifest
from edgeinfer.mqtt.connection import Incoming, MqttConnection
from edgeinfer.observability.http import HealthServer
from edgeinfer.observability.metrics import Metrics
from edgeinfer.pipeline.encode import ModelIdentity
from edgeinfer.pipeline.engine import ActiveModel, Engine, EngineSettings
from edgeinfer.runtimes import load_model

log = logging.getLogger(__name__)

MODEL_FILES = ("model.onnx", "model.tflite")


def topic_of(module_id: str, leaf: str) -> str:
    """``edgeinfer/{module_id}/{leaf}``: the module's own topics."""
    return f"edgeinfer/{module_id}/{leaf}"


def resolve_model_path(config: Config) -> Path:
    """The configured model file, or the one installed under ``state_dir/current``."""
    if config.model.path:
        return Path(config.model.path)
    current = Path(config.module.state_dir) / "current"
    for name in MODEL_FILES:
        if (current / name).is_file():
            return current / name
    raise ConfigError(
        "model.path",
        "",
        f"a model file (--model), or a model installed under "
        f"{current}/ as {' or '.join(MODEL_FILES)}",
    )


def load_active_model(path: Path, config: Config) -> ActiveModel:
    """Load the model and its manifest; a bad file is a bad ``model.path`` (exit 2)."""
    try:
        model = load_model(path, threads=config.model.threads, providers=config.model.providers)
        manifest = load_manifest(path)
    except ModelError as exc:
        raise ConfigError("model.path", str(path), f"an ONNX or TFLite model ({exc})") from exc
    identity = ModelIdentity(manifest.name, manifest.version, manifest.labels)
    return ActiveModel(model, identity)


class EdgeInferModule:
    """One running edgeinfer module."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = Metrics()
        self.http: HealthServer | None = None
        self.started_at = 0.0
        mid = config.module.id
        self._status_topic = topic_of(mid, "status")
        path = resolve_model_path(config)
        self._model_path = path
        active = load_active_model(path, config)
        self.connection = MqttConnection(
            config.broker,
            config.client_id,
            [(flt, config.topics.input_qos) for flt in config.topics.inputs],
            self._on_message,
            self._status_topic,
            on_state=self._on_broker_state,
        )
        settings = EngineSettings(
            max_batch=config.pipeline.max_batch,
            max_delay_ms=config.pipeline.max_delay_ms,
            queue_size=config.pipeline.queue_size,
            max_payload_bytes=config.pipeline.max_payload_bytes,
            allow_non_finite=config.pipeline.allow_non_finite,
            output_template=config.topics.output,
            output_qos=config.topics.output_qos,
            errors_topic=topic_of(mid, "errors"),
            module_id=mid,
        )
        self.engine = Engine(active, settings, self.connection, self._on_answered, self.metrics)
        self.metrics.watch(lambda: self.engine.depth, lambda: self.connection.tracker.unacked)
        model = active.model
        self.metrics.model_info.info(
            {
                "name": active.identity.name,
                "version": active.identity.version,
                "format": model.format,
                "runtime": model.runtime,
                "path": str(path),
            }
        )

    def _on_message(self, msg: Incoming) -> None:
        self.engine.submit(msg)

    def _on_answered(self, msg: Incoming) -> None:
        self.connection.tracker.complete(msg.ticket)

    def _on_broker_state(self, connected: bool) -> None:
        self.metrics.broker_connected.set(1 if connected else 0)
        if connected:
            self.metrics.broker_connects.inc()

    def readiness(self) -> tuple[bool, str]:
        """Ready when connected to the broker and a model is active."""
        if not self.connection.connected:
            return False, f"not connected to the broker: {self.connection.last_error}"
        return True, "ok"

    def start(self) -> None:
        self.started_at = time.monotonic()
        identity = self.engine.active.identity
        log.info(
            "serving %s %s (%s, %s) from %s",
            identity.name,
            identity.version,
            self.engine.active.model.format,
            self.engine.active.model.runtime,
            self._model_path,
        )
        self.engine.start()
        if self.config.http.listen:
            host, port = self.config.http.address
            self.http = HealthServer(host, port, self.metrics.registry, self.readiness)
            self.http.start()
        self.connection.start()

    def stop(self) -> None:
        """Drain and disconnect; bounded by ``module.shutdown_timeout_s``."""
        deadline = time.monotonic() + self.config.module.shutdown_timeout_s
        self.connection.stop_intake()
        if not self.engine.drain(max(0.1, deadline - time.monotonic())):
            log.warning(
                "shutdown timeout: %d readings still queued; the broker will redeliver them",
                self.engine.depth,
            )
        while self.connection.tracker.unacked and time.monotonic() < deadline:
            time.sleep(0.01)
        if self.connection.tracker.unacked:
            log.warning(
                "shutdown timeout: %d answers not yet acknowledged by the broker",
                self.connection.tracker.unacked,
            )
        self.connection.stop(max(0.5, deadline - time.monotonic()))
        if self.http is not None:
            self.http.stop()
        self.engine.active.model.close()
        log.info("stopped")


def run_module(config: Config) -> int:
    """Run until SIGTERM or SIGINT, then shut down gracefully. Returns the exit code."""
    module = EdgeInferModule(config)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("received %s: draining", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    module.start()
    while not stop.wait(1.0):
        pass
    module.stop()
    return 0
