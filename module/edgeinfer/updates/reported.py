"""The retained reported state (``edgeinfer/{module_id}/reported``).

The reporter renders what it is told into the document and publishes it; it
decides nothing. Only the updater thread calls it, so documents leave in the
order they were made and the retained one is always the newest.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import orjson

from edgeinfer.loaded import LoadedModel
from edgeinfer.updates.states import Target, UpdateState, UpdateStatus, iso
from edgeinfer.updates.store import ModelStore

log = logging.getLogger("edgeinfer.updates")

Publish = Callable[[bytes], None]
#: Progress reports are throttled to this many seconds apart.
PROGRESS_INTERVAL_S = 0.25


class Reporter:
    """Keeps the last reported parts and republishes the whole document on every change."""

    def __init__(self, module_id: str, store: ModelStore, publish: Publish) -> None:
        self._module_id = module_id
        self._store = store
        self._publish = publish
        self._model: dict[str, Any] = {}
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
        self.status = status
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

    def document(self) -> dict[str, Any]:
        """The reported-state document as it stands."""
        current = self._store.link("current")
        previous = self._store.link("previous")
        versions = [
            {
                "name": v.name,
                "version": v.version,
                "current": current is not None and v.path == current.path,
                "previous": previous is not None and v.path == previous.path,
            }
            for v in self._store.versions()
        ]
        return {
            "module_id": self._module_id,
            "model": dict(self._model),
            "update": self.status.as_dict(),
            "versions": versions,
            "ts": iso(time.time()),
        }

    def publish(self) -> None:
        self._publish(orjson.dumps(self.document()))
