"""What is being served, owned in one place: the engine's model and its version in the store.

``current`` in the store, the model in the engine and the version the module
reports always change together, through :class:`Served`, on the updater
thread. ``previous`` is written once per switch: it names the model that was
serving before.
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

from edgeinfer.model.loaded import LoadedModel
from edgeinfer.updates.store import ModelStore, StoredVersion

log = logging.getLogger(__name__)

#: How long to wait for the engine to let go of a model before closing it.
RELEASE_TIMEOUT_S = 5.0


class Slot(Protocol):
    """Where the served model runs (the engine)."""

    @property
    def active(self) -> LoadedModel: ...

    def swap(self, active: LoadedModel) -> threading.Event: ...


class Served:
    """The served model and its stored version; changed only by the updater thread."""

    def __init__(self, store: ModelStore, slot: Slot, stored: StoredVersion | None) -> None:
        self._store = store
        self._slot = slot
        self._stored = stored

    @property
    def loaded(self) -> LoadedModel:
        return self._slot.active

    @property
    def stored(self) -> StoredVersion | None:
        return self._stored

    def switch_to(self, loaded: LoadedModel, stored: StoredVersion) -> threading.Event:
        """Serve ``loaded`` (stored as ``stored``): ``current`` moves, ``previous`` names the old.

        Returns the engine's event, set once the old model is no longer used.
        """
        old = self._stored
        self._store.activate(stored, previous=old)
        applied = self._slot.swap(loaded)
        self._stored = stored
        log.info("now serving %s (was %s)", loaded.describe(), _name(old))
        return applied

    def restore(
        self, loaded: LoadedModel, stored: StoredVersion | None, failed: StoredVersion | None
    ) -> threading.Event:
        """Serve ``loaded`` again (a roll-back); ``failed`` is remembered as not to retry."""
        applied = self._slot.swap(loaded)
        if stored is not None:
            self._store.roll_back_to(stored, failed=failed)
        self._stored = stored
        return applied

    def keep_link(self, failed: StoredVersion | None) -> None:
        """Point ``current`` back at what is served (after a hand-edit that was refused)."""
        if self._stored is not None:
            self._store.roll_back_to(self._stored, failed=failed)


def close_when_released(applied: threading.Event, loaded: LoadedModel) -> None:
    """Close ``loaded`` once the engine has let go of it (at once when idle)."""
    if applied.wait(RELEASE_TIMEOUT_S):
        loaded.model.close()
    else:
        log.warning("the engine still runs %s: left open", loaded.describe())


def _name(stored: StoredVersion | None) -> str:
    return f"{stored.name} {stored.version}" if stored else "nothing"
