"""The long-running module: wires config, store, engine, MQTT, updates and HTTP together.

Lifecycle: :class:`EdgeInferModule` serves the store's ``current`` model, or
the ``model.path`` file installed as a new ``current``, once it passed its
self-test (:mod:`edgeinfer.updates.startup` says which, and what a refusal does);
:meth:`~EdgeInferModule.start` starts the engine, the updater, the store
watcher, the health server and the MQTT connection;
:meth:`~EdgeInferModule.stop` stops taking readings, answers those in flight,
waits for the broker to acknowledge them (so their readings get
acknowledged), publishes ``offline`` and disconnects, all within
``module.shutdown_timeout_s``.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from edgeinfer.config import Config
from edgeinfer.http.predict import Predictor
from edgeinfer.http.server import HealthServer, Operator
from edgeinfer.model.loaded import LoadedModel
from edgeinfer.mqtt.connection import MqttConnection
from edgeinfer.mqtt.outbox import log_refusal
from edgeinfer.observability.health import HealthPublisher
from edgeinfer.observability.metrics import Metrics
from edgeinfer.observability.status import StatusBoard
from edgeinfer.pipeline.engine import Engine, EngineSettings
from edgeinfer.pipeline.responder import Responder
from edgeinfer.serving.admission import RuntimeOptions
from edgeinfer.topics import is_shared, module_topic
from edgeinfer.updates.reported import Reporter
from edgeinfer.updates.served import Served
from edgeinfer.updates.startup import serve_from_store
from edgeinfer.updates.states import UpdateState, UpdateStatus
from edgeinfer.updates.store import ModelStore
from edgeinfer.updates.updater import Updater
from edgeinfer.updates.watcher import StoreWatcher

log = logging.getLogger(__name__)

#: A replica leaving a shared subscription is drained once no reading came for this long.
LEAVE_QUIET_S = 0.5


class EdgeInferModule:
    """One running edgeinfer module."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = Metrics()
        self.http: HealthServer | None = None
        self.watcher: StoreWatcher | None = None
        mid = config.module.id
        options = RuntimeOptions.from_config(config)
        self.store = ModelStore(Path(config.module.state_dir))
        loaded, stored = serve_from_store(self.store, config.model.path, options)
        broker = config.broker
        self.shared = [flt for flt in config.topics.inputs if is_shared(flt)]
        if self.shared:  # a replica: the share dealt to it while away waits only so long
            expiry = min(broker.session_expiry_s, broker.shared_session_expiry_s)
            broker = dataclasses.replace(broker, session_expiry_s=expiry)
        self.connection = MqttConnection(broker, config.client_id, module_topic(mid, "status"))
        settings = EngineSettings.from_config(config)
        self.responder = Responder(
            self.connection, self.metrics, module_topic(mid, "errors"), config.topics.output_qos
        )
        self.engine = Engine(loaded, settings, self.responder, self.metrics)
        self.board = StatusBoard(self.metrics.registry, self._describe)
        self.predictor = Predictor(self.engine.submit, lambda: self.engine.active)
        self._token = config.http.resolved_token()  # an unreadable token file stops start-up here
        self.reporter = reporter = Reporter(
            mid, self.store, self._publish_reported, config.module.labels, self._on_step
        )
        self._on_step(reporter.status)
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

    def _on_step(self, status: UpdateStatus) -> None:
        self.metrics.show_update_state(status.state.value, (s.value for s in UpdateState))
        self.board.record_step(status.as_dict())

    def _describe(self) -> dict[str, Any]:
        """The live facts of ``/api/status`` (its figures come from the metrics)."""
        doc = self.reporter.document(versions=False)
        loaded = self.engine.active
        doc["model"]["format"] = loaded.model.format
        doc["model"].setdefault("name", loaded.identity.name)
        doc["model"].setdefault("version", loaded.identity.version)
        pipeline = self.config.pipeline
        doc["batch"] = {
            "max_batch": pipeline.max_batch,
            "max_delay_ms": pipeline.max_delay_ms,
            "queue_size": pipeline.queue_size,
        }
        doc["broker"] = {
            "connected": self.connection.connected,
            "address": self.config.broker.display_url,
            "last_error": None if self.connection.connected else self.connection.last_error,
        }
        ready, reason = self.readiness()
        doc["ready"] = {"ready": ready, "reason": reason}
        doc.setdefault("rollout", None)
        return doc

    def _operator(self) -> Operator:
        http = self.config.http
        return Operator(
            status=self.board.snapshot,
            predict=self.predictor,
            token=self._token,
            open_without_token=http.on_loopback,
            max_body=self.config.pipeline.max_payload_bytes,
            max_concurrent=http.predict_concurrency,
            body_timeout_s=http.body_timeout_s,
            max_pending_bodies=http.max_pending_bodies,
            counted=lambda status: self.metrics.predictions.labels(str(status)).inc(),
        )

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
                "module_id": self.config.module.id,  # dashboards tell modules apart by it
                "name": loaded.identity.name,
                "version": loaded.identity.version,
                "format": model.format,
                "runtime": model.runtime,
                "sha256": loaded.sha256,
            }
        )

    def readiness(self) -> tuple[bool, str]:
        """Ready when connected to the broker and subscribed (every SUBACK in), a model is
        active and answers are taken."""
        if not self.connection.connected:
            return False, f"not connected to the broker: {self.connection.last_error}"
        refusing = self.responder.refusing
        if refusing is not None:
            return False, refusing
        for flt, why in self.connection.subscription_errors.items():
            return False, f"the broker refused the subscription to {flt!r}: {why}"
        waiting = self.connection.subscribing
        if waiting:  # a reading published meanwhile may be dropped by the broker
            return False, f"subscribing: no SUBACK yet for {waiting[0]!r}"
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
            operator = self._operator()
            self.http = HealthServer(
                host,
                port,
                self.metrics.registry,
                self.readiness,
                operator,
                backlog=self.config.http.listen_backlog,
            )
            self.board.start()
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
        self.predictor.close()  # posted readings now would only stretch the drain
        left = self._leave_shared(deadline) if self.shared else False
        self.connection.stop_intake()
        self.responder.close()
        if self.health is not None:
            self.health.stop()
        if self.watcher is not None:
            self.watcher.stop()
        self.updater.stop(timeout=1.0)
        drained = self.engine.drain(max(0.1, deadline - time.monotonic()))
        if not drained:
            log.warning(
                "shutdown timeout: %d readings still queued; the broker will redeliver them",
                self.engine.depth,
            )
        acked = self.connection.wait_acked(max(0.0, deadline - time.monotonic()))
        if not acked:
            log.warning(
                "shutdown timeout: %d answers not yet acknowledged by the broker",
                self.connection.unacked,
            )
        # A replica that left its shared subscriptions with nothing unanswered ends its
        # session, so the broker keeps nothing for it; otherwise the session keeps
        # what is unanswered for its return (within the session expiry).
        every_input_shared = len(self.shared) == len(self.config.topics.inputs)
        end_session = left and drained and acked and every_input_shared
        self.connection.stop(max(0.5, deadline - time.monotonic()), end_session=end_session)
        self.engine.close()
        if self.http is not None:
            self.http.stop()
        self.board.stop()
        self.engine.active.model.close()
        log.info("stopped")

    def _leave_shared(self, deadline: float) -> bool:
        """Unsubscribe the shared filters, taking readings until none comes for a moment.

        Messages the broker queued to this session before the UNSUBACK keep coming,
        one per acknowledgement: they are answered here, not stranded in a session
        that nobody resumes. True when the broker confirmed and it went quiet.
        """
        log.info("leaving the shared subscriptions %s", self.shared)
        wait = min(5.0, (deadline - time.monotonic()) / 3)  # the rest is for the drain
        if not self.connection.leave(self.shared, max(0.1, wait)):
            log.warning(
                "the broker did not confirm the unsubscribe: readings dealt to this replica "
                "wait in its session for its return (broker.shared_session_expiry_s)"
            )
            return False
        if len(self.shared) != len(self.config.topics.inputs):
            return False  # other inputs keep the session: what is queued in it waits there
        quiet_since = time.monotonic()
        seen = self._received()
        while time.monotonic() < deadline:
            now = self._received()
            if now != seen or self.connection.unacked or self.engine.depth:
                seen, quiet_since = now, time.monotonic()
            elif time.monotonic() - quiet_since >= LEAVE_QUIET_S:
                return True
            time.sleep(0.02)
        return False

    def _received(self) -> float:
        return self.metrics.registry.get_sample_value("edgeinfer_messages_received_total") or 0.0


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
