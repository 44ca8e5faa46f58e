"""What a model returned, split by reading, made JSON-ready, and read as a label and a score.

Outputs come as arrays (any numeric dtype, bool, string, float16, bfloat16),
lists (ONNX sequences; a ZipMap's ``seq(map(...))`` is a list of one dict per
row) or dicts (maps). Each reading gets its rows, along each output's own
batch axis; a map stays a map with its keys.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeinfer.runtimes.base import Value, float_view


def split_rows(
    outputs: Mapping[str, Value], axes: Mapping[str, int | None], counts: Sequence[int]
) -> list[dict[str, Value]]:
    """One dict of outputs per reading of a batch that gave ``counts`` rows each."""
    if len(counts) == 1:
        return [dict(outputs)]
    per_reading: list[dict[str, Value]] = [{} for _ in counts]
    for name, value in outputs.items():
        axis = axes.get(name)
        start = 0
        for n, count in enumerate(counts):
            end = start + count
            if isinstance(value, list):
                per_reading[n][name] = value[start:end]
            elif axis is None:
                raise ValueError(f"output {name!r} has no batch axis to split by reading")
            else:
                index = (slice(None),) * axis + (slice(start, end),)
                per_reading[n][name] = value[index]
            start = end
    return per_reading


def rows_of(value: Value, axis: int | None) -> int | None:
    """How many rows ``value`` holds along its batch axis (None when it has none)."""
    if isinstance(value, list):
        return len(value)
    if axis is None or not isinstance(value, np.ndarray) or value.ndim <= axis:
        return None
    return int(value.shape[axis])


def non_finite_rows(outputs: Mapping[str, Value], axes: Mapping[str, int | None], rows: int) -> int:
    """How many rows have a NaN or infinity in a float output."""
    bad: npt.NDArray[np.bool_] = np.zeros(rows, dtype=bool)
    for name, value in outputs.items():
        if not isinstance(value, np.ndarray):
            continue
        arr = float_view(value)
        if arr.dtype.kind not in "fc":
            continue
        axis = axes.get(name)
        if axis is None or arr.ndim <= axis or arr.shape[axis] != rows:
            bad |= not bool(np.isfinite(arr).all())
            continue
        moved = np.moveaxis(arr, axis, 0).reshape(rows, -1)
        bad |= ~np.isfinite(moved).all(axis=1)
    return int(bad.sum())


def json_ready(value: Value) -> Any:
    """An output as orjson can write it: numbers, strings, lists, maps with their keys."""
    if isinstance(value, np.ndarray):
        arr = float_view(value)
        if arr.dtype.kind in "OUS" or arr.ndim == 0:
            return arr.tolist()  # a scalar stays a scalar (ascontiguousarray makes it 1-d)
        return np.ascontiguousarray(arr)
    if isinstance(value, dict):
        return {_key(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_ready(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _key(key: Any) -> Any:
    return key.item() if isinstance(key, np.generic) else key


__all__ = ["json_ready", "non_finite_rows", "rows_of", "split_rows"]
