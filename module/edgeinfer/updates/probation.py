"""Probation: watch a freshly swapped model and say when it must be rolled back."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np

from edgeinfer.config import UpdatesConfig
from edgeinfer.model.loaded import LoadedModel
from edgeinfer.pipeline.engine import BatchOutcome
from edgeinfer.updates.states import Target
from edgeinfer.updates.store import StoredVersion


@dataclass(frozen=True)
class Limits:
    """Thresholds a model on probation must stay within."""

    max_error_rate: float
    max_latency_ms: float  # p95 per batch; 0 disables
    min_readings: int


class ProbationMonitor:
    """Collects batch outcomes of one model (fed from the serving thread)."""

    def __init__(self, watched: LoadedModel, limits: Limits) -> None:
        self._watched = watched
        self._limits = limits
        self._lock = threading.Lock()
        self.readings = 0
        self.bad = 0
        self._latencies_ms: list[float] = []

    def observe(self, outcome: BatchOutcome) -> None:
        if outcome.active is not self._watched:
            return
        with self._lock:
            self.readings += outcome.readings
            self.bad += outcome.failed + outcome.non_finite
            self._latencies_ms.append(outcome.seconds * 1000)
            del self._latencies_ms[:-1000]

    def verdict(self) -> str | None:
        """Why the model must go, or None while it behaves."""
        with self._lock:
            if self.readings < self._limits.min_readings:
                return None
            rate = self.bad / self.readings
            if rate > self._limits.max_error_rate:
                return (
                    f"probation: {self.bad} of {self.readings} readings failed or gave "
                    f"NaN/inf ({rate:.1%}): expected at most "
                    f"{self._limits.max_error_rate:.1%}"
                )
            if self._limits.max_latency_ms > 0 and len(self._latencies_ms) >= 5:
                p95 = float(np.percentile(self._latencies_ms, 95))
                if p95 > self._limits.max_latency_ms:
                    return (
                        f"probation: p95 inference latency {p95:.2f} ms: expected at most "
                        f"{self._limits.max_latency_ms} ms"
                    )
        return None


@dataclass
class Probation:
    """A candidate serving on probation, and what to go back to if it fails."""

    monitor: ProbationMonitor
    candidate: LoadedModel
    candidate_stored: StoredVersion
    old: LoadedModel
    old_stored: StoredVersion | None
    target: Target
    ends: float  # time.monotonic() when it passes
    applied: threading.Event  # set once the engine serves the candidate

    @classmethod
    def start(
        cls,
        config: UpdatesConfig,
        candidate: LoadedModel,
        stored: StoredVersion,
        old: LoadedModel,
        old_stored: StoredVersion | None,
        target: Target,
        applied: threading.Event,
    ) -> Probation:
        """Watch ``candidate`` for ``updates.probation_s`` with the configured limits."""
        limits = Limits(
            max_error_rate=config.probation_max_error_rate,
            max_latency_ms=config.probation_max_latency_ms
            or float(candidate.self_test.get("max_latency_ms", 0) or 0),
            min_readings=config.probation_min_readings,
        )
        return cls(
            ProbationMonitor(candidate, limits),
            candidate,
            stored,
            old,
            old_stored,
            target,
            time.monotonic() + config.probation_s,
            applied,
        )
