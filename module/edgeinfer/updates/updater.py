"""The update path, on its own thread (the states it moves through: :mod:`.states`).

Work comes from three places and goes through one gate (verify -> admit ->
install -> switch -> probation):

* a desired state on ``edgeinfer/{id}/desired`` (the network thread only queues it),
* a hand-edited ``current`` symlink, and a model dropped into ``inbox/``
  (the watchdog thread only queues them).

Threads and what they own: the updater thread owns every step, the store's
changes, what is served (:class:`~.served.Served`) and the reported state; the
engine thread calls :meth:`Updater.observe` for each batch (the probation
monitor has its own lock). A newer desired state supersedes the one running:
it is checked between steps and on every downloaded chunk.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from edgeinfer.config import UpdatesConfig
from edgeinfer.errors import ModelError, UpdateError
from edgeinfer.loaded import LoadedModel
from edgeinfer.manifest import Manifest
from edgeinfer.pipeline.engine import BatchOutcome
from edgeinfer.runtimes import detect_format
from edgeinfer.serving.admission import RuntimeOptions, admit
from edgeinfer.updates import inbox
from edgeinfer.updates.desired import DesiredState, parse_desired
from edgeinfer.updates.download import Downloader, SupersededError
from edgeinfer.updates.probation import Probation
from edgeinfer.updates.reported import Reporter
from edgeinfer.updates.served import Served, close_when_released
from edgeinfer.updates.signing import SequenceVerifier, SignatureVerifier, Verifier, load_public_key
from edgeinfer.updates.states import Target, UpdateState, UpdateStatus
from edgeinfer.updates.store import ModelStore, StoredVersion

log = logging.getLogger(__name__)

LOCAL_SETTLE_S = 0.3  # let "ln -sfn" (unlink + symlink) or a copy finish before looking
S = UpdateState


class Updater:
    """Runs updates one at a time; the newest request wins."""

    def __init__(
        self,
        config: UpdatesConfig,
        store: ModelStore,
        served: Served,
        reporter: Reporter,
        options: RuntimeOptions,
        on_swap: Callable[[LoadedModel], None] | None = None,
    ) -> None:
        self._config = config
        self._store = store
        self._served = served
        self._reporter = reporter
        self._options = options
        self._on_swap = on_swap
        self._verifiers: list[Verifier] = []
        if config.trusted_keys:
            keys = [load_public_key(Path(p)) for p in config.trusted_keys]
            self._verifiers = [SignatureVerifier(keys), SequenceVerifier(store)]
        self._downloader = Downloader(
            store.downloads,
            config.max_download_bytes,
            config.download_timeout_s,
            config.download_retries,
        )
        self._schemes = ("https", "file", "http") if config.allow_http else ("https", "file")
        self._cond = threading.Condition()
        self._desired: bytes | None = None
        self._local_due: dict[str, float] = {}
        self._report_due = False
        self._stopping = False
        self._probation: Probation | None = None
        self._thread = threading.Thread(target=self._loop, name="updater", daemon=True)

    # -- other threads -------------------------------------------------------

    def start(self) -> None:
        """Report what is served, then start taking work."""
        self._reporter.serving(self._served.loaded)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def submit_desired(self, payload: bytes) -> None:
        """A desired state arrived (network thread): it supersedes any pending one."""
        with self._cond:
            self._desired = payload
            self._cond.notify_all()

    def submit_local(self, kind: str) -> None:
        """The watchdog saw ``current`` or ``inbox/`` change."""
        with self._cond:
            self._local_due[kind] = time.monotonic() + LOCAL_SETTLE_S
            self._cond.notify_all()

    def request_report(self) -> None:
        """Publish the reported state again (after a reconnect), from the updater thread."""
        with self._cond:
            self._report_due = True
            self._cond.notify_all()

    def observe(self, outcome: BatchOutcome) -> None:
        """Each batch's outcome (engine thread), for the probation monitor."""
        probation = self._probation
        if probation is not None:
            probation.monitor.observe(outcome)

    # -- updater thread -------------------------------------------------------

    def _superseded(self) -> bool:
        return self._stopping or self._desired is not None

    def _loop(self) -> None:
        while True:
            with self._cond:
                # One wait per pass, its timeout computed afresh: a settle delay
                # or the probation tick may come due without any notify.
                if not self._has_work():
                    self._cond.wait(self._wait_time())
                if self._stopping:
                    return
                desired, self._desired = self._desired, None
                report, self._report_due = self._report_due, False
                now = time.monotonic()
                local = [k for k, due in self._local_due.items() if due <= now]
                for kind in local:
                    del self._local_due[kind]
            try:
                if report:
                    self._reporter.publish()
                if desired is not None:
                    self._end_probation_early()
                    self._handle_desired(desired)
                for kind in local:
                    self._handle_current() if kind == "current" else self._handle_inbox()
                self._check_probation()
            except Exception:  # the updater must outlive any bug in one update
                log.exception("update step failed unexpectedly")

    def _has_work(self) -> bool:
        now = time.monotonic()
        return (
            self._stopping
            or self._report_due
            or self._desired is not None
            or any(due <= now for due in self._local_due.values())
        )

    def _wait_time(self) -> float | None:
        waits = [max(0.0, due - time.monotonic()) for due in self._local_due.values()]
        if self._probation is not None:
            waits.append(0.1)
        return min(waits) if waits else None

    def _status(
        self,
        state: UpdateState,
        target: Target | None,
        error: str | None = None,
        progress: float | None = None,
    ) -> None:
        self._reporter.update(UpdateStatus(state, target, progress, error))

    def _fail(self, target: Target | None, error: str) -> None:
        log.error("update %s failed: %s", target or "", error)
        self._status(S.FAILED, target, error=error)

    # -- desired state ---------------------------------------------------------

    def _handle_desired(self, payload: bytes) -> None:
        try:
            desired = parse_desired(payload, self._schemes)
        except UpdateError as exc:
            self._fail(None, str(exc))
            return
        target = desired.target
        served = self._served.loaded
        if (desired.name, desired.version) == (
            served.identity.name,
            served.identity.version,
        ) and desired.sha256 in (None, served.sha256):
            if self._reporter.status.state not in (S.ACTIVE, S.PROBATION):
                self._status(S.ACTIVE, target)
            return
        if desired.url is not None and self._store.is_failed(desired.name, desired.version):
            # Retained desired states come back on every restart: without this a
            # rolled-back model would be swapped in (and out) again each time.
            self._fail(
                target,
                f"{target} failed here before (rolled back, or refused at start): deploy a "
                "new version, or activate this one explicitly with a desired state without url",
            )
            return
        try:
            for verifier in self._verifiers:
                verifier.verify(desired)
            for verifier in self._verifiers:
                verifier.accept(desired)
            if desired.url is None:
                loaded, stored = self._admit_stored(desired)
            else:
                loaded, stored = self._download_and_admit(desired)
            if self._superseded():
                loaded.model.close()
                return
            self._switch(loaded, stored, target)
        except SupersededError:
            log.info("update to %s superseded by a newer desired state", target)
        except UpdateError as exc:
            self._fail(target, str(exc))
            if desired.sha256:
                self._downloader.discard(desired.sha256)

    def _admit_stored(self, desired: DesiredState) -> tuple[LoadedModel, StoredVersion]:
        stored = self._store.get(desired.name, desired.version)
        self._store.clear_failed(desired.name, desired.version)
        self._status(S.TESTING, desired.target)
        return admit(stored.model_file, stored.manifest(), self._options), stored

    def _download_and_admit(self, desired: DesiredState) -> tuple[LoadedModel, StoredVersion]:
        assert desired.url and desired.sha256 and desired.size
        target = desired.target
        self._status(S.DOWNLOADING, target, progress=0.0)
        part = self._downloader.fetch(
            desired.url, desired.sha256, desired.size,
            lambda got, total: self._status(S.DOWNLOADING, target, progress=got / total),
            self._superseded,
        )  # fmt: skip
        self._status(S.VERIFYING, target)
        file = self._downloader.verify(part, desired.url, desired.sha256, desired.size)
        self._status(S.TESTING, target)
        manifest = desired.manifest(_format_of(file, desired.format))
        admitted = self._admit_and_install(file, manifest)
        self._downloader.discard(desired.sha256)
        return admitted

    def _admit_and_install(
        self, file: Path, manifest: Manifest
    ) -> tuple[LoadedModel, StoredVersion]:
        """The gate: the file must load and pass its self-test before it enters the store."""
        loaded = admit(file, manifest, self._options)
        try:
            stored = self._store.install(file, manifest)
        except BaseException:
            loaded.model.close()
            raise
        return loaded, stored

    # -- switching and probation -------------------------------------------------

    def _switch(self, loaded: LoadedModel, stored: StoredVersion, target: Target) -> None:
        old, old_stored = self._served.loaded, self._served.stored
        applied = self._served.switch_to(loaded, stored)
        self._reporter.serving(loaded)
        if self._on_swap is not None:
            self._on_swap(loaded)
        self._probation = Probation.start(
            self._config, loaded, stored, old, old_stored, target, applied
        )
        self._status(S.PROBATION, target)
        self._check_probation()

    def _check_probation(self) -> None:
        probation = self._probation
        if probation is None:
            return
        reason = probation.monitor.verdict()
        if reason is not None:
            self._roll_back(probation, reason)
        elif time.monotonic() >= probation.ends:
            self._accept(probation)

    def _end_probation_early(self) -> None:
        # Something newer arrived: judge the model on what was seen so far.
        probation = self._probation
        if probation is not None:
            reason = probation.monitor.verdict()
            if reason is not None:
                self._roll_back(probation, reason)
            else:
                self._accept(probation)

    def _accept(self, probation: Probation) -> None:
        self._probation = None
        close_when_released(probation.applied, probation.old)
        self._status(S.ACTIVE, probation.target)
        for version in self._store.prune(self._config.keep_versions):
            log.info("pruned %s %s from the store", version.name, version.version)
        self._reporter.publish()

    def _roll_back(self, probation: Probation, reason: str) -> None:
        self._probation = None
        log.error("rolling back %s: %s", probation.target, reason)
        back = self._served.restore(
            probation.old, probation.old_stored, failed=probation.candidate_stored
        )
        self._reporter.serving(probation.old)
        if self._on_swap is not None:
            self._on_swap(probation.old)
        close_when_released(back, probation.candidate)
        self._status(S.ROLLED_BACK, probation.target, error=reason)

    # -- offline paths -----------------------------------------------------------

    def _handle_current(self) -> None:
        linked = self._store.link("current")
        served = self._served.stored
        if linked is not None and served is not None and linked.path == served.path:
            return
        if linked is None:
            self._served.keep_link(failed=None)
            self._fail(
                None,
                "current was changed to something that is not a stored version: "
                f"restored it to {_name(served)}",
            )
            return
        target = Target(linked.name, linked.version)
        self._end_probation_early()
        try:
            self._status(S.TESTING, target)
            loaded = admit(linked.model_file, linked.manifest(), self._options)
        except (UpdateError, ModelError) as exc:
            self._served.keep_link(failed=linked)
            self._fail(target, f"{exc} (current restored to {_name(served)})")
            return
        self._switch(loaded, linked, target)

    def _handle_inbox(self) -> None:
        box = self._store.inbox
        try:
            drop = inbox.read_drop(box)
        except inbox.InboxRejectedError as exc:
            self._reject_drop(exc.target, str(exc))
            return
        if drop is None:
            return  # not complete yet (drop the model, then its manifest)
        target = drop.target
        try:
            if self._verifiers:
                # Offline installs need the same signature as desired states: over
                # the manifest's canonical JSON (without "signature").
                self._verifiers[0].verify(drop)
            self._end_probation_early()
            loaded, stored = self._install_drop(drop)
        except (UpdateError, SupersededError) as exc:
            self._reject_drop(target, f"inbox install refused: {exc}")
            return
        inbox.clear(drop, box)
        self._switch(loaded, stored, target)

    def _install_drop(self, drop: inbox.InboxDrop) -> tuple[LoadedModel, StoredVersion]:
        manifest = drop.manifest
        assert manifest.sha256 and manifest.size
        url = drop.model.resolve().as_uri()
        target = drop.target
        self._status(S.DOWNLOADING, target, progress=0.0)
        part = self._downloader.fetch(
            url, manifest.sha256, manifest.size,
            lambda got, total: self._status(S.DOWNLOADING, target, progress=got / total),
            self._superseded,
        )  # fmt: skip
        self._status(S.VERIFYING, target)
        file = self._downloader.verify(part, url, manifest.sha256, manifest.size)
        self._status(S.TESTING, target)
        fmt = _format_of(file, manifest.format)
        installed = dataclasses.replace(manifest, format=fmt, source=url)
        try:
            return self._admit_and_install(file, installed)
        finally:
            self._downloader.discard(manifest.sha256)

    def _reject_drop(self, target: Target | None, reason: str) -> None:
        rejected = inbox.reject(self._store.inbox, reason)
        self._fail(target, f"{reason} (files moved to {rejected.relative_to(self._store.root)})")


def _format_of(path: Path, declared: str | None) -> str:
    try:
        actual = detect_format(path)
    except ModelError as exc:
        raise UpdateError(f"the model will not load: {exc}") from exc
    if declared is not None and declared != actual:
        raise UpdateError(f"model.format says {declared!r} but the file is {actual}")
    return actual


def _name(stored: StoredVersion | None) -> str:
    return f"{stored.name} {stored.version}" if stored else "nothing"


__all__ = ["Updater"]
