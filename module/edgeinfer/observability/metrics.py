"""The Prometheus metrics of one module, in a registry of its own."""

from __future__ import annotations

from collections.abc import Callable

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
        self.model_info = Info("edgeinfer_model", "The active model", registry=r)
        self.broker_connected = Gauge(
            "edgeinfer_broker_connected", "1 while connected to the broker", registry=r
        )
        self.broker_connects = Counter(
            "edgeinfer_broker_connects", "Successful connections to the broker", registry=r
        )

    def watch(self, queue_depth: Callable[[], float], unacked: Callable[[], float]) -> None:
        """Read the live gauges from their owners at scrape time."""
        self.queue_depth.set_function(queue_depth)
        self.unacked_readings.set_function(unacked)
