"""What the module serves when it starts: the store's policy, before any update runs.

``--model`` seeds an empty store. Once the store has a ``current``, that is
what is served, so updates survive restarts. ``current`` must load and pass
its self-test, or ``previous`` is served instead (and ``current`` pointed
back at it).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from edgeinfer.errors import ConfigError, ModelError, StreamsDealtOutError, UpdateError
from edgeinfer.loaded import LoadedModel
from edgeinfer.manifest import load_manifest
from edgeinfer.runtimes import detect_format
from edgeinfer.serving.admission import RuntimeOptions, admit
from edgeinfer.updates.store import ModelStore, StoredVersion

log = logging.getLogger(__name__)


def seed_store(store: ModelStore, path: Path) -> StoredVersion:
    """Install the model at ``path`` (with the manifest beside it) and make it current."""
    try:
        fmt = detect_format(path)
        manifest = load_manifest(path)
    except ModelError as exc:
        raise ConfigError("model.path", str(path), f"an ONNX or TFLite model ({exc})") from exc
    manifest = dataclasses.replace(manifest, format=fmt, source=str(path.resolve()))
    try:
        stored = store.install(path, manifest)
    except UpdateError as exc:
        raise ConfigError("model.path", str(path), f"a model the store accepts ({exc})") from exc
    store.activate(stored)
    return stored


def serve_from_store(
    store: ModelStore, model_path: str, options: RuntimeOptions
) -> tuple[LoadedModel, StoredVersion]:
    """The model to serve at start: ``current`` if it passes its self-test, else ``previous``.

    Raises:
        ConfigError: ``model_path`` is wrong, or there is nothing to serve.
        UpdateError: nothing in the store passes its self-test.
    """
    for action in store.recover():
        log.warning("store repaired: %s", action)
    configured = Path(model_path) if model_path else None
    if configured is not None and not configured.is_file():
        # Even when the store would serve its own current: a wrong path is a mistake to report.
        raise ConfigError("model.path", str(configured), "an existing ONNX or TFLite model file")
    current = store.link("current")
    if current is None and configured is not None:
        current = seed_store(store, configured)
        log.info("installed %s into the store as %s %s", configured, current.name, current.version)
    elif current is not None and configured is not None:
        log.info(
            "model.path %s only seeds an empty store: serving the store's current %s %s",
            configured,
            current.name,
            current.version,
        )
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
            raise ConfigError(
                "topics.shared_by_topic",
                False,
                f"true to serve {candidate.name} {candidate.version}, which keeps windows or "
                f"state per stream, while {options.dealt_out}",
            ) from None
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
    if configured is not None:
        raise ConfigError(
            "model.path",
            str(configured),
            f"a model that loads and passes its self-test ({'; '.join(failures)})",
        )
    raise UpdateError(f"no model in the store passes its self-test: {'; '.join(failures)}")
