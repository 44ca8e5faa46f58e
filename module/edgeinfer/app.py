"""The long-running module: wires config, store, model, engine, MQTT, updates and HTTP.

Lifecycle: :meth:`EdgeInferModule.start` repairs the store, serves its
``current`` model (after it passes its self-test), starts the engine, the
updater, the store watcher, the health server and the MQTT connection;
:meth:`EdgeInferModule.stop` stops taking readings, answers those in flight,
waits for the broker to acknowledge them (so their readings get
acknowledged), publishes ``offline`` and disconnects, all within
``module.shutdown_timeout_s``.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from types import FrameType

from edgeinfer.active import ActiveModel, load_active
from edgeinfer.config import Config
from edgeinfer.errors import ConfigError, ModelError, UpdateError
from edgeinfer.manifest import load_manifest
from edgeinfer.mqtt.connection import Incoming, MqttConnection
from edgeinfer.observability.http import HealthServer
from edgeinfer.observability.metrics import Metrics
from edgeinfer.pipeline.engine import BatchOutcome, Engine, EngineSettings
from edgeinfer.runtimes import detect_format
from edgeinfer.updates.reported import Reporter
from edgeinfer.updates.selftest import run_self_test
from edgeinfer.updates.store import ModelStore, StoredVersion
from edgeinfer.updates.updater import Updater
from edgeinfer.updates.watcher import StoreWatcher

log = logging.getLogger(__name__)


def topic_of(module_id: str, leaf: str) -> str:
    """``edgeinfer/{module_id}/{leaf}``: the module's own topics."""
    return f"edgeinfer/{module_id}/{leaf}"


def seed_store(store: ModelStore, path: Path) -> StoredVersion:
    """Install ``model.path`` into an empty store and make it current."""
    try:
        fmt = detect_format(path)
    except ModelError as exc:
        raise ConfigError("model.path", str(path), f"an ONNX or TFLite model ({exc})") from exc
    manifest = load_manifest(path)
    doc = {
        "name": manifest.name,
        "version": manifest.version,
        "format": fmt,
        "labels": list(manifest.labels),
        "self_test": manifest.self_test,
        "source": str(path.resolve()),
    }
    try:
        stored = store.install(path, fmt, manifest.name, manifest.version, doc)
    except UpdateError as exc:
        raise ConfigError("model.path", str(path), f"a model the store accepts ({exc})") from exc
    store.activate(stored)
    return stored


def serve_from_store(config: Config, store: ModelStore) -> tuple[ActiveModel, StoredVersion]:
    """The model to serve at start: ``current`` if it passes its self-test, else ``previous``."""
    for action in store.recover():
        log.warning("store repaired: %s", action)
    current = store.link("current")
    configured = Path(config.model.path) if config.model.path else None
    if configured is not None and not configured.is_file():
        # Even when the store would serve its own current: a wrong path is a mistake to report.
        raise ConfigError("model.path", str(configured), "an existing ONNX or TFLite model file")
    if current is None and configured is not None:
        current = seed_store(store, configured)
        log.info("installed %s into the store as %s %s", configured, current.name, current.version)
    elif current is not None and configured is not None:
        log.info(
            "model.path %s only seeds an empty store: serving the store's current %s %s",
            configured,
            current.name,
            current.version,
        )
    if current is None:
        raise ConfigError(
            "model.path",
            config.model.path,
            f"a model file (--model), or a model installed under {store.root}/current",
        )
    failures = []
    for candidate in (current, store.link("previous")):
        if candidate is None:
            continue
        try:
            active = load_active(
                candidate.model_file, config.model.threads, tuple(config.model.providers)
            )
        except (ModelError, UpdateError) as exc:
            failures.append(f"{candidate.name} {candidate.version}: {exc}")
            continue
        try:
            run_self_test(active.model, active.self_test, config.updates.self_test_runs)
        except UpdateError as exc:
            active.model.close()
            failures.append(f"{candidate.name} {candidate.version}: {exc}")
            continue
        if candidate is not current:
            log.error(
                "current model failed at start (%s): serving previous %s %s",
                failures[0],
                candidate.name,
                candidate.version,
            )
            store.roll_back_to(candidate, failed=current)
        return active, candidate
    if configured is not None and current is not None:
        raise ConfigError(
            "model.path",
            str(configured),
            f"a model that loads and passes its self-test ({'; '.join(failures)})",
        )
    raise UpdateError(f"no model in the store passes its self-test: {'; '.join(failures)}")


