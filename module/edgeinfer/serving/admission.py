"""The one gate every model passes before it answers a reading.

``admit`` loads a model file with its manifest and runs its self-test; if
either fails, whatever was loaded is closed and an UpdateError says why. The
start-up path, desired states, a hand-edited ``current`` and the inbox all
go through it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from edgeinfer.errors import ModelError, UpdateError
from edgeinfer.loaded import LoadedModel, load
from edgeinfer.manifest import Manifest
from edgeinfer.serving.probe import feed_rows, verify_axes
from edgeinfer.serving.selftest import run_self_test, test_feeds


@dataclass(frozen=True)
class RuntimeOptions:
    """How models are loaded and tested (from ``[model]`` and ``[updates]``)."""

    threads: int = 0
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    self_test_runs: int = 20


def admit(path: Path, manifest: Manifest | None, options: RuntimeOptions) -> LoadedModel:
    """Load ``path``, pass it through its self-test, settle its batch axes; the caller owns it.

    Raises:
        UpdateError: the model will not load, or fails its self-test; nothing
            stays loaded.
    """
    try:
        loaded = load(path, manifest, options.threads, options.providers)
    except (ModelError, OSError) as exc:
        raise UpdateError(f"the model will not load: {exc}") from exc
    try:
        spec = dict(loaded.self_test)
        feeds = test_feeds(loaded.model, spec.get("inputs"), loaded.batch_axes)
        report = run_self_test(
            loaded.model, spec, options.self_test_runs, loaded.batch_axes, feeds
        )
        axes = verify_axes(loaded.model, loaded.batch_axes, feeds)
        # The test runs must not leak into live answers (a streaming model's state).
        loaded.model.reset()
    except BaseException:
        loaded.model.close()
        raise
    rows = max(1, feed_rows(feeds, axes))
    return dataclasses.replace(loaded, axes=axes, row_seconds=report.median_ms / 1000 / rows)
