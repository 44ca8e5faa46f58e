"""The retained health summary on ``edgeinfer/{module_id}/health``, every few seconds.

So a fleet view learns how each module is doing from the broker alone
(``edgeinfer fleet status``): readings and errors a second over the last
interval, p50/p99 from arrival to the broker's acknowledgement of the answer
(from the histogram's buckets: an upper bound, to a bucket's width), the queue
depth and the readings not yet acknowledged. Computed from the module's own
metrics, on a thread of its own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson

from edgeinfer.observability.metrics import Metrics
from edgeinfer.observability.samples import buckets, by_label, read_registry, value

log = logging.getLogger(__name__)


class HealthPublisher:
    """Publishes a summary of the metrics every ``interval_s`` seconds."""

    def __init__(
        self,
        metrics: Metrics,
        publish: Callable[[bytes], None],
        interval_s: float,
        queue_depth: Callable[[], int],
        unacked: Callable[[], int],
    ) -> None:
        self._metrics = metrics
        self._publish = publish
        self._interval_s = interval_s
        self._queue_depth = queue_depth
        self._unacked = unacked
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health", daemon=True)
        self._last = self._totals()
        self._at = time.monotonic()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self._publish(orjson.dumps(self.summary()))
            except Exception:  # a summary must never take the module down
                log.exception("could not publish the health summary")

    def summary(self) -> dict[str, Any]:
        """The summary since the last one (and starts the next interval)."""
        now = time.monotonic()
        totals = self._totals()
        seconds = max(now - self._at, 1e-9)
        delta = {key: totals[key] - self._last[key] for key in ("readings", "errors")}
        buckets = [
            (le, totals["buckets"][le] - self._last["buckets"].get(le, 0.0))
            for le in totals["buckets"]
        ]
        self._last, self._at = totals, now
        return {
            "ts": time.time(),
            "interval_s": round(seconds, 3),
            "readings_per_s": round(delta["readings"] / seconds, 2),
            "errors_per_s": round(delta["errors"] / seconds, 2),
            "p50_ms": _quantile_ms(buckets, 0.5),
            "p99_ms": _quantile_ms(buckets, 0.99),
            "queue_depth": self._queue_depth(),
            "unacked": self._unacked(),
        }

    def _totals(self) -> dict[str, Any]:
        flat = read_registry(self._metrics.registry)
        return {
            "readings": value(flat, "edgeinfer_messages_received_total"),
            "errors": sum(by_label(flat, "edgeinfer_reading_errors_total", "reason").values()),
            "buckets": dict(buckets(flat, "edgeinfer_end_to_end_seconds_bucket")),
        }


def _quantile_ms(buckets: list[tuple[float, float]], q: float) -> float | None:
    """The upper bound of the bucket holding quantile ``q`` of cumulative bucket counts."""
    ordered = sorted(buckets)
    total = ordered[-1][1] if ordered else 0.0
    if total <= 0:
        return None
    for le, count in ordered:
        if count >= q * total:
            return None if le == float("inf") else round(le * 1000, 3)
    return None