class EdgeInferModule:
    """One running edgeinfer module."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = Metrics()
        self.http: HealthServer | None = None
        self.watcher: StoreWatcher | None = None
        mid = config.module.id
        self.store = ModelStore(Path(config.module.state_dir))
        active, stored = serve_from_store(config, self.store)
        self.connection = MqttConnection(
            config.broker,
            config.client_id,
            [(flt, config.topics.input_qos) for flt in config.topics.inputs],
            self._on_message,
            topic_of(mid, "status"),
            on_state=self._on_broker_state,
            control={topic_of(mid, "desired"): self._on_desired},
        )
        self.reporter = Reporter(mid, self.store, self._publish_reported)
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
        self.engine = Engine(
            active,
            settings,
            self.connection,
            self.connection.tracker.complete,
            self.metrics,
            on_batch=self._on_batch,
        )
        self.updater = Updater(
            config.updates,
            self.store,
            self.engine,
            self.reporter,
            config.model.threads,
            tuple(config.model.providers),
            on_swap=self._show_model,
        )
        self.updater.active_stored = stored
        self.metrics.watch(lambda: self.engine.depth, lambda: self.connection.tracker.unacked)
        self._show_model(active)

    # -- callbacks from other threads -------------------------------------------

    def _on_message(self, msg: Incoming) -> None:
        self.engine.submit(msg)

    def _on_desired(self, payload: bytes) -> None:
        self.updater.submit_desired(payload)

    def _on_batch(self, outcome: BatchOutcome) -> None:
        self.updater.observe(outcome)

    def _on_broker_state(self, connected: bool) -> None:
        self.metrics.broker_connected.set(1 if connected else 0)
        if connected:
            self.metrics.broker_connects.inc()
            self.reporter.publish()

    def _publish_reported(self, payload: bytes) -> None:
        self.connection.publish(
            topic_of(self.config.module.id, "reported"), payload, qos=1, retain=True
        )

    def _show_model(self, active: ActiveModel) -> None:
        model = active.model
        self.metrics.model_info.info(
            {
                "name": active.identity.name,
                "version": active.identity.version,
                "format": model.format,
                "runtime": model.runtime,
                "sha256": active.sha256,
            }
        )

    def readiness(self) -> tuple[bool, str]:
        """Ready when connected to the broker and a model is active."""
        if not self.connection.connected:
            return False, f"not connected to the broker: {self.connection.last_error}"
        return True, "ok"

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        active = self.engine.active
        log.info(
            "serving %s %s (%s, %s) from %s",
            active.identity.name,
            active.identity.version,
            active.model.format,
            active.model.runtime,
            active.path,
        )
        self.engine.start()
        self.reporter.serving(active)
        self.updater.start()
        if self.config.updates.watch:
            self.watcher = StoreWatcher(self.store.root, self.updater.submit_local)
            self.watcher.start()
        if self.config.http.listen:
            host, port = self.config.http.address
            self.http = HealthServer(host, port, self.metrics.registry, self.readiness)
            self.http.start()
        self.connection.start()

    def stop(self) -> None:
        """Drain and disconnect; bounded by ``module.shutdown_timeout_s``."""
        deadline = time.monotonic() + self.config.module.shutdown_timeout_s
        self.connection.stop_intake()
        if self.watcher is not None:
            self.watcher.stop()
        self.updater.stop(timeout=1.0)
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


__all__ = ["EdgeInferModule", "run_module", "topic_of"]
