"""Progressive delivery: a candidate beside the active model, judged on live readings.

A desired state with a ``rollout`` block (:mod:`.rollout_spec`) does not swap
its model in. Once the candidate passed its self-test it is loaded beside the
active model (:meth:`Engine.set_route`) and, depending on the mode:

* ``shadow``: sees a copy of ``percent`` of the readings; its results go to
  ``edgeinfer/{id}/shadow/{topic}`` and to the comparison, never to results;
* ``canary``: answers ``steps[i]`` percent of the streams (sticky by stream
  key), stepping up after ``dwell_s`` a step while the gates hold;
* ``ab``: answers ``percent`` of the streams until an operator decides (its
  verdict is reported, never acted on).

Once ``min_samples`` readings were compared, a failing gate ends it:
``on_fail = "rollback"`` takes the candidate out and records it as failed (a
redelivered desired state does not bring it back), ``"pause"`` takes it out of
the traffic but keeps it loaded until a newer desired state. Passing (a shadow,
or a canary's last step after its dwell), ``on_pass = "promote"`` switches to it
exactly like any update (``current``/``previous``, then probation); ``"hold"``
keeps it where it is, verdict reported.

The step is persisted in the store's state: after a restart the retained
desired state starts the rollout again at that step, its counts from zero, and
the active version answers meanwhile. A newer desired state ends it first.
Runs on the updater thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from edgeinfer.errors import UpdateError
from edgeinfer.model.loaded import LoadedModel
from edgeinfer.observability.metrics import Metrics
from edgeinfer.pipeline.delivery.routing import Comparison, Route
from edgeinfer.updates.reported import Reporter
from edgeinfer.updates.rollouts.spec import GATES, RolloutSpec, evaluate
from edgeinfer.updates.served import close_when_released
from edgeinfer.updates.states import Target, UpdateState
from edgeinfer.updates.store import ModelStore, StoredVersion
from edgeinfer.updates.switcher import Switcher

log = logging.getLogger(__name__)

#: How often a running rollout's figures are republished in the reported state.
REPORT_EVERY_S = 2.0


class RouteSlot(Protocol):
    """Where the candidate is loaded beside the active model (the engine)."""

    def set_route(self, route: Route | None) -> threading.Event: ...


@dataclass
class Rollout:
    """One candidate being rolled out."""

    spec: RolloutSpec
    candidate: LoadedModel
    stored: StoredVersion
    target: Target
    sha256: str
    route: Route
    step: int = 0
    step_started: float = field(default_factory=time.monotonic)
    verdict: str = "running"  # running, passed, failing, paused, promoted, rolled_back
    reason: str | None = None
    values: dict[str, float | None] = field(default_factory=dict)
    resumed: bool = False

    def percent(self, step: int | None = None) -> float:
        spec = self.spec
        return spec.steps[self.step if step is None else step] if spec.steps else spec.percent

    def report(self) -> dict[str, Any]:
        snap = self.route.comparison.snapshot()
        version = self.target.version
        return {
            "mode": self.spec.mode,
            "candidate": self.target.as_dict(),
            "step": self.step,
            "steps": list(self.spec.steps),
            "percent": self.percent() if self.verdict not in ("paused", "rolled_back") else 0.0,
            "resumed": self.resumed,
            "counts": {
                "active": {
                    "answered": snap["answered"].get("active", 0),
                    "errors": snap["errors"].get("active", 0),
                    "p95_ms": _round(snap["p95_ms"].get("active")),
                },
                version: {
                    "answered": snap["answered"].get("candidate", 0),
                    "errors": snap["errors"].get("candidate", 0),
                    "non_finite": snap["non_finite"].get("candidate", 0),
                    "p95_ms": _round(snap["p95_ms"].get("candidate")),
                },
            },
            "compared": snap["compared"],
            "agreement": _round(snap["agreed"] / snap["compared"]) if snap["compared"] else None,
            "mirrored": snap["mirrored"].get("candidate", 0) + snap["mirrored"].get("active", 0),
            "mirror_skipped": snap["skipped"],
            "min_samples": self.spec.min_samples,
            "gates": {
                gate: {"value": _round(self.values.get(gate)), "limit": self.spec.threshold(gate)}
                for gate in GATES
            },
            "verdict": self.verdict,
            "reason": self.reason,
        }


class Rollouts:
    """Starts, steps, promotes and ends rollouts (the updater thread)."""

    def __init__(
        self,
        store: ModelStore,
        slot: RouteSlot,
        switcher: Switcher,
        reporter: Reporter,
        metrics: Metrics | None = None,
        wake: Callable[[], None] | None = None,
    ) -> None:
        self._wake = wake or (lambda: None)  # a verdict is due (from the serving thread)
        self._store = store
        self._slot = slot
        self._switcher = switcher
        self._reporter = reporter
        self._metrics = metrics
        self.current: Rollout | None = None
        self._reported = 0.0

    def is_running(self, target: Target, sha256: str | None, spec: RolloutSpec | None) -> bool:
        """Whether this candidate is already being rolled out this way (the same document
        again, as the broker redelivers it after every reconnect)."""
        r = self.current
        return (
            r is not None
            and r.verdict not in ("promoted", "rolled_back")
            and r.target == target
            and sha256 in (None, r.sha256)
            and spec == r.spec
        )

    def start(
        self, spec: RolloutSpec, candidate: LoadedModel, stored: StoredVersion, target: Target
    ) -> None:
        """Load ``candidate`` beside the active model and start judging it."""
        if self.current is not None:  # (with none, the persisted step is this one's to resume)
            self.end("a newer desired state")
        self._switcher.abandon()  # first: it may put another model back in
        try:
            _check_compatible(self._switcher.served.loaded, candidate)
        except UpdateError:
            candidate.model.close()
            raise
        sha = stored.sha256()
        step, paused = self._persisted(target, sha, spec)
        comparison = Comparison(spec.min_samples, self._wake)
        rollout = Rollout(spec, candidate, stored, target, sha, _route(spec, candidate, 0.0))
        rollout.step, rollout.resumed = step, step > 0
        rollout.route = _route(spec, candidate, rollout.percent(), comparison=comparison)
        self.current = rollout
        if paused:  # paused before the restart: it stays out of the traffic
            rollout.verdict, rollout.reason = "paused", "paused before the module restarted"
        else:
            self._slot.set_route(rollout.route)
        self._persist(rollout)
        log.info(
            "rolling out %s: %s at %g%%%s",
            target,
            spec.mode,
            rollout.percent(),
            f" (resumed at step {step})" if step else "",
        )
        self._reporter.rollout(rollout.report(), publish=False)
        self._reporter.step(UpdateState.PROBATION, target)

    def check(self) -> None:
        """Judge the running rollout: step up, promote, roll back, pause, or wait."""
        rollout = self.current
        if rollout is None or rollout.verdict in ("paused", "promoted", "rolled_back"):
            return
        snap = rollout.route.comparison.snapshot()
        rollout.values, failures = evaluate(rollout.spec, snap)
        self._show_metrics(rollout, snap)
        ran = snap["answered"].get("candidate", 0) + snap["mirrored"].get("candidate", 0)
        enough = snap["compared"] >= rollout.spec.min_samples
        # A candidate that fails or answers NaN is judged on its own runs, compared or not.
        failing_alone = ran >= rollout.spec.min_samples and any(
            f.startswith(("max_error_rate", "max_non_finite_rate")) for f in failures
        )
        if not enough and not failing_alone:
            self._publish()
            return
        spec = rollout.spec
        if failures and spec.mode != "ab":
            # Judged on what was compared: comparisons stay paused while it is taken out.
            reason = "gates failed on live readings: " + "; ".join(failures)
            (self._roll_back if spec.on_fail == "rollback" else self._pause)(rollout, reason)
            return
        rollout.route.comparison.judged = True  # it goes on: compare on
        if spec.mode == "ab":  # the operator decides
            failing = "gates failed on live readings: " + "; ".join(failures)
            rollout.verdict, rollout.reason = (
                ("failing", failing) if failures else ("passing", None)
            )
        elif rollout.verdict != "passed" and (
            spec.mode == "shadow" or time.monotonic() - rollout.step_started >= spec.dwell_s
        ):
            if spec.mode == "canary" and rollout.step < len(spec.steps) - 1:
                self._step_up(rollout)
            elif spec.on_pass == "promote":
                self._promote(rollout)
                return
            else:
                rollout.verdict = "passed"
        self._publish()

    @property
    def running(self) -> bool:
        """Whether a rollout is being judged (the updater ticks for it)."""
        r = self.current
        return r is not None and r.verdict not in ("paused", "promoted", "rolled_back")

    def end(self, why: str) -> None:
        """Take a running candidate out unjudged (something newer came; not a failure)."""
        rollout, self.current = self.current, None
        if rollout is None:
            self._clear_persisted()
            return
        if rollout.verdict not in ("promoted", "rolled_back"):
            log.info("rollout of %s ended: %s", rollout.target, why)
            released = self._slot.set_route(None)
            close_when_released(released, rollout.candidate)
        self._clear_persisted()
        self._reporter.rollout(None)

    # -- outcomes ------------------------------------------------------------------

    def _step_up(self, rollout: Rollout) -> None:
        rollout.step += 1
        rollout.step_started = time.monotonic()
        rollout.route = _route(rollout.spec, rollout.candidate, rollout.percent(), rollout.route)
        self._slot.set_route(rollout.route)
        self._persist(rollout)
        log.info("rollout of %s: step %d, %g%%", rollout.target, rollout.step, rollout.percent())
        self._publish(force=True)

    def _promote(self, rollout: Rollout) -> None:
        rollout.verdict = "promoted"
        self._slot.set_route(None)
        self._clear_persisted()
        log.info("rollout of %s passed its gates: promoting it", rollout.target)
        self._reporter.rollout(rollout.report(), publish=False)
        # Exactly like any update from here: current/previous, then probation.
        self._switcher.switch(rollout.candidate, rollout.stored, rollout.target)

    def _roll_back(self, rollout: Rollout, reason: str) -> None:
        rollout.verdict, rollout.reason = "rolled_back", reason
        log.error("rolling back the rollout of %s: %s", rollout.target, reason)
        released = self._slot.set_route(None)
        close_when_released(released, rollout.candidate)
        self._switcher.served.keep_link(failed=rollout.stored)
        self._clear_persisted()
        self._reporter.rollout(rollout.report(), publish=False)
        self._reporter.step(UpdateState.ROLLED_BACK, rollout.target, error=reason)

    def _pause(self, rollout: Rollout, reason: str) -> None:
        rollout.verdict, rollout.reason = "paused", reason
        log.warning("pausing the rollout of %s: %s", rollout.target, reason)
        self._slot.set_route(None)  # out of the traffic, still loaded
        self._persist(rollout)  # a restart keeps it paused
        self._publish(force=True)

    # -- reports and persistence -----------------------------------------------------

    def _publish(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.current is None or (not force and now - self._reported < REPORT_EVERY_S):
            return
        self._reported = now
        self._reporter.rollout(self.current.report())

    def _show_metrics(self, rollout: Rollout, snap: dict[str, Any]) -> None:
        metrics = self._metrics
        if metrics is None:
            return
        metrics.rollout_percent.set(rollout.percent())
        metrics.rollout_compared.set(snap["compared"])
        for gate, value in rollout.values.items():
            if value is not None:
                metrics.rollout_gate.labels(gate).set(value)
        for role, count in snap["answered"].items():
            version = rollout.target.version if role == "candidate" else "active"
            metrics.rollout_answered.labels(version).set(count)
        metrics.rollout_mirror_skipped.set(snap["skipped"])

    def _persisted(self, target: Target, sha256: str, spec: RolloutSpec) -> tuple[int, bool]:
        """The step this rollout had reached before a restart, and whether it was paused."""
        record = self._store.read_state().get("rollout")
        if not isinstance(record, dict):
            return 0, False
        same = (
            record.get("name"),
            record.get("version"),
            record.get("sha256"),
            record.get("mode"),
        ) == (target.name, target.version, sha256, spec.mode)
        if not same:
            return 0, False
        step = record.get("step", 0)
        step = step if isinstance(step, int) and 0 <= step < max(1, len(spec.steps)) else 0
        return step, record.get("verdict") == "paused"

    def _persist(self, rollout: Rollout) -> None:
        state = self._store.read_state()
        state["rollout"] = {
            "name": rollout.target.name,
            "version": rollout.target.version,
            "sha256": rollout.sha256,
            "mode": rollout.spec.mode,
            "step": rollout.step,
            "verdict": rollout.verdict,
        }
        self._store.write_state(state)

    def _clear_persisted(self) -> None:
        state = self._store.read_state()
        if state.pop("rollout", None) is not None:
            self._store.write_state(state)


def _route(
    spec: RolloutSpec,
    candidate: LoadedModel,
    percent: float,
    old: Route | None = None,
    comparison: Comparison | None = None,
) -> Route:
    comparison = old.comparison if old is not None else comparison or Comparison()
    return Route(candidate, spec.mode, percent, spec.sticky_by, spec.mirror_budget, comparison)


def _check_compatible(active: LoadedModel, candidate: LoadedModel) -> None:
    """Both versions read the same readings: the same inputs (names, types, shapes), and
    no windows."""
    if active.streams is not None or candidate.streams is not None:
        raise UpdateError(
            "a rollout needs models that take whole readings: windowed models (streams) "
            "are updated without one"
        )
    mine = [(s.name, str(s.dtype), list(s.shape)) for s in candidate.model.inputs]
    theirs = [(s.name, str(s.dtype), list(s.shape)) for s in active.model.inputs]
    if mine != theirs:
        raise UpdateError(
            f"the candidate's inputs {mine} differ from the active model's {theirs}: expected "
            "the same inputs, so both can answer the same readings"
        )
    if candidate.manifest.preprocess != active.manifest.preprocess:
        # Image readings are decoded once, by the active model's preprocess: a candidate
        # that would prepare them otherwise would be judged on tensors not meant for it.
        def shown(m: LoadedModel) -> object:
            return m.manifest.preprocess.to_doc() if m.manifest.preprocess else None

        raise UpdateError(
            f"the candidate's preprocess {shown(candidate)} differs from the active model's "
            f"{shown(active)}: expected the same, so both answer the same prepared images "
            "(update without a rollout to change it)"
        )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
