"""Switching the served model, and the probation that follows every switch.

A switch serves the candidate at once (between two batches) and watches it on
live readings for ``updates.probation_s``. Only a model that completes its
probation becomes ``active`` and may be what a later roll-back returns to:

* it misbehaves (errors, NaN/inf, latency): ``rolled_back`` to the model it
  replaced, and recorded as failed so it is not retried;
* something newer arrives first (a desired state, a hand-edited ``current``,
  an inbox drop): it is taken out unproven (:meth:`Switcher.abandon`), not
  accepted, and not recorded as failed.

Runs on the updater thread; the serving thread only feeds :meth:`observe`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from edgeinfer.config import UpdatesConfig
from edgeinfer.errors import ModelError, UpdateError
from edgeinfer.model.loaded import LoadedModel
from edgeinfer.pipeline.engine import BatchOutcome
from edgeinfer.serving.admission import RuntimeOptions, admit
from edgeinfer.updates.probation import Probation
from edgeinfer.updates.reported import Reporter
from edgeinfer.updates.served import Served, close_when_released
from edgeinfer.updates.states import Target, UpdateState
from edgeinfer.updates.store import ModelStore, StoredVersion

log = logging.getLogger(__name__)


class Switcher:
    """Owns the switch to a candidate and its probation (updater thread)."""

    def __init__(
        self,
        config: UpdatesConfig,
        store: ModelStore,
        served: Served,
        reporter: Reporter,
        on_swap: Callable[[LoadedModel], None] | None = None,
    ) -> None:
        self._config = config
        self._store = store
        self._served = served
        self._reporter = reporter
        self._on_swap = on_swap
        self.probation: Probation | None = None

    @property
    def served(self) -> Served:
        return self._served

    def observe(self, outcome: BatchOutcome) -> None:
        """A batch's outcome (serving thread)."""
        probation = self.probation
        if probation is not None:
            probation.monitor.observe(outcome)

    def switch(self, loaded: LoadedModel, stored: StoredVersion, target: Target) -> None:
        """Serve ``loaded`` and put it on probation (after abandoning any unproven model)."""
        self.abandon()
        old, old_stored = self._served.loaded, self._served.stored
        applied = self._served.switch_to(loaded, stored)
        self._serving(loaded)
        self.probation = Probation.start(
            self._config, loaded, stored, old, old_stored, target, applied
        )
        self._store.set_probation(stored)
        self._reporter.step(UpdateState.PROBATION, target)
        self.check()

    def resume(self, options: RuntimeOptions) -> None:
        """After a restart: a model that was on probation is watched again, from the start.

        A crash must not turn an unproven model into an accepted one. The model
        to go back to is ``previous``; if it cannot be loaded any more, there is
        nothing to roll back to and the model is kept (logged).
        """
        record = self._store.on_probation()
        served = self._served.stored
        if record is None:
            return
        previous = self._store.link("previous")
        if served is None or record != (served.name, served.version) or previous is None:
            self._store.set_probation(None)  # it was rolled back at start, or nothing to go back to
            return
        try:
            old = admit(previous.model_file, previous.manifest(), options)
        except (UpdateError, ModelError) as exc:
            log.error("%s was on probation, but previous cannot be loaded (%s): kept", record, exc)
            self._store.set_probation(None)
            return
        released = threading.Event()
        released.set()  # the old model is not in the engine
        target = Target(served.name, served.version)
        self.probation = Probation.start(
            self._config, self._served.loaded, served, old, previous, target, released
        )
        log.warning("%s was on probation when the module stopped: watching it again", target)
        self._reporter.step(UpdateState.PROBATION, target)

    def check(self) -> None:
        """Roll back a misbehaving candidate, or accept one whose probation is over."""
        probation = self.probation
        if probation is None:
            return
        reason = probation.monitor.verdict()
        if reason is not None:
            self._roll_back(probation, reason, failed=True)
        elif time.monotonic() >= probation.ends:
            self._accept(probation)

    def abandon(self) -> None:
        """Take an unproven candidate out (something newer came): back to the proven model.

        Not recorded as failed: it was not judged. If it already misbehaved, it
        is rolled back as usual.
        """
        probation = self.probation
        if probation is None:
            return
        reason = probation.monitor.verdict()
        if reason is not None:
            self._roll_back(probation, reason, failed=True)
            return
        log.info("%s left probation unproven: something newer arrived", probation.target)
        self._roll_back(probation, None, failed=False)

    def _accept(self, probation: Probation) -> None:
        self.probation = None
        self._store.set_probation(None)
        close_when_released(probation.applied, probation.old)
        self._reporter.step(UpdateState.ACTIVE, probation.target)
        for version in self._store.prune(self._config.keep_versions):
            log.info("pruned %s %s from the store", version.name, version.version)
        self._reporter.publish()

    def _roll_back(self, probation: Probation, reason: str | None, failed: bool) -> None:
        self.probation = None
        self._store.set_probation(None)
        if reason is not None:
            log.error("rolling back %s: %s", probation.target, reason)
        back = self._served.restore(
            probation.old,
            probation.old_stored,
            failed=probation.candidate_stored if failed else None,
        )
        self._serving(probation.old, publish=not failed)
        close_when_released(back, probation.candidate)
        if failed:
            self._reporter.step(UpdateState.ROLLED_BACK, probation.target, error=reason)

    def _serving(self, loaded: LoadedModel, publish: bool = True) -> None:
        self._reporter.serving(loaded, publish=publish)
        if self._on_swap is not None:
            self._on_swap(loaded)
