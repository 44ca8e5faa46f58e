"""The way into the store, shared by every update path: fetch, verify, admit, install.

Nothing is installed that has not loaded and passed its self-test here, and
whatever fails leaves nothing behind: the download is removed, an install is
staged and renamed into place only when complete, and a loaded candidate that
does not make it is closed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from edgeinfer.errors import ModelError, UpdateError
from edgeinfer.manifest.document import Manifest
from edgeinfer.model.loaded import LoadedModel
from edgeinfer.runtimes import detect_format
from edgeinfer.serving.admission import RuntimeOptions, admit
from edgeinfer.updates.desired import DesiredState
from edgeinfer.updates.download import Downloader
from edgeinfer.updates.reported import Reporter
from edgeinfer.updates.states import Target, UpdateState
from edgeinfer.updates.store import ModelStore, StoredVersion, check_same_build

S = UpdateState


class Gate:
    """Brings a candidate from a URL, a local file or the store to a loaded, installed model."""

    def __init__(
        self,
        store: ModelStore,
        downloader: Downloader,
        options: RuntimeOptions,
        reporter: Reporter,
        superseded: Callable[[], bool],
    ) -> None:
        self._store = store
        self.downloader = downloader
        self._options = options
        self._reporter = reporter
        self._superseded = superseded

    def check(self, target: Target, url: str | None, sha256: str | None) -> None:
        """What can be refused before any I/O: a file:// URL, another build of a version."""
        if url is not None:
            self.downloader.check_url(url)
        installed = self._store.installed_sha256(target.name, target.version)
        if installed is not None and sha256 is not None:
            check_same_build(target.name, target.version, installed, sha256)

    def admit_stored(self, desired: DesiredState) -> tuple[LoadedModel, StoredVersion]:
        """A version already in the store, activated explicitly."""
        stored = self._store.get(desired.name, desired.version)
        self._store.clear_failed(desired.name, desired.version)
        self._reporter.step(S.TESTING, desired.target)
        return admit(stored.model_file, stored.manifest(), self._options), stored

    def fetch_and_install(
        self, url: str, manifest: Manifest, target: Target, local: Path | None = None
    ) -> tuple[LoadedModel, StoredVersion]:
        """Download ``url`` (``manifest`` gives sha256 and size), verify, admit, install.

        ``local``: copy this file instead (an inbox drop), recorded as ``url``.
        """
        assert manifest.sha256 and manifest.size
        try:
            self._reporter.step(S.DOWNLOADING, target, progress=0.0)
            part = self.downloader.fetch(
                url,
                manifest.sha256,
                manifest.size,
                lambda got, total: self._reporter.step(S.DOWNLOADING, target, progress=got / total),
                self._superseded,
                local,
            )
            self._reporter.step(S.VERIFYING, target)
            file = self.downloader.verify(part, url, manifest.sha256, manifest.size)
            self._reporter.step(S.TESTING, target)
            installed = dataclasses.replace(
                manifest, format=_format_of(file, manifest.format), source=url
            )
            return self._admit_and_install(file, installed)
        finally:
            self.downloader.discard(manifest.sha256)

    def _admit_and_install(
        self, file: Path, manifest: Manifest
    ) -> tuple[LoadedModel, StoredVersion]:
        loaded = admit(file, manifest, self._options)
        try:
            stored = self._store.install(file, manifest)
        except BaseException:
            loaded.model.close()
            raise
        return loaded, stored


def _format_of(path: Path, declared: str | None) -> str:
    try:
        actual = detect_format(path)
    except ModelError as exc:
        raise UpdateError(f"the model will not load: {exc}") from exc
    if declared is not None and declared != actual:
        raise UpdateError(f"model.format says {declared!r} but the file is {actual}")
    return actual
