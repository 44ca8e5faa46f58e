"""The update path, on its own thread (the states it moves through: :mod:`.states`).

Work comes from three places and goes through one gate (verify -> admit ->
install -> switch -> probation):

* a desired state on ``edgeinfer/{id}/desired`` (the serving thread only queues it),
* a hand-edited ``current`` symlink, and a model dropped into ``inbox/``
  (the watchdog thread only queues them; :mod:`.local` handles them).

Threads and what they own: the updater thread owns every step, the store's
changes, what is served (:mod:`.served`, :mod:`.switcher`) and the reported
state, which only it publishes; the serving thread calls :meth:`Updater.observe`
for each batch. A newer desired state supersedes the one running: it is
checked between steps and on every downloaded chunk. The same document again
(the retained desired state after every reconnect) changes nothing, and
nothing that is not a valid document for this module ends a probation.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from edgeinfer.config import UpdatesConfig
from edgeinfer.errors import ModelError, UpdateError
from edgeinfer.model.loaded import LoadedModel
from edgeinfer.observability.metrics import Metrics
from edgeinfer.pipeline.engine import BatchOutcome
from edgeinfer.serving.admission import RuntimeOptions
from edgeinfer.updates.desired import DesiredState, DesiredStateError, parse_desired
from edgeinfer.updates.download import Downloader, SupersededError
from edgeinfer.updates.gate import Gate
from edgeinfer.updates.inbox import InboxDrop
from edgeinfer.updates.local import LocalChanges
from edgeinfer.updates.reported import Reporter
from edgeinfer.updates.rollouts.gateway import Rollouts, RouteSlot
from edgeinfer.updates.served import Served
from edgeinfer.updates.signing import SequenceVerifier, SignatureVerifier, Verifier, load_public_key
from edgeinfer.updates.states import Target, UpdateState
from edgeinfer.updates.store import ModelStore
from edgeinfer.updates.switcher import Switcher

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
        module_id: str = "edgeinfer",
        labels: dict[str, str] | None = None,
        routes: RouteSlot | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._config = config
        self._store = store
        self._reporter = reporter
        self._module_id = module_id
        self._labels = dict(labels or {})
        self._verifiers: list[Verifier] = []
        if config.trusted_keys:
            keys = [load_public_key(Path(p)) for p in config.trusted_keys]
            self._verifiers = [SignatureVerifier(keys), SequenceVerifier(store)]
        self._schemes = ("https", "file", "http") if config.allow_http else ("https", "file")
        downloader = Downloader(
            store.downloads,
            config.max_download_bytes,
            config.download_timeout_s,
            config.download_retries,
            http_schemes=("https", "http") if config.allow_http else ("https",),
            file_roots=tuple(config.file_roots),
            ca_file=config.ca_file,
        )
        self._gate = Gate(store, downloader, options, reporter, self._superseded)
        self._switcher = Switcher(config, store, served, reporter, on_swap)
        self._rollouts = (
            Rollouts(store, routes, self._switcher, reporter, metrics, self._verdict_due)
            if routes is not None
            else None
        )
        self._local = LocalChanges(
            store, self._gate, self._switcher, reporter, options, self._check
        )
        self._cond = threading.Condition()
        self._desired: bytes | None = None
        self._last_document: tuple[bytes, bool] | None = None  # (payload, it failed)
        self._local_due: dict[str, float] = {}
        self._report_due = False
        self._check_due = False
        self._resume_due = True  # a probation the last run did not finish
        self._options = options
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="updater", daemon=True)

    # -- other threads -------------------------------------------------------

    def start(self) -> None:
        """Start taking work; the first report (what is served) is published by the thread."""
        self._reporter.serving(self._switcher.served.loaded, publish=False)
        self.request_report()
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def submit_desired(self, payload: bytes) -> None:
        """A desired state arrived (serving thread): it supersedes any pending one.

        The same bytes as the document in effect are dropped here: the broker
        resends the retained desired state after every reconnect, and that must
        neither restart nor supersede anything. After a failure, the same
        document is a retry.
        """
        with self._cond:
            if self._last_document is not None and self._last_document == (payload, False):
                return
            self._desired = payload
            self._cond.notify_all()

    def submit_local(self, kind: str) -> None:
        """The watchdog saw ``current`` or ``inbox/`` change."""
        with self._cond:
            self._local_due[kind] = time.monotonic() + LOCAL_SETTLE_S
            self._cond.notify_all()

    def _verdict_due(self) -> None:
        """A rollout compared enough to judge (serving thread): check it now, not at the tick."""
        with self._cond:
            self._check_due = True
            self._cond.notify_all()

    def request_report(self) -> None:
        """Publish the reported state again (after a reconnect), from the updater thread."""
        with self._cond:
            self._report_due = True
            self._cond.notify_all()

    def observe(self, outcome: BatchOutcome) -> None:
        """Each batch's outcome (serving thread), for the probation monitor."""
        self._switcher.observe(outcome)

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
                self._check_due = False
                resume, self._resume_due = self._resume_due, False
                now = time.monotonic()
                local = [k for k, due in self._local_due.items() if due <= now]
                for kind in local:
                    del self._local_due[kind]
            try:
                if resume:
                    self._switcher.resume(self._options)
                if report:
                    self._reporter.publish()
                if desired is not None:
                    self._handle_desired(desired)
                for kind in local:
                    if kind == "inbox" or self._local.current_changed():
                        self._end_rollout(f"a local change ({kind})")
                    if kind == "current":
                        self._local.handle_current()
                    else:
                        self._local.handle_inbox()
                self._switcher.check()
                if self._rollouts is not None:
                    self._rollouts.check()
            except Exception:  # the updater must outlive any bug in one update
                log.exception("update step failed unexpectedly")

    def _has_work(self) -> bool:
        now = time.monotonic()
        return (
            self._stopping
            or self._report_due
            or self._check_due
            or self._desired is not None
            or any(due <= now for due in self._local_due.values())
        )

    def _wait_time(self) -> float | None:
        waits = [max(0.0, due - time.monotonic()) for due in self._local_due.values()]
        if self._switcher.probation is not None or self._rolling():
            waits.append(0.1)
        return min(waits) if waits else None

    # -- desired state ---------------------------------------------------------

    def _handle_desired(self, payload: bytes) -> None:
        with self._cond:
            self._last_document = (payload, False)
        try:
            desired = parse_desired(payload, self._schemes)
        except DesiredStateError as exc:
            self._failed(None, str(exc), exc.target)
            return
        except UpdateError as exc:
            self._failed(None, str(exc))
            return
        rollouts = self._rollouts
        if rollouts is not None and rollouts.is_running(
            desired.target, desired.sha256, desired.rollout
        ):
            return  # the same rollout's document again (a reconnect): it goes on
        if self._is_served(desired):
            # The active model again: a rollout under way is called off.
            self._end_rollout("a desired state naming the active model")
            # Nothing to do; say so when the last report was about something else.
            probation = self._switcher.probation
            state = S.PROBATION if probation is not None else S.ACTIVE
            if self._reporter.status.state is not state:
                self._reporter.step(state, probation.target if probation else desired.target)
            return
        try:
            self._accept(desired)
            self._apply(desired)
        except SupersededError:
            log.info("update to %s superseded by a newer desired state", desired.target)
        except (UpdateError, ModelError) as exc:
            self._failed(desired, str(exc))
        except OSError as exc:  # a full disk, a permission: the update's failure
            self._failed(desired, f"{exc.strerror or exc}: {os.path.basename(exc.filename or '')}")
        except Exception as exc:  # a bug: still a failed update with nothing left behind
            log.exception("update to %s failed unexpectedly", desired.target)
            self._failed(desired, f"internal error ({type(exc).__name__}): see the module's log")

    def _rolling(self) -> bool:
        return self._rollouts is not None and self._rollouts.running

    def _end_rollout(self, why: str) -> None:
        if self._rollouts is not None:
            self._rollouts.end(why)

    def _is_served(self, desired: DesiredState) -> bool:
        served = self._switcher.served.loaded
        return (desired.name, desired.version) == (
            served.identity.name,
            served.identity.version,
        ) and desired.sha256 in (None, served.sha256)

    def _accept(self, desired: DesiredState) -> None:
        """Checks before anything changes; then the document is this module's to act on."""
        self._check(desired)
        if desired.url is not None and self._store.is_failed(desired.name, desired.version):
            # Retained desired states come back on every restart: without this a
            # rolled-back model would be swapped in (and out) again each time.
            raise UpdateError(
                f"{desired.target} failed here before (rolled back, or refused at start): deploy "
                "a new version, or activate this one explicitly with a desired state without url"
            )
        self._gate.check(desired.target, desired.url, desired.sha256)
        for verifier in self._verifiers:
            verifier.accept(desired)
        self._gate.downloader.keep_only(desired.sha256)

    def _check(self, document: DesiredState | InboxDrop) -> None:
        """Signature, target, sequence: the same checks for desired states and inbox drops."""
        signatures, others = self._verifiers[:1], self._verifiers[1:]
        for verifier in signatures:
            verifier.verify(document)
        recipient = document.recipient
        if recipient is None and self._verifiers:
            raise UpdateError(
                'a signed desired state must name its "target": expected {"module_id": ...}'
            )
        if recipient is not None:
            refusal = recipient.refuses(self._module_id, self._labels)
            if refusal is not None:
                raise UpdateError(refusal)
        for verifier in others:
            verifier.verify(document)
        if isinstance(document, InboxDrop):
            for verifier in self._verifiers:
                verifier.accept(document)

    def _apply(self, desired: DesiredState) -> None:
        if desired.url is None:
            loaded, stored = self._gate.admit_stored(desired)
        else:
            manifest = desired.manifest(desired.format)
            loaded, stored = self._gate.fetch_and_install(desired.url, manifest, desired.target)
        if self._superseded():
            loaded.model.close()
            return
        if desired.rollout is not None:
            if self._rollouts is None:
                loaded.model.close()
                raise UpdateError("rollouts need the engine's routes: not available here")
            self._rollouts.start(desired.rollout, loaded, stored, desired.target)
            return
        self._end_rollout("a newer desired state")
        self._switcher.switch(loaded, stored, desired.target)

    def _failed(
        self, desired: DesiredState | None, error: str, target: Target | None = None
    ) -> None:
        with self._cond:
            if self._last_document is not None:
                self._last_document = (self._last_document[0], True)
        if desired is not None and desired.sha256:
            self._gate.downloader.discard(desired.sha256)
        self._reporter.failed(desired.target if desired else target, error)


__all__ = ["Updater"]
