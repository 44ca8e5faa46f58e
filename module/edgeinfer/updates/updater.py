"""The update path, on its own thread.

Jobs come from three places and go through one gate (verify -> self-test ->
swap -> probation):

* a desired state on ``edgeinfer/{id}/desired`` (network thread: only queued here),
* a hand-edited ``current`` symlink, and a model dropped into ``inbox/``
  (the watchdog thread: only queued here).

Threads and what they own: the updater thread owns every step and the store's
changes; the engine thread calls :meth:`Updater.observe` for each batch (the
probation monitor has its own lock). A newer job supersedes the one running:
it is checked between steps and on every downloaded chunk.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from edgeinfer.active import ActiveModel, load_active
from edgeinfer.config import UpdatesConfig
from edgeinfer.errors import ModelError, UpdateError
from edgeinfer.pipeline.encode import ModelIdentity
from edgeinfer.pipeline.engine import BatchOutcome, Engine
from edgeinfer.runtimes import detect_format, load_model
from edgeinfer.updates.desired import DesiredState, parse_desired
from edgeinfer.updates.download import Downloader, SupersededError
from edgeinfer.updates.probation import Limits, ProbationMonitor
from edgeinfer.updates.reported import Reporter
from edgeinfer.updates.selftest import run_self_test
from edgeinfer.updates.signing import SequenceVerifier, SignatureVerifier, Verifier, load_public_key
from edgeinfer.updates.store import MANIFEST, ModelStore, StoredVersion

log = logging.getLogger(__name__)

LOCAL_SETTLE_S = 0.3  # let "ln -sfn" (unlink + symlink) or a copy finish before looking


@dataclass
class _Probation:
    monitor: ProbationMonitor
    candidate: ActiveModel
    candidate_stored: StoredVersion
    old: ActiveModel
    old_stored: StoredVersion | None
    target: dict[str, str]
    ends: float
    applied: threading.Event  # set once the engine serves the candidate


class Updater:
    """Runs updates one at a time; the newest request wins."""

    def __init__(
        self,
        config: UpdatesConfig,
        store: ModelStore,
        engine: Engine,
        reporter: Reporter,
        threads: int,
        providers: tuple[str, ...],
        on_swap: Callable[[ActiveModel], None] | None = None,
    ) -> None:
        self._config = config
        self._store = store
        self._engine = engine
        self._reporter = reporter
        self._threads = threads
        self._providers = providers
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
        self._stopping = False
        self._probation: _Probation | None = None
        self.active_stored = store.link("current")
        self._thread = threading.Thread(target=self._loop, name="updater", daemon=True)

    # -- other threads -------------------------------------------------------

    def start(self) -> None:
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
                now = time.monotonic()
                local = [k for k, due in self._local_due.items() if due <= now]
                for kind in local:
                    del self._local_due[kind]
            try:
                if desired is not None:
                    self._end_probation_early()
                    self._handle_desired(desired)
                for kind in local:
                    self._handle_local(kind)
                self._check_probation()
            except Exception:  # the updater must outlive any bug in one update
                log.exception("update step failed unexpectedly")

    def _has_work(self) -> bool:
        now = time.monotonic()
        return (
            self._stopping
            or self._desired is not None
            or any(due <= now for due in self._local_due.values())
        )

    def _wait_time(self) -> float | None:
        waits = [max(0.0, due - time.monotonic()) for due in self._local_due.values()]
        if self._probation is not None:
            waits.append(0.1)
        return min(waits) if waits else None

    # -- desired state ---------------------------------------------------------

    def _handle_desired(self, payload: bytes) -> None:
        try:
            desired = parse_desired(payload, self._schemes)
        except UpdateError as exc:
            self._fail(None, str(exc))
            return
        target = desired.target
        active = self._engine.active
        if (desired.name, desired.version) == (
            active.identity.name,
            active.identity.version,
        ) and desired.sha256 in (None, active.sha256):
            if self._reporter.state not in ("active", "probation"):
                self._reporter.update("active", target)
            return
        if desired.url is not None and self._store.is_failed(desired.name, desired.version):
            # Retained desired states come back on every restart: without this a
            # rolled-back model would be swapped in (and out) again each time.
            self._fail(
                target,
                f"{desired.name} {desired.version} failed here before (rolled "
                "back, or refused at start): deploy a new version, or activate this one "
                "explicitly with a desired state without url",
            )
            return
        try:
            for verifier in self._verifiers:
                verifier.verify(desired)
            for verifier in self._verifiers:
                verifier.accept(desired)
            if desired.url is None:
                stored = self._store.get(desired.name, desired.version)
                self._store.clear_failed(desired.name, desired.version)
                self._reporter.update("testing", target)
                candidate = self._load(stored.model_file, None)
                run_self_test(candidate.model, candidate.self_test, self._config.self_test_runs)
            else:
                candidate, stored = self._download_and_test(desired)
            if self._superseded():
                candidate.model.close()
                return
            self._swap(candidate, stored, target)
        except SupersededError:
            log.info("update to %s %s superseded by a newer desired state", *target.values())
        except UpdateError as exc:
            self._fail(target, str(exc))
            if desired.sha256:
                self._downloader.discard(desired.sha256)

    def _download_and_test(self, desired: DesiredState) -> tuple[ActiveModel, StoredVersion]:
        assert desired.url and desired.sha256 and desired.size
        target = desired.target
        self._reporter.update("downloading", target, progress=0.0)
        part = self._downloader.fetch(
            desired.url, desired.sha256, desired.size,
            lambda got, total: self._reporter.update("downloading", target,
                                                     progress=got / total),
            self._superseded,
        )  # fmt: skip
        self._reporter.update("verifying", target)
        file = self._downloader.verify(part, desired.url, desired.sha256, desired.size)
        self._reporter.update("testing", target)
        fmt = self._format_of(file, desired.format)
        labels = desired.labels or ()
        self_test = desired.self_test or {}
        candidate = self._load(
            file, ModelIdentity(desired.name, desired.version, labels), desired.sha256, self_test
        )
        try:
            run_self_test(candidate.model, self_test, self._config.self_test_runs)
            manifest = {
                "name": desired.name,
                "version": desired.version,
                "format": fmt,
                "sha256": desired.sha256,
                "size": desired.size,
                "labels": list(labels),
                "self_test": self_test,
                "source": desired.url,
            }
            stored = self._store.install(file, fmt, desired.name, desired.version, manifest)
        except BaseException:
            candidate.model.close()
            raise
        self._downloader.discard(desired.sha256)
        return candidate, stored

    # -- the gate shared by every path -----------------------------------------

    def _load(
        self,
        path: Path,
        identity: ModelIdentity | None,
        sha256: str = "",
        self_test: dict[str, Any] | None = None,
    ) -> ActiveModel:
        try:
            if identity is None:
                return load_active(path, self._threads, self._providers)
            model = load_model(path, threads=self._threads, providers=self._providers)
        except ModelError as exc:
            raise UpdateError(f"the model will not load: {exc}") from exc
        return ActiveModel(model, identity, path, sha256, dict(self_test or {}))

    @staticmethod
    def _format_of(path: Path, declared: str | None) -> str:
        try:
            actual = detect_format(path)
        except ModelError as exc:
            raise UpdateError(f"the model will not load: {exc}") from exc
        if declared is not None and declared != actual:
            raise UpdateError(f"model.format says {declared!r} but the file is {actual}")
        return actual

    def _swap(self, candidate: ActiveModel, stored: StoredVersion, target: dict[str, str]) -> None:
        old = self._engine.active
        old_stored = self.active_stored
        self._store.activate(stored)
        if old_stored is not None and old_stored.path != stored.path:
            self._store.set_previous(old_stored)
        applied = self._engine.swap(candidate)
        self.active_stored = stored
        self._reporter.serving(candidate)
        if self._on_swap is not None:
            self._on_swap(candidate)
        log.info(
            "now serving %s %s (was %s %s)",
            candidate.identity.name,
            candidate.identity.version,
            old.identity.name,
            old.identity.version,
        )
        limits = Limits(
            max_error_rate=self._config.probation_max_error_rate,
            max_latency_ms=self._config.probation_max_latency_ms
            or float(candidate.self_test.get("max_latency_ms", 0) or 0),
            min_readings=self._config.probation_min_readings,
        )
        self._probation = _Probation(
            ProbationMonitor(candidate, limits),
            candidate,
            stored,
            old,
            old_stored,
            target,
            time.monotonic() + self._config.probation_s,
            applied,
        )
        self._reporter.update("probation", target)
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
        # A newer desired state arrived: judge the model on what was seen so far.
        probation = self._probation
        if probation is not None:
            reason = probation.monitor.verdict()
            if reason is not None:
                self._roll_back(probation, reason)
            else:
                self._accept(probation)

    def _accept(self, probation: _Probation) -> None:
        self._probation = None
        self._close_after(probation.applied, probation.old)
        self._reporter.update("active", probation.target)
        removed = self._store.prune(self._config.keep_versions)
        for version in removed:
            log.info("pruned %s %s from the store", version.name, version.version)
        self._reporter.publish()

    def _roll_back(self, probation: _Probation, reason: str) -> None:
        self._probation = None
        log.error("rolling back %s %s: %s", *probation.target.values(), reason)
        back = self._engine.swap(probation.old)
        self.active_stored = probation.old_stored
        if probation.old_stored is not None:
            self._store.roll_back_to(probation.old_stored, failed=probation.candidate_stored)
        self._reporter.serving(probation.old)
        if self._on_swap is not None:
            self._on_swap(probation.old)
        self._close_after(back, probation.candidate)
        self._reporter.update("rolled_back", probation.target, error=reason)

    def _close_after(self, swapped: threading.Event, active: ActiveModel) -> None:
        # The engine lets go of the old model between two batches: at once when
        # idle, after the batch in progress otherwise.
        if swapped.wait(5):
            active.model.close()
        else:
            log.warning(
                "the engine still runs %s %s: left open",
                active.identity.name,
                active.identity.version,
            )

    def _fail(self, target: dict[str, str] | None, error: str) -> None:
        log.error("update %s failed: %s", target or "", error)
        self._reporter.update("failed", target, error=error)

    # -- offline paths -----------------------------------------------------------

    def _handle_local(self, kind: str) -> None:
        if kind == "current":
            self._handle_current()
        else:
            self._handle_inbox()

    def _handle_current(self) -> None:
        linked = self._store.link("current")
        active_stored = self.active_stored
        if linked is not None and active_stored is not None and linked.path == active_stored.path:
            return
        if linked is None:
            if active_stored is not None:
                self._store.roll_back_to(active_stored, failed=None)
            self._fail(
                None,
                "current was changed to something that is not a stored version: "
                f"restored it to {_name(active_stored)}",
            )
            return
        target = {"name": linked.name, "version": linked.version}
        self._end_probation_early()
        try:
            self._reporter.update("testing", target)
            candidate = self._load(linked.model_file, None)
            try:
                run_self_test(candidate.model, candidate.self_test, self._config.self_test_runs)
            except UpdateError:
                candidate.model.close()
                raise
        except UpdateError as exc:
            if active_stored is not None:
                self._store.roll_back_to(active_stored, failed=linked)
            self._fail(target, f"{exc} (current restored to {_name(active_stored)})")
            return
        self._swap(candidate, linked, target)

    def _handle_inbox(self) -> None:
        inbox = self._store.inbox
        manifest_path = inbox / MANIFEST
        models = [p for p in inbox.iterdir() if p.suffix in (".onnx", ".tflite") and p.is_file()]
        if not manifest_path.is_file() or len(models) != 1:
            return  # not complete yet (drop the model, then its manifest)
        model_path = models[0]
        try:
            manifest = orjson.loads(manifest_path.read_bytes())
            if not isinstance(manifest, dict):
                raise UpdateError("inbox/manifest.json is not a JSON object")
        except (OSError, orjson.JSONDecodeError) as exc:
            self._reject_inbox(None, f"inbox/manifest.json is not JSON: {exc}")
            return
        name, version = manifest.get("name"), manifest.get("version")
        target = {"name": str(name), "version": str(version)}
        sha256, size = manifest.get("sha256"), manifest.get("size")
        if isinstance(size, int) and model_path.stat().st_size < size:
            return  # still being copied
        model = {
            "name": name,
            "version": version,
            "url": model_path.resolve().as_uri(),
            "sha256": sha256,
            "size": size,
            "format": manifest.get("format"),
        }
        desired: dict[str, Any] = {"model": {k: v for k, v in model.items() if v is not None}}
        for key in ("labels", "self_test"):
            if manifest.get(key) is not None:
                desired[key] = manifest[key]
        try:
            state = parse_desired(orjson.dumps(desired), ("file",))
            if self._verifiers:
                # Offline installs need the same signature as desired states: over
                # the manifest's canonical JSON (without "signature").
                signed = DesiredState(**{**state.__dict__, "document": manifest})
                self._verifiers[0].verify(signed)
            self._end_probation_early()
            candidate, stored = self._download_and_test(state)
        except (UpdateError, SupersededError) as exc:
            self._reject_inbox(target, f"inbox install refused: {exc}")
            return
        for path in (manifest_path, model_path):
            path.unlink(missing_ok=True)
        self._swap(candidate, stored, target)

    def _reject_inbox(self, target: dict[str, str] | None, reason: str) -> None:
        inbox = self._store.inbox
        rejected = inbox / "rejected" / time.strftime("%Y%m%dT%H%M%S")
        rejected.mkdir(parents=True, exist_ok=True)
        for path in inbox.iterdir():
            if path.is_file():
                shutil.move(str(path), rejected / path.name)
        (rejected / "reason.txt").write_text(reason + "\n")
        self._fail(target, f"{reason} (files moved to {rejected.relative_to(self._store.root)})")


def _name(stored: StoredVersion | None) -> str:
    return f"{stored.name} {stored.version}" if stored else "nothing"


__all__ = ["Updater"]
