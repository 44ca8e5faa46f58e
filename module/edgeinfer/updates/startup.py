"""What the module serves when it starts: the store's policy, before any update runs.

``model.path`` (``--model``) and the store:

* an empty store: the file is loaded and self-tested from a staged copy, and
  only then installed and made ``current``;
* a store in use, given the file it last installed (or, for a store from an
  earlier release, a file it already holds), or its ``current``'s own bytes:
  nothing changes and ``current`` is served, so updates survive restarts with
  ``model.path`` left in the configuration;
* a store in use, given another file: installed as a new version through the
  same gate (load + self-test), made ``current`` with the old one kept as
  ``previous``, and on probation like any update.

A file refused on the way (not a model, will not load, fails its self-test,
another build under an installed version) leaves the store as it was and
stops the module with :class:`ModelRefusedError`: asked for a model it cannot
serve, the module does not quietly serve another one.

Without ``model.path``, ``current`` must load and pass its self-test, or
``previous`` is served instead (and ``current`` pointed back at it).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from edgeinfer.errors import ConfigError, ModelError, StreamsDealtOutError, UpdateError
from edgeinfer.manifest.document import UNVERSIONED, Manifest, load_manifest
from edgeinfer.model.loaded import LoadedModel
from edgeinfer.runtimes import detect_format
from edgeinfer.serving.admission import RuntimeOptions, admit
from edgeinfer.updates.store import ModelStore, StoredVersion, file_sha256

log = logging.getLogger(__name__)


class ModelRefusedError(UpdateError):
    """The model file given at start was refused; the store is as it was.

    Exit code 2, as for a bad configuration: starting again with the same file
    cannot succeed, so a supervisor should not restart the module in a loop.
    The message says what was refused and why, not that the configuration is bad.
    """

    #: The command line's exit code for this error (``edgeinfer.cli.main``).
    exit_code = 2

    def __init__(self, path: Path, reason: str, current: StoredVersion | None) -> None:
        self.path = path
        self.reason = " ".join(reason.split()).rstrip(".")  # runtimes' messages span lines
        if current is None:
            where = "it holds no model yet"
        else:
            where = (
                f"its current is {current.name} {current.version}, which the module serves "
                "when started without --model (model.path)"
            )
        super().__init__(
            f"model refused: {str(path)!r}: {self.reason}; the store is unchanged: {where}"
        )


def seed_store(store: ModelStore, path: Path, options: RuntimeOptions) -> StoredVersion:
    """Install the model at ``path`` through the gate (load + self-test) and make it current.

    Raises:
        ModelRefusedError: the model was refused; the store is unchanged.
    """
    loaded, stored = install_tested(store, path, options)
    loaded.model.close()
    store.activate(stored)
    return stored


def install_tested(
    store: ModelStore, path: Path, options: RuntimeOptions, manifest: Manifest | None = None
) -> tuple[LoadedModel, StoredVersion]:
    """``path`` loaded, self-tested and installed (not activated) with ``manifest``
    (default: the one beside it, see :func:`configured_manifest`).

    The test runs on the staged copy, so what passed is byte for byte what is
    installed; a refusal leaves nothing behind.

    Raises:
        ModelRefusedError: not a model, will not load, fails its self-test, or
            another build of a name and version the store holds.
        ConfigError: the model keeps state per stream, and the configuration
            deals a stream's readings out among replicas.
        UpdateError: the store cannot be written (a full disk).
    """
    current = store.link("current")
    installing = manifest or configured_manifest(store, path, file_sha256(path))
    staged: list[Path] = []

    def test(version: StoredVersion) -> LoadedModel:
        staged.append(version.model_file)
        return admit(version.model_file, installing, options)

    try:
        loaded, stored = store.install_tested(path, installing, test)
    except StreamsDealtOutError:
        raise _dealt_out(installing.name, installing.version, options) from None
    except (ModelError, UpdateError) as exc:
        reason = str(exc)
        for copy in staged:  # the staged copy is gone: name the user's file instead
            reason = reason.replace(str(copy), str(path))
        raise ModelRefusedError(path, reason, current) from exc
    except OSError as exc:
        raise UpdateError(f"cannot install {path} into the store {store.root}: {exc}") from exc
    # It was loaded from the staging directory, renamed since into the version's own.
    return dataclasses.replace(loaded, path=stored.model_file), stored


def configured_manifest(store: ModelStore, path: Path, sha256: str) -> Manifest:
    """The manifest ``path`` is installed with: its own, with format, source and a version.

    Raises:
        ModelRefusedError: not a model file, or its manifest cannot be read.
    """
    try:
        fmt = detect_format(path)
        manifest = load_manifest(path)
    except ModelError as exc:
        raise ModelRefusedError(path, str(exc), store.link("current")) from exc
    manifest = dataclasses.replace(manifest, format=fmt, source=str(path.resolve()))
    if manifest.version == UNVERSIONED:
        # A file without a manifest names no version: another such file must not
        # be refused as "another build of <name> unversioned".
        installed = store.installed_sha256(manifest.name, UNVERSIONED)
        if installed is not None and installed != sha256:
            manifest = dataclasses.replace(manifest, version=f"{UNVERSIONED}-{sha256[:12]}")
    return manifest


def serve_from_store(
    store: ModelStore, model_path: str, options: RuntimeOptions
) -> tuple[LoadedModel, StoredVersion]:
    """The model to serve at start (the module docstring says which), loaded and tested.

    Raises:
        ConfigError: ``model_path`` names no file, or there is nothing to serve.
        ModelRefusedError: the ``model_path`` file was refused; the store is unchanged.
        UpdateError: nothing in the store passes its self-test.
    """
    for action in store.recover():
        log.warning("store repaired: %s", action)
    configured = Path(model_path) if model_path else None
    if configured is not None and not configured.is_file():
        # Even when the store would serve its own current: a wrong path is a mistake to report.
        raise ConfigError("model.path", str(configured), "an existing ONNX or TFLite model file")
    if configured is not None:
        given = _serve_configured(store, configured, options)
        if given is not None:
            return given
    current = store.link("current")
    if current is None:
        raise ConfigError(
            "model.path",
            model_path,
            f"a model file (--model), or a model installed under {store.root}/current",
        )
    failures: list[str] = []
    for candidate in (current, store.link("previous")):
        if candidate is None:
            continue
        try:
            loaded = admit(candidate.model_file, candidate.manifest(), options)
        except StreamsDealtOutError:  # the config's fault, not the model's: nothing else served
            raise _dealt_out(candidate.name, candidate.version, options) from None
        except (ModelError, UpdateError) as exc:
            failures.append(f"{candidate.name} {candidate.version}: {exc}")
            continue
        if candidate is not current:
            log.error(
                "current model failed at start (%s): serving previous %s %s",
                failures[0],
                candidate.name,
                candidate.version,
            )
            store.roll_back_to(candidate, failed=current)
        return loaded, candidate
    raise UpdateError(f"no model in the store passes its self-test: {'; '.join(failures)}")


def _serve_configured(
    store: ModelStore, configured: Path, options: RuntimeOptions
) -> tuple[LoadedModel, StoredVersion] | None:
    """``configured`` installed and made current, or None where the store's current stays."""
    sha256 = file_sha256(configured)
    manifest = configured_manifest(store, configured, sha256)
    # A file is known by its bytes and the name and version its manifest gives them.
    identity = (sha256, manifest.name, manifest.version)
    current = store.link("current")
    if current is not None:
        kept = _why_current_stays(store, current, identity)
        if kept is not None:
            log.info(
                "model.path %s %s: serving the store's current %s %s",
                configured,
                kept,
                current.name,
                current.version,
            )
            _remember(store, configured, identity)
            return None
    loaded, stored = install_tested(store, configured, options, manifest)
    # Asked for by name, so a version that failed here before is tried again.
    store.clear_failed(stored.name, stored.version)
    store.activate(stored)
    if current is None:
        log.info("installed %s into the store as %s %s", configured, stored.name, stored.version)
    else:
        # Watched on live readings like any update (the updater resumes the
        # probation), and rolled back to what served until now if it misbehaves.
        store.set_probation(stored)
        log.warning(
            "model.path %s is not the store's current %s %s: installed as %s %s, on probation "
            "(previous: %s %s)",
            configured,
            current.name,
            current.version,
            stored.name,
            stored.version,
            current.name,
            current.version,
        )
    _remember(store, configured, identity)
    return loaded, stored


