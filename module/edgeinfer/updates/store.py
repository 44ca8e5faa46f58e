"""The model store on disk (docs/reference.md, "Model store").

::

    models/<name>/<version>/model.onnx | model.tflite
    models/<name>/<version>/manifest.json
    current  -> models/<name>/<version>     relative symlink, replaced atomically
    previous -> models/<name>/<version>
    downloads/                              partial downloads, resumed
    inbox/                                  offline installs
    state.json                              last accepted sequence, failed versions,
                                            the model.path file last installed

Every change is made so that a crash at any instant leaves a consistent store:
versions are installed into a hidden staging directory and renamed into place;
a symlink is replaced by creating a new one beside it and renaming it over the
old (``rename`` is atomic); ``recover`` removes leftovers and repairs a
dangling ``current`` from ``previous``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson

from edgeinfer.errors import UpdateError
from edgeinfer.manifest.document import MANIFEST_NAME, Manifest, load_manifest

log = logging.getLogger(__name__)

T = TypeVar("T")

MODEL_FILES = {"onnx": "model.onnx", "tflite": "model.tflite"}
MANIFEST = MANIFEST_NAME
#: Names and versions become directory names: no separators, no dot-dot, no surprises.
SAFE_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")


class StoreError(UpdateError):
    """The store cannot do what was asked (bad name, missing version, disk error)."""


def check_part(kind: str, value: object) -> str:
    """Return ``value`` if it is a safe model name or version, else raise naming it."""
    if not isinstance(value, str) or not SAFE_PART.match(value) or ".." in value:
        raise StoreError(
            f"{kind} {value!r} is not allowed: expected 1-64 letters, digits, '.', '_', '+', "
            "'-', starting with a letter or digit, without '..'"
        )
    return value


def check_same_build(name: str, version: str, installed: str, offered: str) -> None:
    """A version is immutable: other bytes under the same name and version are refused."""
    if installed != offered:
        raise StoreError(
            f"{name} {version} is already installed with sha256 {installed}: "
            "a different build needs a new version"
        )


@dataclass(frozen=True)
class StoredVersion:
    """One installed model version."""

    name: str
    version: str
    path: Path  # the version directory

    @property
    def model_file(self) -> Path:
        for filename in MODEL_FILES.values():
            if (self.path / filename).is_file():
                return self.path / filename
        raise StoreError(f"{self.path} holds no model file ({', '.join(MODEL_FILES.values())})")

    def manifest(self) -> Manifest:
        """The manifest the version was installed with."""
        return load_manifest(self.model_file)

    def sha256(self) -> str:
        """The model file's sha256 (hashed: a manifest could be stale)."""
        return _sha256(self.model_file)


