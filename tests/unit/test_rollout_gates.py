"""The rollout gates on a comparison: what they judge, and on how many runs."""

from __future__ import annotations

from edgeinfer.pipeline.delivery.routing import LATENCY_RUNS, Comparison
from edgeinfer.updates.rollouts.spec import RolloutSpec, evaluate

SPEC = RolloutSpec.parse({"mode": "canary", "steps": [25, 100], "min_samples": 10})


def runs(comparison: Comparison, role: str, seconds: list[float], readings: int = 1) -> None:
    for taken in seconds:
        comparison.ran(role, readings, taken, failed=0, non_finite=0)


def test_the_latency_gate_waits_for_enough_runs_of_both_versions() -> None:
    """Under LATENCY_RUNS runs a p95 is their maximum: one run the OS paused for 8 ms
    against a 0.1 ms model judged the candidate 80 times slower (a CI run saw 83.7)."""
    comparison = Comparison()
    runs(comparison, "active", [0.0001] * 10)
    runs(comparison, "candidate", [0.0001] * 9 + [0.008])
    values, failures = evaluate(SPEC, comparison.snapshot())
    assert values["max_latency_ratio"] is None
    assert failures == []


def test_one_paused_run_in_twenty_does_not_fail_the_latency_gate() -> None:
    comparison = Comparison()
    runs(comparison, "active", [0.0001] * LATENCY_RUNS)
    runs(comparison, "candidate", [0.0001] * (LATENCY_RUNS - 1) + [0.008])
    values, failures = evaluate(SPEC, comparison.snapshot())
    assert values["max_latency_ratio"] == 1.0
    assert failures == []


def test_a_candidate_slower_on_most_runs_fails_the_latency_gate() -> None:
    comparison = Comparison()
    runs(comparison, "active", [0.0001] * LATENCY_RUNS)
    runs(comparison, "candidate", [0.0001] * 10 + [0.0005] * (LATENCY_RUNS - 10))
    values, failures = evaluate(SPEC, comparison.snapshot())
    assert values["max_latency_ratio"] == 5.0
    assert failures == ["max_latency_ratio 5 (limit 3)"]


def test_latencies_are_compared_at_the_batch_size_both_ran_most() -> None:
    comparison = Comparison()
    runs(comparison, "active", [0.0004] * 30, readings=4)  # 0.1 ms a reading
    runs(comparison, "candidate", [0.0004] * 25, readings=4)
    runs(comparison, "active", [0.0001] * 40, readings=1)
    runs(comparison, "candidate", [0.0003] * 5, readings=1)  # too few at this size
    p95 = comparison.snapshot()["p95_ms"]
    assert p95["batch"] == 4
    assert p95["active"] == p95["candidate"] == 0.1
