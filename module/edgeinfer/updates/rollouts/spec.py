"""A desired state's ``rollout`` block, parsed strictly, and the gates it is judged by.

::

    "rollout": {"mode": "shadow" | "canary" | "ab", "percent": 20,
                "steps": [5, 25, 50, 100], "dwell_s": 60, "sticky_by": "topic",
                "min_samples": 200, "gates": {"min_agreement": 0.95, ...},
                "on_pass": "promote" | "hold", "on_fail": "rollback" | "pause"}

The gates are evaluated on live readings both versions saw (see
:mod:`edgeinfer.pipeline.delivery.routing`), and only once ``min_samples`` were
compared: top-1 agreement with the active model, the worst class's flip rate,
score-distribution drift (the largest gap between the two cumulative score
histograms, Kolmogorov-Smirnov style), the candidate's p95 latency over the
active model's, and the candidate's error and non-finite rates.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeinfer.errors import UpdateError

MODES = ("shadow", "canary", "ab")
#: Each gate, its default threshold, and whether a value above it (True) or below it fails.
GATES: dict[str, tuple[float, bool]] = {
    "min_agreement": (0.9, False),
    "max_flip_rate": (0.3, True),
    "max_score_drift": (0.3, True),
    "max_latency_ratio": (3.0, True),
    "max_error_rate": (0.01, True),
    "max_non_finite_rate": (0.0, True),
}
_KEYS = {
    "mode",
    "percent",
    "steps",
    "dwell_s",
    "sticky_by",
    "min_samples",
    "gates",
    "on_pass",
    "on_fail",
    "mirror_budget",
}
#: A class needs this many readings before its flip rate counts.
MIN_CLASS_READINGS = 10


@dataclass(frozen=True)
class RolloutSpec:
    """How a candidate is brought in."""

    mode: str
    percent: float  # shadow: share mirrored; ab: the candidate's share; canary: steps[0]
    steps: tuple[float, ...] = ()
    dwell_s: float = 60.0
    sticky_by: str = "topic"
    min_samples: int = 100
    gates: Mapping[str, float] = field(default_factory=dict)
    on_pass: str = "promote"
    on_fail: str = "rollback"
    mirror_budget: float = 0.5  # mirrored runs' share of the serving thread's model time

    @classmethod
    def parse(cls, doc: object) -> RolloutSpec:
        """Validate ``rollout``; raises UpdateError naming the key and what was expected."""
        if not isinstance(doc, dict):
            raise UpdateError(f"rollout = {doc!r}: expected an object with a mode")
        unknown = sorted(set(doc) - _KEYS)
        if unknown:
            raise UpdateError(f"rollout has unknown keys {unknown}: expected {sorted(_KEYS)}")
        mode = doc.get("mode")
        if mode not in MODES:
            raise UpdateError(f"rollout.mode = {mode!r}: expected one of {list(MODES)}")
        raw_steps = doc.get("steps", [])
        if not isinstance(raw_steps, list):
            raise UpdateError(
                f"rollout.steps = {raw_steps!r}: expected a list of increasing percentages"
            )
        steps = tuple(_percent(s, "rollout.steps[]") for s in raw_steps)
        if any(b <= a for a, b in itertools.pairwise(steps)):
            raise UpdateError(
                f"rollout.steps = {list(steps)}: expected strictly increasing percentages"
            )
        if mode == "canary" and not steps:
            steps = (5.0, 25.0, 50.0, 100.0)
        default = {"shadow": 100.0, "ab": 50.0, "canary": steps[0] if steps else 5.0}[mode]
        percent = _percent(doc.get("percent", default), "rollout.percent")
        gates = doc.get("gates") or {}
        if not isinstance(gates, dict) or not all(
            k in GATES and _number(v) for k, v in gates.items()
        ):
            raise UpdateError(
                f"rollout.gates = {gates!r}: expected numbers for any of {sorted(GATES)}"
            )
        return cls(
            mode=mode,
            percent=steps[0] if mode == "canary" else percent,
            steps=steps if mode == "canary" else (),
            dwell_s=_positive(doc.get("dwell_s", 60.0), "rollout.dwell_s"),
            sticky_by=_choice(doc.get("sticky_by", "topic"), "rollout.sticky_by"),
            min_samples=_count(doc.get("min_samples", 100), "rollout.min_samples"),
            gates={k: float(v) for k, v in gates.items()},
            on_pass=_one_of(doc.get("on_pass", "promote"), "rollout.on_pass", ("promote", "hold")),
            on_fail=_one_of(
                doc.get("on_fail", "rollback"), "rollout.on_fail", ("rollback", "pause")
            ),
            mirror_budget=_share(doc.get("mirror_budget", 0.5), "rollout.mirror_budget"),
        )

    def threshold(self, gate: str) -> float:
        return self.gates.get(gate, GATES[gate][0])


def evaluate(
    spec: RolloutSpec, snap: Mapping[str, Any]
) -> tuple[dict[str, float | None], list[str]]:
    """The gates' values on a comparison snapshot, and why the candidate fails (none: passes)."""
    compared = snap["compared"]
    values: dict[str, float | None] = dict.fromkeys(GATES)
    if compared:
        values["min_agreement"] = snap["agreed"] / compared
        values["max_flip_rate"] = _worst_flip_rate(snap["flips"], snap["by_class"])
        values["max_score_drift"] = _drift(snap["scores"]["active"], snap["scores"]["candidate"])
    p95 = snap["p95_ms"]
    if p95.get("active") and p95.get("candidate") is not None:
        values["max_latency_ratio"] = p95["candidate"] / p95["active"]
    answered = snap["answered"].get("candidate", 0) + snap["mirrored"].get("candidate", 0)
    if answered:
        values["max_error_rate"] = snap["errors"].get("candidate", 0) / answered
        values["max_non_finite_rate"] = snap["non_finite"].get("candidate", 0) / answered
    failures = []
    for gate, value in values.items():
        if value is None:
            continue
        limit = spec.threshold(gate)
        above_fails = GATES[gate][1]
        if (value > limit) if above_fails else (value < limit):
            failures.append(f"{gate} {value:.3g} (limit {limit:g})")
    return values, failures