class ModelStore:
    """The store under ``state_dir``. Thread-safe: one lock guards every change."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.models = root / "models"
        self.downloads = root / "downloads"
        self.inbox = root / "inbox"
        self._state_path = root / "state.json"
        self._lock = threading.RLock()
        for directory in (self.models, self.downloads, self.inbox):
            directory.mkdir(parents=True, exist_ok=True)

    # -- reading ---------------------------------------------------------------

    def link(self, which: str) -> StoredVersion | None:
        """What ``current`` or ``previous`` points at, if it points at a version."""
        path = self.root / which
        try:
            target = os.readlink(path)
        except OSError:
            return None
        parts = Path(target).parts
        if len(parts) != 3 or parts[0] != "models":
            return None
        version = StoredVersion(parts[1], parts[2], self.models / parts[1] / parts[2])
        return version if version.path.is_dir() else None

    def get(self, name: str, version: str) -> StoredVersion:
        check_part("name", name)
        check_part("version", version)
        path = self.models / name / version
        if not path.is_dir():
            raise StoreError(f"version {name} {version} is not in the store")
        return StoredVersion(name, version, path)

    def installed_sha256(self, name: str, version: str) -> str | None:
        """The sha256 of ``name/version``'s model file, or None when it is not installed."""
        path = self.models / name / version
        try:
            return StoredVersion(name, version, path).sha256()
        except (StoreError, OSError):
            return None

    def versions(self) -> list[StoredVersion]:
        """Installed versions, oldest first (by install time)."""
        found = [
            StoredVersion(n.name, v.name, v)
            for n in self.models.iterdir()
            if n.is_dir() and not n.name.startswith(".")
            for v in n.iterdir()
            if v.is_dir() and not v.name.startswith(".")
        ]
        return sorted(found, key=lambda s: s.path.stat().st_mtime)

    # -- changing --------------------------------------------------------------

    def install(self, model_file: Path, manifest: Manifest) -> StoredVersion:
        """Copy a verified model and its manifest in as ``name/version``.

        The same bytes again return the installed version; other bytes under an
        installed name and version are refused (StoreError): a version names a
        build, and a restart must serve what was tested.
        """
        name = check_part("name", manifest.name)
        version = check_part("version", manifest.version)
        fmt = manifest.format
        if fmt not in MODEL_FILES:
            raise StoreError(f"format {fmt!r}: expected one of {sorted(MODEL_FILES)}")
        with self._lock:
            final = self.models / name / version
            staging = self.models / name / f".staging-{uuid.uuid4().hex[:8]}"
            staging.mkdir(parents=True)
            try:
                shutil.copyfile(model_file, staging / MODEL_FILES[fmt])
                (staging / MANIFEST).write_bytes(manifest.to_json())
                _fsync_dir(staging)
                if final.exists():
                    existing = self.installed_sha256(name, version)
                    if existing is not None:
                        check_same_build(name, version, existing, _sha256(model_file))
                        shutil.rmtree(staging)
                        return StoredVersion(name, version, final)
                    shutil.rmtree(final)  # a leftover without a model file
                staging.rename(final)
                _fsync_dir(final.parent)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            return StoredVersion(name, version, final)

    def install_tested(
        self, model_file: Path, manifest: Manifest, test: Callable[[StoredVersion], T]
    ) -> tuple[T, StoredVersion]:
        """Install ``model_file`` as ``name/version`` only once ``test`` passed on the copy.

        ``test`` gets the staged copy (the very bytes that will be installed)
        before it is renamed into place; if it raises, nothing is left behind
        and the store is as it was. The same bytes as an installed version are
        tested where they lie; other bytes under an installed name and version
        are refused (StoreError) before anything is tested.
        """
        name = check_part("name", manifest.name)
        version = check_part("version", manifest.version)
        fmt = manifest.format
        if fmt not in MODEL_FILES:
            raise StoreError(f"format {fmt!r}: expected one of {sorted(MODEL_FILES)}")
        with self._lock:
            final = self.models / name / version
            installed = self.installed_sha256(name, version)
            if installed is not None:
                check_same_build(name, version, installed, _sha256(model_file))
                stored = StoredVersion(name, version, final)
                return test(stored), stored
            staging = self.models / name / f".staging-{uuid.uuid4().hex[:8]}"
            staging.mkdir(parents=True)
            try:
                shutil.copyfile(model_file, staging / MODEL_FILES[fmt])
                (staging / MANIFEST).write_bytes(manifest.to_json())
                result = test(StoredVersion(name, version, staging))
                _fsync_dir(staging)
                if final.exists():
                    shutil.rmtree(final)  # a leftover without a model file
                staging.rename(final)
                _fsync_dir(final.parent)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                with contextlib.suppress(OSError):  # never hide why the test failed
                    if not any(staging.parent.iterdir()):
                        staging.parent.rmdir()  # a name the store did not hold before
                raise
            return result, StoredVersion(name, version, final)

    def activate(self, version: StoredVersion, previous: StoredVersion | None = None) -> None:
        """Point ``current`` at ``version`` and ``previous`` at the version served until now.

        ``previous`` defaults to what ``current`` names; the updater passes the
        version it served, because after a hand-edit ``current`` already names
        the new one. ``previous`` is written first: a crash between the two
        writes leaves both naming installed versions.
        """
        with self._lock:
            old = previous if previous is not None else self.link("current")
            if old is not None and old.path != version.path:
                self._set_link("previous", old)
            self._set_link("current", version)

    def roll_back_to(self, version: StoredVersion, failed: StoredVersion | None) -> None:
        """Point ``current`` back at ``version``; remember ``failed`` so it is not retried."""
        with self._lock:
            self._set_link("current", version)
            if failed is not None:
                state = self.read_state()
                bad = set(state.get("failed", []))
                bad.add(f"{failed.name}/{failed.version}")
                state["failed"] = sorted(bad)
                self.write_state(state)

    def prune(self, keep: int) -> list[StoredVersion]:
        """Delete the oldest versions beyond ``keep``, never ``current`` or ``previous``."""
        with self._lock:
            protected = {v.path for v in (self.link("current"), self.link("previous")) if v}
            removable = [v for v in self.versions() if v.path not in protected]
            excess = len(protected) + len(removable) - keep
            removed = removable[: max(0, excess)]
            for version in removed:
                shutil.rmtree(version.path, ignore_errors=True)
                with_parent = version.path.parent
                if with_parent.is_dir() and not any(with_parent.iterdir()):
                    with_parent.rmdir()
            return removed

    def recover(self) -> list[str]:
        """Repair what a crash can leave behind; returns what was done, for the log."""
        done: list[str] = []
        with self._lock:
            for leftover in self.root.glob(".link-*"):
                leftover.unlink(missing_ok=True)
                done.append(f"removed half-made link {leftover.name}")
            for staging in self.models.glob("*/.staging-*"):
                shutil.rmtree(staging, ignore_errors=True)
                done.append(f"removed unfinished install {staging.relative_to(self.root)}")
            done += self._tidy_downloads()
            current_path = self.root / "current"
            if current_path.is_symlink() and self.link("current") is None:
                previous = self.link("previous")
                if previous is not None:
                    self._set_link("current", previous)
                    done.append(f"current was dangling: back to previous {previous.version}")
                else:
                    current_path.unlink()
                    done.append("current was dangling and there is no previous: removed it")
        return done

    def _tidy_downloads(self) -> list[str]:
        # An interrupted download resumes from its .part, but only the newest
        # can be the one a redelivered desired state asks for again.
        files = sorted(
            (p for p in self.downloads.iterdir() if p.is_file()), key=lambda p: p.stat().st_mtime
        )
        keep = next((p for p in reversed(files) if p.suffix == ".part"), None)
        removed = []
        for path in files:
            if path != keep:
                path.unlink(missing_ok=True)
                removed.append(f"removed stale download {path.name}")
        return removed

    # -- persistent state ------------------------------------------------------

    def read_state(self) -> dict[str, Any]:
        try:
            doc = orjson.loads(self._state_path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def write_state(self, state: dict[str, Any]) -> None:
        with self._lock:
            tmp = self._state_path.with_name(f".state-{uuid.uuid4().hex[:8]}")
            with tmp.open("wb") as handle:
                handle.write(orjson.dumps(state, option=orjson.OPT_INDENT_2))
                handle.flush()
                os.fsync(handle.fileno())
            tmp.replace(self._state_path)

    def set_probation(self, version: StoredVersion | None) -> None:
        """Record the version on probation (None: none is), so a restart does not skip it."""
        with self._lock:
            state = self.read_state()
            if version is None:
                if state.pop("probation", None) is None:
                    return
            else:
                state["probation"] = {"name": version.name, "version": version.version}
            self.write_state(state)

    def on_probation(self) -> tuple[str, str] | None:
        """The (name, version) recorded as on probation, if any."""
        record = self.read_state().get("probation")
        if isinstance(record, dict) and {"name", "version"} <= set(record):
            return str(record["name"]), str(record["version"])
        return None

    def model_path_record(self) -> tuple[str, str, str] | None:
        """(sha256, name, version) of the ``model.path`` file last installed or found here."""
        record = self.read_state().get("model_path")
        if isinstance(record, dict) and all(
            isinstance(record.get(k), str) for k in ("sha256", "name", "version")
        ):
            return str(record["sha256"]), str(record["name"]), str(record["version"])
        return None

    def record_model_path(self, path: Path, sha256: str, name: str, version: str) -> None:
        """Remember ``path`` (``model.path``) as honoured: the same file again changes nothing."""
        with self._lock:
            state = self.read_state()
            record = {"path": str(path), "sha256": sha256, "name": name, "version": version}
            if state.get("model_path") != record:
                state["model_path"] = record
                self.write_state(state)

    def is_failed(self, name: str, version: str) -> bool:
        return f"{name}/{version}" in self.read_state().get("failed", [])

    def clear_failed(self, name: str, version: str) -> None:
        state = self.read_state()
        failed = [x for x in state.get("failed", []) if x != f"{name}/{version}"]
        if failed != state.get("failed", []):
            state["failed"] = failed
            self.write_state(state)

    # -- internals -------------------------------------------------------------

    def _points_at(self, which: str, path: Path) -> bool:
        linked = self.link(which)
        return linked is not None and linked.path == path

    def _set_link(self, which: str, version: StoredVersion) -> None:
        # A new link beside the old one, renamed over it: the swap is atomic,
        # and a crash leaves at worst a .link-* file that recover() removes.
        tmp = self.root / f".link-{which}-{uuid.uuid4().hex[:8]}"
        os.symlink(os.path.join("models", version.name, version.version), tmp)
        os.replace(tmp, self.root / which)
        _fsync_dir(self.root)


def file_sha256(path: Path) -> str:
    """The sha256 of the file at ``path``, hex."""
    return _sha256(path)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
