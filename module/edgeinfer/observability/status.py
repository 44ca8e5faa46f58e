"""What the status page shows (``/api/status``): live figures, their last minutes, the story.

A sampler thread reads the module's own metrics once a second into a ring of
the last ten minutes: rates from the counters' differences, and end-to-end
p50/p99 from the histogram's bucket differences over the last few seconds (how
``histogram_quantile`` over a ``rate`` reads them in Prometheus). The totals in
a snapshot are read at the moment it is asked for, so they agree with a scrape
of ``/metrics`` taken around it. The update timeline is told by the reporter,
one entry per step.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry

from edgeinfer.observability.samples import Flat, buckets, by_label, read_registry, value

#: Seconds between samples, and how many are kept (ten minutes).
SAMPLE_S = 1.0
KEEP = 600
#: Quantiles are read over this many samples' worth of observations.
QUANTILE_SPAN = 5
#: Update steps kept for the timeline.
HISTORY = 100


def quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """``histogram_quantile``: the q-quantile of cumulative ``buckets`` (None when empty)."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower  # beyond the last finite bucket: its bound is the best known
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, count
    return lower


@dataclass(frozen=True)
class Point:
    """One sample's figures, as drawn."""

    t: float
    figures: dict[str, Any]


class StatusBoard:
    """Keeps the last minutes of the module's figures and its update timeline."""

    def __init__(
        self,
        registry: CollectorRegistry,
        describe: Callable[[], dict[str, Any]],
        interval_s: float = SAMPLE_S,
        keep: int = KEEP,
    ) -> None:
        self._registry = registry
        self._describe = describe
        self._interval = interval_s
        self._points: deque[Point] = deque(maxlen=keep)
        # The raw counters of the last few samples only: differences need no more.
        self._recent: deque[tuple[float, Flat]] = deque(maxlen=QUANTILE_SPAN)
        self._history: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="status", daemon=True)

    def start(self) -> None:
        self.sample()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)

    def record_step(self, step: Mapping[str, Any]) -> None:
        """Add an update step (the reported ``update`` object) to the timeline."""
        with self._lock:
            self._history.append(dict(step))

    def sample(self, now: float | None = None) -> None:
        """Take one sample (the sampler thread calls this every ``interval_s``)."""
        flat = read_registry(self._registry)
        now = time.time() if now is None else now
        with self._lock:
            figures = _figures(flat, now, list(self._recent))
            self._points.append(Point(now, figures))
            self._recent.append((now, flat))

    def snapshot(self) -> dict[str, Any]:
        """The ``/api/status`` document (docs/reference.md, "HTTP")."""
        flat = read_registry(self._registry)
        with self._lock:
            points = list(self._points)
            history = list(self._history)
        doc = self._describe()
        doc["totals"] = _totals(flat)
        doc["queue"] = {
            "depth": value(flat, "edgeinfer_queue_depth"),
            "capacity": value(flat, "edgeinfer_queue_capacity"),
            "unacked": value(flat, "edgeinfer_unacked_readings"),
            "backpressure_waits": value(flat, "edgeinfer_backpressure_waits_total"),
            "backpressure_seconds": round(value(flat, "edgeinfer_backpressure_seconds_total"), 3),
        }
        doc["history"] = history
        doc["series"] = _series(points)
        doc["sample_interval_s"] = self._interval
        doc["ts"] = time.time()
        return doc

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.sample()


def _totals(flat: Flat) -> dict[str, Any]:
    count = value(flat, "edgeinfer_batch_size_count")
    return {
        "readings": value(flat, "edgeinfer_messages_received_total"),
        "results": value(flat, "edgeinfer_results_published_total"),
        "errors": by_label(flat, "edgeinfer_reading_errors_total", "reason"),
        "publish_refused": by_label(flat, "edgeinfer_publish_refused_total", "reason"),
        "predictions": by_label(flat, "edgeinfer_http_predictions_total", "status"),
        "batches": count,
        "mean_batch": round(value(flat, "edgeinfer_batch_size_sum") / count, 2) if count else None,
    }


def _figures(flat: Flat, now: float, before: list[tuple[float, Flat]]) -> dict[str, Any]:
    """The figures of a sample taken at ``now``, from its counters and the samples before it."""
    figures: dict[str, Any] = {
        "queue_depth": value(flat, "edgeinfer_queue_depth"),
        "unacked": value(flat, "edgeinfer_unacked_readings"),
        "connected": value(flat, "edgeinfer_broker_connected"),
    }
    if not before:
        return figures  # rates need a sample before
    last_t, last = before[-1]
    figures.update(_rates(flat, last, max(1e-3, now - last_t)))
    e2e = _delta_buckets(flat, before[0][1], "edgeinfer_end_to_end_seconds_bucket")
    for name, q in (("p50_ms", 0.5), ("p99_ms", 0.99)):
        seconds = quantile(q, e2e)
        figures[name] = None if seconds is None else round(seconds * 1000, 3)
    return figures


def _rates(flat: Flat, before: Flat, dt: float) -> dict[str, Any]:
    def per_s(name: str) -> float:
        return round(max(0.0, value(flat, name) - value(before, name)) / dt, 2)

    errors_now = by_label(flat, "edgeinfer_reading_errors_total", "reason")
    errors_then = by_label(before, "edgeinfer_reading_errors_total", "reason")
    return {
        "readings_per_s": per_s("edgeinfer_messages_received_total"),
        "results_per_s": per_s("edgeinfer_results_published_total"),
        "errors_per_s": {
            reason: round(max(0.0, count - errors_then.get(reason, 0.0)) / dt, 2)
            for reason, count in errors_now.items()
        },
        "backpressure_per_s": per_s("edgeinfer_backpressure_waits_total"),
    }


def _delta_buckets(flat: Flat, before: Flat, name: str) -> list[tuple[float, float]]:
    then = dict(buckets(before, name))
    return [(bound, count - then.get(bound, 0.0)) for bound, count in buckets(flat, name)]


def _series(points: Iterable[Point]) -> dict[str, Any]:
    """The samples as columns, the way a chart takes them."""
    kept = [p for p in points if "readings_per_s" in p.figures]
    reasons = sorted({r for p in kept for r in p.figures["errors_per_s"]})
    return {
        "t": [round(p.t, 3) for p in kept],
        "readings_per_s": [p.figures["readings_per_s"] for p in kept],
        "results_per_s": [p.figures["results_per_s"] for p in kept],
        "errors_per_s": {r: [p.figures["errors_per_s"].get(r, 0.0) for p in kept] for r in reasons},
        "p50_ms": [p.figures["p50_ms"] for p in kept],
        "p99_ms": [p.figures["p99_ms"] for p in kept],
        "queue_depth": [p.figures["queue_depth"] for p in kept],
        "unacked": [p.figures["unacked"] for p in kept],
        "backpressure_per_s": [p.figures["backpressure_per_s"] for p in kept],
        "connected": [p.figures["connected"] for p in kept],
    }
