"""The long-running module: wires config, store, engine, MQTT, updates and HTTP together.

Lifecycle: :class:`EdgeInferModule` serves the store's ``current`` model (after
it passes its self-test, see :mod:`edgeinfer.updates.startup`);
:meth:`~EdgeInferModule.start` starts the engine, the updater, the store
watcher, the health server and the MQTT connection;
:meth:`~EdgeInferModule.stop` stops taking readings, answers those in flight,
waits for the broker to acknowledge them (so their readings get
acknowledged), publishes ``offline`` and disconnects, all within
``module.shutdown_timeout_s``.
"""

from __future__ import annotations

import gc
import logging
import signal
import threading
import time
from pathlib import Path
from types import FrameType

from edgeinfer.config import Config
from edgeinfer.loaded import LoadedModel
from edgeinfer.mqtt.connection import MqttConnection
from edgeinfer.mqtt.outbox import log_refusal
from edgeinfer.observability.health import HealthPublisher
from edgeinfer.observability.http import HealthServer
from edgeinfer.observability.metrics import Metrics
from edgeinfer.pipeline.engine import Engine, EngineSettings
from edgeinfer.pipeline.responder import Responder
from edgeinfer.serving.admission import RuntimeOptions
from edgeinfer.topics import module_topic
from edgeinfer.updates.reported import Reporter
from edgeinfer.updates.served import Served
from edgeinfer.updates.startup import serve_from_store
from edgeinfer.updates.store import ModelStore
from edgeinfer.updates.updater import Updater
from edgeinfer.updates.watcher import StoreWatcher

log = logging.getLogger(__name__)

#: The stream journal, in the state directory (windowed models only).
JOURNAL_NAME = "streams.sqlite"


class EdgeInferModule:
    """One running edgeinfer module."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = Metrics()
        self.http: HealthServer | None = None
        self.watcher: StoreWatcher | None = None
        mid = config.module.id
        options = RuntimeOptions(
            config.model.threads,
            tuple(config.model.providers),
            config.updates.self_test_runs,
            tuple(config.streams.window_overrides().items()),
        )
        self.store = ModelStore(Path(config.module.state_dir))
        loaded, stored = serve_from_store(self.store, config.model.path, options)
        self.connection = MqttConnection(
            config.broker, config.client_id, module_topic(mid, "status")
        )
        settings = EngineSettings(
            max_batch=config.pipeline.max_batch,
            max_delay_ms=config.pipeline.max_delay_ms,
            queue_size=config.pipeline.queue_size,
            max_payload_bytes=config.pipeline.max_payload_bytes,
            allow_non_finite=config.pipeline.allow_non_finite,
            output=config.topics.output_template,
            module_id=mid,
            journal=Path(config.module.state_dir) / JOURNAL_NAME
            if config.streams.journal
            else None,
            journal_sync=config.streams.journal_sync,
        )
        self.responder = Responder(
            self.connection, self.metrics, module_topic(mid, "errors"), config.topics.output_qos
        )
        self.engine = Engine(loaded, settings, self.responder, self.metrics)
        reporter = Reporter(mid, self.store, self._publish_reported, config.module.labels)
        self.updater = Updater(
            config.updates,
            self.store,
            Served(self.store, self.engine, stored),
            reporter,
            options,
            on_swap=self._show_model,
            module_id=mid,
            labels=config.module.labels,
            routes=self.engine,
            metrics=self.metrics,
        )
        self.engine.observe(self.updater.observe)
        self.metrics.watch(lambda: self.engine.depth, lambda: self.connection.unacked)
        self.health: HealthPublisher | None = None
        if config.module.health_interval_s > 0:
            self.health = HealthPublisher(
                self.metrics,
                self._publish_health,
                config.module.health_interval_s,
                lambda: self.engine.depth,
                lambda: self.connection.unacked,
            )
        self._show_model(loaded)

    # -- callbacks from other threads -------------------------------------------

    def _on_broker_state(self, connected: bool) -> None:
        self.metrics.broker_connected.set(1 if connected else 0)
        if connected:
            self.metrics.broker_connects.inc()
            self.updater.request_report()

    def _publish_reported(self, payload: bytes) -> None:
        topic = module_topic(self.config.module.id, "reported")
        self.connection.publish(topic, payload, qos=1, retain=True, on_done=log_refusal(topic))

    def _publish_health(self, payload: bytes) -> None:
        topic = module_topic(self.config.module.id, "health")
        if self.connection.connected:  # a stale summary is worse than none
            self.connection.publish(topic, payload, qos=1, retain=True, on_done=log_refusal(topic))

    def _show_model(self, loaded: LoadedModel) -> None:
        model = loaded.model
        self.metrics.model_info.info(
            {
                "name": loaded.identity.name,
                "version": loaded.identity.version,
                "format": model.format,
                "runtime": model.runtime,
                "sha256": loaded.sha256,
            }
        )

    def readiness(self) -> tuple[bool, str]:
        """Ready when connected to the broker, a model is active and answers are taken."""
        if not self.connection.connected:
            return False, f"not connected to the broker: {self.connection.last_error}"
        refusing = self.responder.refusing
        if refusing is not None:
            return False, refusing
        for flt, why in self.connection.subscription_errors.items():
            return False, f"the broker refused the subscription to {flt!r}: {why}"
        return True, "ok"

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        loaded = self.engine.active
        log.info(
            "serving %s (%s, %s) from %s",
            loaded.describe(),
            loaded.model.format,
            loaded.model.runtime,
            loaded.path,
        )
        self.updater.start()
        if self.config.updates.watch:
            self.watcher = StoreWatcher(self.store.root, self.updater.submit_local)
            self.watcher.start()
        if self.config.http.listen:
            host, port = self.config.http.address
            self.http = HealthServer(host, port, self.metrics.registry, self.readiness)
            self.http.start()
        if self.health is not None:
            self.health.start()
        mid = self.config.module.id
        self.connection.start(
            [(flt, self.config.topics.input_qos) for flt in self.config.topics.inputs],
            self.engine,
            self.engine.submit,
            control={module_topic(mid, "desired"): self.updater.submit_desired},
            on_state=self._on_broker_state,
            retained=self.config.topics.retained,
        )

    def stop(self) -> None:
        """Drain and disconnect; bounded by ``module.shutdown_timeout_s``."""
        deadline = time.monotonic() + self.config.module.shutdown_timeout_s
        self.connection.stop_intake()
        self.responder.close()
        if self.health is not None:
            self.health.stop()
        if self.watcher is not None:
            self.watcher.stop()
        self.updater.stop(timeout=1.0)
        if not self.engine.drain(max(0.1, deadline - time.monotonic())):
            log.warning(
                "shutdown timeout: %d readings still queued; the broker will redeliver them",
                self.engine.depth,
            )
        if not self.connection.wait_acked(max(0.0, deadline - time.monotonic())):
            log.warning(
                "shutdown timeout: %d answers not yet acknowledged by the broker",
                self.connection.unacked,
            )
        self.connection.stop(max(0.5, deadline - time.monotonic()))
        self.engine.close()
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
    # What start-up made (the runtime's and libraries' objects, the model) lives
    # as long as the process: moved out of the collector's sight, a full
    # collection takes under a millisecond instead of 15-25 ms, long enough to
    # stall every reading that arrives meanwhile (benchmarks/bench_pipeline.py).
    gc.collect()
    gc.freeze()
    module.start()
    while not stop.wait(1.0):
        pass
    module.stop()
    return 0


__all__ = ["EdgeInferModule", "run_module"]
