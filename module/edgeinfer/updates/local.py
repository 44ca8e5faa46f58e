"""Changes made on the gateway itself: a hand-edited ``current``, a model dropped in ``inbox/``.

Both go through the same gate as a desired state: the model must load and pass
its self-test before it serves, and then it is on probation. A hand-edited
``current`` that is refused is put back; an inbox drop that is refused is
moved to ``inbox/rejected/<time>/`` with a ``reason.txt``. With trusted keys,
an inbox manifest is verified like a desired state: signature, sequence and
target.
"""

from __future__ import annotations

from collections.abc import Callable

from edgeinfer.errors import ModelError, UpdateError
from edgeinfer.serving.admission import RuntimeOptions, admit
from edgeinfer.updates import inbox
from edgeinfer.updates.download import SupersededError
from edgeinfer.updates.gate import Gate
from edgeinfer.updates.reported import Reporter
from edgeinfer.updates.states import Target, UpdateState
from edgeinfer.updates.store import ModelStore, StoredVersion
from edgeinfer.updates.switcher import Switcher


class LocalChanges:
    """Handles ``current`` and ``inbox/`` changes (updater thread)."""

    def __init__(
        self,
        store: ModelStore,
        gate: Gate,
        switcher: Switcher,
        reporter: Reporter,
        options: RuntimeOptions,
        verify: Callable[[inbox.InboxDrop], None],
    ) -> None:
        self._store = store
        self._gate = gate
        self._switcher = switcher
        self._reporter = reporter
        self._options = options
        self._verify = verify

    def current_changed(self) -> bool:
        """Whether ``current`` names another version than the one served (a hand-edit)."""
        served = self._switcher.served.stored
        linked = self._store.link("current")
        return linked is None or served is None or linked.path != served.path

    def handle_current(self) -> None:
        """``current`` changed: serve what it names if it passes the gate, else put it back."""
        served = self._switcher.served
        linked = self._store.link("current")
        if linked is not None and served.stored is not None and linked.path == served.stored.path:
            return
        if linked is None:
            served.keep_link(failed=None)
            self._reporter.failed(
                None,
                "current was changed to something that is not a stored version: "
                f"restored it to {_name(served.stored)}",
            )
            return
        target = Target(linked.name, linked.version)
        try:
            self._reporter.step(UpdateState.TESTING, target)
            loaded = admit(linked.model_file, linked.manifest(), self._options)
        except (UpdateError, ModelError) as exc:
            served.keep_link(failed=linked)
            self._reporter.failed(target, f"{exc} (current restored to {_name(served.stored)})")
            return
        self._switcher.switch(loaded, linked, target)

    def handle_inbox(self) -> None:
        """A complete drop in ``inbox/`` is verified, installed and served, or set aside."""
        box = self._store.inbox
        try:
            drop = inbox.read_drop(box)
        except inbox.InboxRejectedError as exc:
            self._reject(exc.target, str(exc))
            return
        if drop is None:
            return  # not complete yet (drop the model, then its manifest)
        target = drop.target
        manifest = drop.manifest
        try:
            self._verify(drop)
            self._gate.check(target, None, manifest.sha256)
            url = drop.model.resolve().as_uri()
            loaded, stored = self._gate.fetch_and_install(url, manifest, target, drop.model)
        except (UpdateError, SupersededError, ModelError, OSError) as exc:
            self._reject(target, f"inbox install refused: {exc}")
            return
        inbox.clear(drop, box)
        self._switcher.switch(loaded, stored, target)

    def _reject(self, target: Target | None, reason: str) -> None:
        rejected = inbox.reject(self._store.inbox, reason)
        self._reporter.failed(
            target, f"{reason} (files moved to {rejected.relative_to(self._store.root)})"
        )


def _name(stored: StoredVersion | None) -> str:
    return f"{stored.name} {stored.version}" if stored else "nothing"
