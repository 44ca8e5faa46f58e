"""The update state machine: the states an update goes through, as reported.

::

    a desired state with a url                 (any failure on the way: failed)
      idle ──► downloading ──► verifying ──► testing ──► probation ──► active
                                               ▲              │
    a stored version (no url), a hand-edited   │              └─ it misbehaves on
    current, a model dropped into inbox/ ──────┘                 live readings:
                                                                 rolled_back

* ``testing``: the candidate is loaded in this process and passes its
  self-test, or the update ends ``failed`` with the old model still serving.
* ``probation``: the candidate serves every reading while it is watched;
  ``previous`` points at the model it replaced.
* ``rolled_back``: the old model serves again, and the candidate is recorded
  as failed so a redelivered desired state does not bring it back.
* ``failed`` and ``rolled_back`` leave nothing behind: no partial download,
  no staging directory, no loaded runtime.

The updater thread is the only one that moves between states; the reporter
only publishes what it is told.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any


class UpdateState(str, Enum):
    """``update.state`` in the reported state."""

    IDLE = "idle"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    TESTING = "testing"
    PROBATION = "probation"
    ACTIVE = "active"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"

    @property
    def settled(self) -> bool:
        """True once the update has ended (or none ran)."""
        return self in (
            UpdateState.IDLE,
            UpdateState.ACTIVE,
            UpdateState.FAILED,
            UpdateState.ROLLED_BACK,
        )


def iso(ts: float) -> str:
    """Epoch seconds as ISO 8601 UTC with milliseconds (``2026-01-02T03:04:05.678Z``)."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Target:
    """The model version an update is about."""

    name: str
    version: str

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version}

    def __str__(self) -> str:
        return f"{self.name} {self.version}"


@dataclass(frozen=True)
class UpdateStatus:
    """One step of one update, as the reported state shows it."""

    state: UpdateState = UpdateState.IDLE
    target: Target | None = None
    progress: float | None = None
    error: str | None = None
    at: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "target": self.target.as_dict() if self.target else None,
            "progress": None if self.progress is None else round(self.progress, 4),
            "error": self.error,
            "at": iso(self.at),
        }