def _worst_flip_rate(flips: Mapping[tuple[str, str], int], by_class: Mapping[str, int]) -> float:
    worst = 0.0
    for cls_, seen in by_class.items():
        if seen >= MIN_CLASS_READINGS:
            flipped = sum(n for (a, _), n in flips.items() if a == cls_)
            worst = max(worst, flipped / seen)
    return worst


def _drift(a: np.ndarray, b: np.ndarray) -> float:
    if not a.sum() or not b.sum():
        return 0.0
    return float(np.abs(np.cumsum(a) / a.sum() - np.cumsum(b) / b.sum()).max())


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _percent(value: object, key: str) -> float:
    if not _number(value) or not 0 < value <= 100:  # type: ignore[operator]
        raise UpdateError(f"{key} = {value!r}: expected a percentage in (0, 100]")
    return float(value)  # type: ignore[arg-type]


def _count(value: object, key: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UpdateError(f"{key} = {value!r}: expected a whole number of readings >= 1")
    return value


def _share(value: object, key: str) -> float:
    if not _number(value) or not 0 <= value <= 1:  # type: ignore[operator]
        raise UpdateError(f"{key} = {value!r}: expected a share of the model time in [0, 1]")
    return float(value)  # type: ignore[arg-type]


def _positive(value: object, key: str) -> float:
    if not _number(value) or value <= 0:  # type: ignore[operator]
        raise UpdateError(f"{key} = {value!r}: expected a number > 0")
    return float(value)  # type: ignore[arg-type]


def _choice(value: object, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise UpdateError(f'{key} = {value!r}: expected "topic" or a payload field name')
    return value


def _one_of(value: object, key: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise UpdateError(f"{key} = {value!r}: expected one of {list(allowed)}")
    return str(value)
