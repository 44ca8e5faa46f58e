"""The one gate every model passes before it answers a reading.

``admit`` loads a model file with its manifest and runs its self-test; if
either fails, whatever was loaded is closed and an UpdateError says why. The
start-up path, desired states, a hand-edited ``current`` and the inbox all
go through it.

With ``model.threads = 0`` (the default) the runtime's thread count is chosen
here: a model that answers a reading in under :data:`PARALLEL_FROM_S` on one
thread keeps one, because waking worker threads for so little work costs more
CPU than it saves, and on a gateway the other cores are busy with the broker and
the network (benchmarks/bench_pipeline.py: 0.90x the pass-through with the
runtime's default, 0.98x with one thread). A slower model gets every core.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeinfer.config import Config
from edgeinfer.config.sections import ImageLimits
from edgeinfer.errors import ModelError, StreamsDealtOutError, UpdateError
from edgeinfer.manifest.document import Manifest, load_manifest
from edgeinfer.manifest.streams import WindowSpec
from edgeinfer.model.interpretation import interpret
from edgeinfer.model.loaded import LoadedModel, load
from edgeinfer.model.streamplan import StreamPlan, plan_streams
from edgeinfer.runtimes.axes import BatchAxes
from edgeinfer.runtimes.base import Array, Model
from edgeinfer.serving.probe import feed_rows, verify_axes
from edgeinfer.serving.selftest import run_self_test, test_feeds
from edgeinfer.topics import dealt_out
from edgeinfer.vision.preprocess import Preprocessor

log = logging.getLogger(__name__)

#: A reading slower than this on one thread is worth the runtime's worker threads.
PARALLEL_FROM_S = 0.001
#: The pixel limit of a test image: pipeline.max_image_pixels' default.
TEST_IMAGE_MAX_PIXELS = ImageLimits().max_pixels


@dataclass(frozen=True)
class RuntimeOptions:
    """How models are loaded and tested, built from the configuration by :meth:`from_config`
    (no defaults here: the configuration's are the only ones)."""

    threads: int  # model.threads
    providers: tuple[str, ...]  # model.providers
    self_test_runs: int  # updates.self_test_runs
    #: ``[streams]`` keys that override the manifest's window (``StreamsConfig.window_overrides``).
    window_overrides: tuple[tuple[str, Any], ...]
    #: Why a stream's readings may be split among replicas ("" when they are not):
    #: a model with windows or per-stream state is refused then.
    dealt_out: str

    @classmethod
    def from_config(cls, config: Config) -> RuntimeOptions:
        """``[model]``, ``[updates]``, ``[streams]`` and the input topics' sharing."""
        return cls(
            threads=config.model.threads,
            providers=tuple(config.model.providers),
            self_test_runs=config.updates.self_test_runs,
            window_overrides=tuple(config.streams.window_overrides().items()),
            dealt_out=dealt_out(config.topics.inputs, config.topics.shared_by_topic),
        )


def admit(path: Path, manifest: Manifest | None, options: RuntimeOptions) -> LoadedModel:
    """Load ``path``, pass it through its self-test, settle its batch axes; the caller owns it.

    Raises:
        UpdateError: the model will not load, or fails its self-test; nothing
            stays loaded.
    """
    manifest = _with_window_overrides(
        manifest if manifest is not None else _manifest_of(path), dict(options.window_overrides)
    )
    loaded = _load(path, manifest, options.threads or 1, options.providers)
    if options.threads == 0:
        loaded = _every_core_if_slow(loaded, options.providers)
    try:
        spec = dict(loaded.self_test)
        feeds = test_feeds(loaded.model, spec.get("inputs"), loaded.batch_axes, _images(loaded))
        report = run_self_test(
            loaded.model,
            spec,
            options.self_test_runs,
            loaded.batch_axes,
            feeds,
            lambda outputs: interpret(loaded, outputs).labels,
        )
        axes = verify_axes(loaded.model, loaded.batch_axes, feeds)
        plan = _plan(loaded, axes, path)
        if plan is not None and options.dealt_out:
            raise StreamsDealtOutError(
                f"the model keeps windows or state per stream, but {options.dealt_out}"
            )
        # The test runs must not leak into live answers (a streaming model's state).
        loaded.model.reset()
    except BaseException:
        loaded.model.close()
        raise
    rows = max(1, feed_rows(feeds, axes))
    return dataclasses.replace(
        loaded, axes=axes, row_seconds=report.median_ms / 1000 / rows, streams=plan
    )


def _images(loaded: LoadedModel) -> tuple[Preprocessor | None, int]:
    """What the decoder of a test image needs: the model's preprocessor, and a pixel limit
    (the test image comes with the signed manifest: the default limit of live readings)."""
    preprocessor = loaded.vision.preprocessor if loaded.vision is not None else None
    return preprocessor, TEST_IMAGE_MAX_PIXELS


def _plan(loaded: LoadedModel, axes: BatchAxes, path: Path) -> StreamPlan | None:
    manifest = loaded.manifest
    try:
        return plan_streams(loaded.model, axes, manifest.window, manifest.state, path.parent)
    except ModelError as exc:
        raise UpdateError(f"the model cannot serve streams: {exc}") from exc


def _manifest_of(path: Path) -> Manifest:
    try:
        return load_manifest(path)
    except ModelError as exc:
        raise UpdateError(f"the model will not load: {exc}") from exc


def _with_window_overrides(manifest: Manifest, overrides: dict[str, Any]) -> Manifest:
    """``manifest`` with ``[streams]``' window keys applied (a size alone declares a window)."""
    if not any(overrides.values()):
        return manifest
    try:
        if manifest.window is None:
            if not overrides.get("size"):
                return manifest  # nothing to override
            window = WindowSpec(
                size=overrides["size"], hop=overrides.get("hop") or overrides["size"]
            )
            window = window.with_overrides(**overrides)
        else:
            window = manifest.window.with_overrides(**overrides)
    except ModelError as exc:
        where = "the manifest's window with [streams] overrides" if manifest.window else "[streams]"
        raise UpdateError(f"the model cannot serve streams ({where}): {exc}") from exc
    return dataclasses.replace(manifest, window=window)


def _every_core_if_slow(loaded: LoadedModel, providers: tuple[str, ...]) -> LoadedModel:
    """``loaded`` (on one thread), or the same model again on the runtime's default threads
    when one reading takes :data:`PARALLEL_FROM_S` or more."""
    try:
        reading = dict(loaded.self_test).get("inputs")
        feeds = test_feeds(loaded.model, reading, loaded.batch_axes, _images(loaded))
        seconds = _seconds_a_run(loaded.model, feeds)
    except BaseException:
        loaded.model.close()
        raise
    if seconds < PARALLEL_FROM_S:
        return loaded
    loaded.model.close()
    log.debug("%s takes %.1f ms a reading on one thread: every core", loaded.path, seconds * 1e3)
    return _load(loaded.path, loaded.manifest, 0, providers)


def _load(
    path: Path, manifest: Manifest | None, threads: int, providers: tuple[str, ...]
) -> LoadedModel:
    try:
        return load(path, manifest, threads, providers)
    except (ModelError, OSError) as exc:
        raise UpdateError(f"the model will not load: {exc}") from exc


def _seconds_a_run(model: Model, feeds: dict[str, Array]) -> float:
    """The fastest of three runs of the test reading, after a warm-up (errors: the self-test's)."""
    try:
        model.run(feeds)
        timings = []
        for _ in range(3):
            started = time.perf_counter()
            model.run(feeds)
            timings.append(time.perf_counter() - started)
    except ModelError:
        return 0.0  # the self-test reports it
    return min(timings)
