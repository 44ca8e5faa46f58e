"""The Prometheus metrics of one module, in a registry of its own."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

_LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    """Every ``edgeinfer_*`` metric; one instance per module."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.messages_received = Counter(
            "edgeinfer_messages_received", "Readings received from the broker", registry=r
        )
        self.results_published = Counter(
            "edgeinfer_results_published", "Results published", registry=r
        )
        self.reading_errors = Counter(
            "edgeinfer_reading_errors", "Readings rejected, by reason", ["reason"], registry=r
        )
        self.publish_refused = Counter(
            "edgeinfer_publish_refused",
            "Answers the broker refused (MQTT 5 PUBACK >= 0x80), by reason",
            ["reason"],
            registry=r,
        )
        self.inference_seconds = Histogram(
            "edgeinfer_inference_seconds",
            "Model run time per batch",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.end_to_end_seconds = Histogram(
            "edgeinfer_end_to_end_seconds",
            "From a reading's arrival to the broker's acknowledgement of its answer",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "edgeinfer_batch_size", "Readings per model run", buckets=_BATCH_BUCKETS, registry=r
        )
        self.queue_depth = Gauge(
            "edgeinfer_queue_depth", "Readings waiting to be answered", registry=r
        )
        self.queue_capacity = Gauge(
            "edgeinfer_queue_capacity", "Size of the reading queue", registry=r
        )
        self.backpressure_waits = Counter(
            "edgeinfer_backpressure_waits",
            "Times a reading waited for room in the full queue (nothing is dropped)",
            registry=r,
        )
        self.backpressure_seconds = Counter(
            "edgeinfer_backpressure_seconds", "Time spent waiting for room in the queue", registry=r
        )
        self.unacked_readings = Gauge(
            "edgeinfer_unacked_readings", "Readings received and not yet acknowledged", registry=r
        )
        self._stream_metrics(r)
        self._rollout_metrics(r)
        self.model_info = Info("edgeinfer_model", "The active model", registry=r)
        self.broker_connected = Gauge(
            "edgeinfer_broker_connected", "1 while connected to the broker", registry=r
        )
        self.broker_connects = Counter(
            "edgeinfer_broker_connects", "Successful connections to the broker", registry=r
        )
        self.escalations = Counter(
            "edgeinfer_escalations",
            "Uncertain readings sent to the cascade's escalation topic (sent), or not for the "
            "budget (over_budget) or a payload that cannot travel (failed)",
            ["outcome"],
            registry=r,
        )
        self.update_state = Gauge(
            "edgeinfer_update_state",
            "1 for the update state the module is in (reported update.state), 0 for the others",
            ["state"],
            registry=r,
        )
        self.predictions = Counter(
            "edgeinfer_http_predictions",
            "Readings answered over HTTP (POST /predict), by HTTP status",
            ["status"],
            registry=r,
        )

    def _stream_metrics(self, r: CollectorRegistry) -> None:
        self.streams = Gauge(
            "edgeinfer_streams", "Streams with samples or state kept (windowed models)", registry=r
        )
        self.stream_bytes = Gauge(
            "edgeinfer_stream_bytes", "Memory the streams' windows and states hold", registry=r
        )
        self.stream_evictions = Counter(
            "edgeinfer_stream_evictions",
            "Streams evicted (least recently heard, silent past window.timeout_s) for a new one",
            registry=r,
        )
        self.windows = Counter(
            "edgeinfer_windows", "Windows answered, by how they ended", ["kind"], registry=r
        )
        self.duplicate_samples = Counter(
            "edgeinfer_duplicate_samples",
            "Readings received again (id and ts as one of their stream's last): not added twice",
            registry=r,
        )
        self.journal_commits = Counter(
            "edgeinfer_journal_commits", "Group commits of the stream journal", registry=r
        )

    def _rollout_metrics(self, r: CollectorRegistry) -> None:
        self.rollout_percent = Gauge(
            "edgeinfer_rollout_percent",
            "A rollout's share: readings mirrored (shadow) or streams answered (canary, ab)",
            registry=r,
        )
        self.rollout_compared = Gauge(
            "edgeinfer_rollout_compared", "Readings both versions answered, compared", registry=r
        )
        self.rollout_answered = Gauge(
            "edgeinfer_rollout_answered",
            "Readings each version ran on during the rollout",
            ["version"],
            registry=r,
        )
        self.rollout_gate = Gauge(
            "edgeinfer_rollout_gate", "The rollout's gate values", ["gate"], registry=r
        )
        self.rollout_mirror_skipped = Gauge(
            "edgeinfer_rollout_mirror_skipped",
            "Mirrored runs skipped (over the CPU budget, or readings queued)",
            registry=r,
        )

    def show_update_state(self, state: str, states: Iterable[str]) -> None:
        """Set ``edgeinfer_update_state``: 1 for ``state``, 0 for the other ``states``."""
        for each in states:
            self.update_state.labels(each).set(1 if each == state else 0)

    def watch(self, queue_depth: Callable[[], float], unacked: Callable[[], float]) -> None:
        """Read the live gauges from their owners at scrape time."""
        self.queue_depth.set_function(queue_depth)
        self.unacked_readings.set_function(unacked)
