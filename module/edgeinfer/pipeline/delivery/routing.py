"""Two versions at once: which readings a candidate answers or sees, and how they compare.

A :class:`Route` is set on the engine by the rollout (updater thread) and used
on the serving thread:

* ``shadow``: the active model answers every reading; a ``percent`` of them
  are also run on the candidate *after* the active model's results are handed
  on, its results go to the shadow topic, never to the result topic;
* ``canary`` and ``ab``: readings whose stream (the topic, or the payload field
  ``sticky_by``) hashes below ``percent`` are answered by the candidate, the
  others by the active model: a stream always gets the same version. To compare,
  the active model also runs on a share of the candidate's readings.

Mirrored work (the second model on a reading already answered) is bounded by
:class:`MirrorBudget`: at most ``budget`` of the serving thread's model time,
and never while the reading queue is half full or more (a mirror must not
cost back-pressure). Skipped mirrors are counted, not queued.

:class:`Comparison` collects, per reading compared: top-1 agreement, flips
per class, the two score distributions, per-version latencies, errors and
non-finite answers. It is read by the rollout's gates (:mod:`edgeinfer.updates.rollout`).
"""

from __future__ import annotations

import collections
import hashlib
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeinfer.model.loaded import LoadedModel

SHADOW, CANARY, AB = "shadow", "canary", "ab"
SCORE_BINS = 20


