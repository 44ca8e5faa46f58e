"""Checking the batch axes on the model itself: one reading, then the same reading twice.

The signature suggests the batch axes (:mod:`edgeinfer.runtimes.axes`); a run
on a batch of two settles them. Each output must grow along exactly one axis
(the expected one, or else the only one that doubled), and the first half of
the batch must give what the reading alone gave: a model whose answers depend
on its batch-mates is not batched. Readings that cannot share a run are run one
at a time, correctly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from edgeinfer.errors import ModelError
from edgeinfer.pipeline.outputs import split_rows
from edgeinfer.runtimes.axes import BatchAxes
from edgeinfer.runtimes.base import Array, Model, Value, float_view

RTOL, ATOL = 1e-4, 1e-5


def verify_axes(model: Model, axes: BatchAxes, feeds: Mapping[str, Array]) -> BatchAxes:
    """``axes`` with the outputs' axes the model really uses, or not batchable and why."""
    if not axes.batchable:
        return axes
    try:
        one = model.run(feeds)
        doubled = {
            name: arr
            if axes.inputs.get(name) is None
            else np.concatenate([arr, arr], axis=axes.inputs[name])
            for name, arr in feeds.items()
        }
        two = model.run(doubled)
    except ModelError as exc:
        return axes.with_outputs(axes.outputs, False, f"it fails on a batch of two: {exc}")
    found: dict[str, int | None] = {}
    for name, alone in one.items():
        axis = _grown_axis(alone, two[name], axes.outputs.get(name))
        if axis is None:
            return axes.with_outputs(
                axes.outputs, False, f"output {name!r} does not grow along one axis with the batch"
            )
        found[name] = axis
    rows = feed_rows(feeds, axes)
    halves = split_rows(two, found, [rows, rows])
    for name, alone in one.items():
        if not _close(alone, halves[0][name]):
            return axes.with_outputs(
                found, False, f"output {name!r} changes when the reading has a batch-mate"
            )
    return axes.with_outputs(found, True, axes.why)


def _grown_axis(alone: Value, two: Value, expected: int | None) -> int | None:
    if isinstance(alone, list) and isinstance(two, list):
        return 0 if len(two) == 2 * len(alone) else None
    if not isinstance(alone, np.ndarray) or not isinstance(two, np.ndarray):
        return None
    if alone.ndim != two.ndim:
        return None
    grown = [
        n
        for n in range(alone.ndim)
        if two.shape[n] == 2 * alone.shape[n]
        and all(two.shape[m] == alone.shape[m] for m in range(alone.ndim) if m != n)
    ]
    if expected in grown:
        return expected
    return grown[0] if len(grown) == 1 else None


def feed_rows(feeds: Mapping[str, Array], axes: BatchAxes) -> int:
    """How many rows ``feeds`` hold along their batch axes (1 when none has one)."""
    for name, arr in feeds.items():
        axis = axes.inputs.get(name)
        if axis is not None:
            return int(arr.shape[axis])
    return 1


def _close(a: Any, b: Any) -> bool:
    """Equal, floats within the tolerance (also inside sequences and maps)."""
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        if a.shape != b.shape:
            return False
        x, y = float_view(a), float_view(b)
        if x.dtype.kind in "fc" and y.dtype.kind in "fc":
            return bool(np.allclose(x, y, rtol=RTOL, atol=ATOL, equal_nan=True))
        return bool(np.array_equal(x, y))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, float | np.floating) and isinstance(b, float | np.floating):
        return abs(float(a) - float(b)) <= ATOL + RTOL * abs(float(b))
    return bool(a == b)
