"""The retained reported state (SPEC.md, "Reported state")."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson

from edgeinfer.active import ActiveModel
from edgeinfer.updates.store import ModelStore

STATES = (
    "idle",
    "downloading",
    "verifying",
    "testing",
    "probation",
    "active",
    "failed",
    "rolled_back",
)
Publish = Callable[[bytes], None]


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Reporter:
    """Keeps the reported document and republishes it (retained) on every change."""

    def __init__(self, module_id: str, store: ModelStore, publish: Publish) -> None:
        self._module_id = module_id
        self._store = store
        self._publish = publish
        self._lock = threading.Lock()
        self._model: dict[str, Any] = {}
        self._update: dict[str, Any] = {
            "state": "idle",
            "target": None,
            "progress": None,
            "error": None,
            "at": _iso(time.time()),
        }
        self._last_progress = 0.0

    def serving(self, active: ActiveModel) -> None:
        """Record the model now answering readings."""
        with self._lock:
            self._model = {
                "name": active.identity.name,
                "version": active.identity.version,
                "sha256": active.sha256,
                "runtime": active.model.runtime,
                "activated_at": _iso(time.time()),
            }
        self.publish()

    def update(
        self,
        state: str,
        target: dict[str, str] | None,
        error: str | None = None,
        progress: float | None = None,
    ) -> None:
        """Record an update step; progress reports are throttled to 4 a second."""
        assert state in STATES, state
        now = time.monotonic()
        if progress is not None and 0 < progress < 1 and now - self._last_progress < 0.25:
            return
        self._last_progress = now
        with self._lock:
            self._update = {
                "state": state,
                "target": target,
                "progress": None if progress is None else round(progress, 4),
                "error": error,
                "at": _iso(time.time()),
            }
        self.publish()

    @property
    def state(self) -> str:
        return str(self._update["state"])

    def document(self) -> dict[str, Any]:
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
        with self._lock:
            return {
                "module_id": self._module_id,
                "model": dict(self._model),
                "update": dict(self._update),
                "versions": versions,
                "ts": _iso(time.time()),
            }

    def publish(self) -> None:
        self._publish(orjson.dumps(self.document()))