def bucket(key: str) -> float:
    """A stream key's place in [0, 100): stable across restarts and processes."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 10_000 / 100


class MirrorBudget:
    """Mirrored runs may take at most ``budget`` of the model time (sums decaying in time)."""

    def __init__(self, budget: float, half_life_s: float = 5.0) -> None:
        self._budget = budget
        self._primary = 0.0
        self._mirror = 0.0
        self._half_life_s = max(half_life_s, 0.1)
        self._at = time.monotonic()

    def allows(self, backlog: bool) -> bool:
        if backlog or self._budget <= 0:
            return False
        return self._mirror <= self._budget * (self._primary + self._mirror)

    def spent(self, primary_s: float, mirror_s: float) -> None:
        now = time.monotonic()
        decay = 0.5 ** ((now - self._at) / self._half_life_s)
        self._at = now
        self._primary = self._primary * decay + primary_s
        self._mirror = self._mirror * decay + mirror_s


#: The label a version's failed answer counts as: it disagrees with any real label.
FAILED_LABEL = "<failed>"
#: Runs of each version at one batch size before their p95 latencies are compared.
LATENCY_RUNS = 20


class Comparison:
    """What the two versions did on the readings both saw (thread-safe).

    ``answered`` counts readings each version answered for real; ``mirrored`` the
    runs made only to compare. Latencies are kept per batch size, because a
    mirror or a small canary share runs smaller batches than the active model,
    and per reading a small batch costs more: the latency gate compares the two
    versions at the batch size both ran most, once each ran it :data:`LATENCY_RUNS` times.
    """

    def __init__(self, verdict_at: int = 0, ready: Callable[[], None] | None = None) -> None:
        self._lock = threading.Lock()
        #: Compare no more than this until the rollout has judged (0: no pause), and call
        #: ``ready`` when it is reached, so the verdict comes after exactly that many.
        self.verdict_at = verdict_at
        self.judged = False
        self._ready = ready
        self.compared = 0
        self.agreed = 0
        self.flips: collections.Counter[tuple[str, str]] = collections.Counter()
        self.by_class: collections.Counter[str] = collections.Counter()
        self.scores: dict[str, np.ndarray] = {
            "active": np.zeros(SCORE_BINS, np.int64),
            "candidate": np.zeros(SCORE_BINS, np.int64),
        }
        self.answered: collections.Counter[str] = collections.Counter()  # by role
        self.mirrored: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.non_finite: collections.Counter[str] = collections.Counter()
        self.skipped = 0
        self._latencies: dict[tuple[str, int], collections.deque[float]] = {}

    def ran(
        self,
        role: str,
        readings: int,
        seconds: float,
        failed: int,
        non_finite: int,
        mirror: bool = False,
    ) -> None:
        """A run of ``role`` ("active" or "candidate") on ``readings`` readings."""
        if not readings:
            return
        with self._lock:
            (self.mirrored if mirror else self.answered)[role] += readings
            self.errors[role] += failed
            self.non_finite[role] += non_finite
            key = (role, readings)
            if key not in self._latencies:
                self._latencies[key] = collections.deque(maxlen=500)
            self._latencies[key].append(seconds * 1000 / readings)

    def skip(self, readings: int) -> None:
        with self._lock:
            self.skipped += readings

    @property
    def waiting(self) -> bool:
        """Whether comparisons pause until the rollout judges the ones it has."""
        return bool(self.verdict_at) and not self.judged and self.compared >= self.verdict_at

    def compare(self, active: tuple[str, float], candidate: tuple[str, float]) -> None:
        """One reading's (label, score) from each version (``FAILED_LABEL`` for a failure)."""
        with self._lock:
            self.compared += 1
            if self.compared == self.verdict_at and self._ready is not None:
                self._ready()
            self.by_class[active[0]] += 1
            if active[0] == candidate[0]:
                self.agreed += 1
            else:
                self.flips[(active[0], candidate[0])] += 1
            for role, (_, score) in (("active", active), ("candidate", candidate)):
                if math.isfinite(score):  # a NaN score disagrees; it has no place to bin
                    index = min(SCORE_BINS - 1, max(0, int(score * SCORE_BINS)))
                    self.scores[role][index] += 1

    def snapshot(self) -> dict[str, Any]:
        """A consistent copy for the gates and the reports."""
        with self._lock:
            return {
                "compared": self.compared,
                "agreed": self.agreed,
                "flips": dict(self.flips),
                "by_class": dict(self.by_class),
                "scores": {k: v.copy() for k, v in self.scores.items()},
                "answered": dict(self.answered),
                "mirrored": dict(self.mirrored),
                "errors": dict(self.errors),
                "non_finite": dict(self.non_finite),
                "skipped": self.skipped,
                "p95_ms": self._p95_at_a_shared_batch_size(),
            }

    def _p95_at_a_shared_batch_size(self) -> dict[str, float | None]:
        # A p95 of fewer than LATENCY_RUNS timings is their maximum: one run the OS paused
        # (a few ms, against a model's 0.1 ms) would judge the whole candidate.
        sizes = {
            n
            for (role, n), timings in self._latencies.items()
            if role == "active" and len(timings) >= LATENCY_RUNS
        } & {
            n
            for (role, n), timings in self._latencies.items()
            if role == "candidate" and len(timings) >= LATENCY_RUNS
        }
        if not sizes:
            return {"active": None, "candidate": None, "batch": None}
        size = max(
            sizes,
            key=lambda n: min(
                len(self._latencies[("active", n)]), len(self._latencies[("candidate", n)])
            ),
        )
        return {
            "active": _p95(self._latencies[("active", size)]),
            "candidate": _p95(self._latencies[("candidate", size)]),
            "batch": size,
        }


def _p95(timings: collections.deque[float]) -> float:
    # Nearest rank: a value at least 95 % of the runs took no longer than, so that one
    # run in 20 may be an outlier (interpolating would let it pull the p95 up).
    return float(np.percentile(list(timings), 95, method="inverted_cdf"))


@dataclass(frozen=True)
class Route:
    """A candidate and how readings reach it."""

    candidate: LoadedModel
    mode: str
    percent: float
    sticky_by: str = "topic"
    budget: float = 0.5  # the share of model time mirrored runs may take
    comparison: Comparison = field(default_factory=Comparison)

    def to_candidate(self, key: str) -> bool:
        """Canary/A-B: whether the stream ``key`` is the candidate's (sticky, by hash)."""
        return self.mode != SHADOW and bucket(key) < self.percent
