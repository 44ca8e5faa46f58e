"""The retained reported state (``edgeinfer/{module_id}/reported``).

The reporter renders what it is told into the document and publishes it; it
decides nothing. Only the updater thread calls it, so documents leave in the
order they were made and the retained one is always the newest.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import orjson

from edgeinfer.model.loaded import LoadedModel
from edgeinfer.updates.states import Target, UpdateState, UpdateStatus, iso
from edgeinfer.updates.store import ModelStore

log = logging.getLogger("edgeinfer.updates")

Publish = Callable[[bytes], None]
#: Progress reports are throttled to this many seconds apart.
PROGRESS_INTERVAL_S = 0.25


class Reporter:
    """Keeps the last reported parts and republishes the whole document on every change."""

    def __init__(
        self,
        module_id: str,
        store: ModelStore,
        publish: Publish,
        labels: dict[str, str] | None = None,
        on_step: Callable[[UpdateStatus], None] | None = None,
    ) -> None:
        self._on_step = on_step
        self._module_id = module_id
        self._labels = dict(labels or {})
        self._hardware = hardware()
        self._store = store
        self._publish = publish
        self._model: dict[str, Any] = {}
        self._rollout: dict[str, Any] | None = None
        self.status = UpdateStatus()
        self._last_progress = 0.0

    def serving(self, loaded: LoadedModel, publish: bool = True) -> None:
        """Record the model now answering readings, and publish (unless told not to)."""
        self._model = {
            "name": loaded.identity.name,
            "version": loaded.identity.version,
            "sha256": loaded.sha256,
            "runtime": loaded.model.runtime,
            "activated_at": iso(time.time()),
        }
        plan = loaded.streams
        if plan is not None:
            # A new model starts every stream's recurrent state over (buffered
            # samples carry over when the window is the same).
            self._model["streams"] = {
                "window": plan.window.to_doc(),
                "state": sorted(plan.state),
                "state_reset_at": self._model["activated_at"] if plan.state else None,
            }
        if publish:
            self.publish()

    def rollout(self, report: dict[str, Any] | None, publish: bool = True) -> None:
        """Record (and publish) a rollout's figures; None once it is over and forgotten."""
        self._rollout = report
        if publish:
            self.publish()

    def update(self, status: UpdateStatus) -> None:
        """Record an update step, and publish (progress at most 4 times a second)."""
        now = time.monotonic()
        if (
            status.state is UpdateState.DOWNLOADING
            and status.progress is not None
            and 0 < status.progress < 1
            and now - self._last_progress < PROGRESS_INTERVAL_S
        ):
            return
        self._last_progress = now
        moved = (status.state, status.target, status.error) != (
            self.status.state,
            self.status.target,
            self.status.error,
        )
        self.status = status
        if moved and self._on_step is not None:  # a new step, not a progress tick
            self._on_step(status)
        self.publish()

    def step(
        self,
        state: UpdateState,
        target: Target | None,
        error: str | None = None,
        progress: float | None = None,
    ) -> None:
        """Report one step of an update."""
        self.update(UpdateStatus(state, target, progress, error))

    def failed(self, target: Target | None, error: str) -> None:
        """Log and report an update that ended ``failed``."""
        log.error("update %s failed: %s", target or "", error)
        self.update(UpdateStatus(UpdateState.FAILED, target, None, error))

    def document(self, versions: bool = True) -> dict[str, Any]:
        """The reported-state document as it stands (without the store's listing when not
        ``versions``: other threads ask, while the updater may be pruning the store)."""
        doc: dict[str, Any] = {
            "module_id": self._module_id,
            "labels": self._labels,
            "hardware": self._hardware,
            "model": dict(self._model),
            "update": self.status.as_dict(),
            "ts": iso(time.time()),
        }
        if versions:
            doc["versions"] = self._versions()
        if self._rollout is not None:
            doc["rollout"] = self._rollout
        return doc

    def _versions(self) -> list[dict[str, Any]]:
        current = self._store.link("current")
        previous = self._store.link("previous")
        return [
            {
                "name": v.name,
                "version": v.version,
                "current": current is not None and v.path == current.path,
                "previous": previous is not None and v.path == previous.path,
            }
            for v in self._store.versions()
        ]

    def publish(self) -> None:
        self._publish(orjson.dumps(self.document()))


def hardware() -> dict[str, Any]:
    """What the module runs on: cores, memory and architecture (for fleet views)."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        memory = None
    return {"cores": os.cpu_count(), "memory_bytes": memory, "arch": platform.machine()}