def _why_current_stays(
    store: ModelStore, current: StoredVersion, identity: tuple[str, str, str]
) -> str | None:
    """Why a ``model.path`` file known as ``identity`` leaves ``current`` served (None: not)."""
    sha256, name, version = identity
    installed = store.installed_sha256(name, version)
    if (current.name, current.version) == (name, version) and installed == sha256:
        return "is the store's current"
    recorded = store.model_path_record()
    if recorded == identity:
        # The usual restart: model.path stays in the configuration while
        # updates move current on; they must survive the restart.
        return "is unchanged since it was installed"
    if recorded is None and installed == sha256:
        # A store from a release that did not record model.path: the file it
        # seeded the store with, before updates followed.
        return "is already in the store"
    return None


def _remember(store: ModelStore, configured: Path, identity: tuple[str, str, str]) -> None:
    try:
        store.record_model_path(configured.resolve(), *identity)
    except OSError as exc:  # only costs a re-check of the same file at the next start
        log.warning("could not record model.path in %s: %s", store.root, exc)


def _dealt_out(name: str, version: str, options: RuntimeOptions) -> ConfigError:
    return ConfigError(
        "topics.shared_by_topic",
        False,
        f"true to serve {name} {version}, which keeps windows or state per stream, "
        f"while {options.dealt_out}",
    )
