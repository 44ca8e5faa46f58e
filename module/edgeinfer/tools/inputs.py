"""Model inputs for the operator tools: read from a ``.npz`` and checked, or generated."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgeinfer.errors import ConfigError
from edgeinfer.runtimes.axes import infer_batch_axes
from edgeinfer.runtimes.base import Array, TensorSpec, is_float
from edgeinfer.serving.feeds import shape_for

#: Size given to a dynamic dimension other than the batch (a sequence length, say).
DYNAMIC_DIM = 16


def axes_of(specs: tuple[TensorSpec, ...]) -> Mapping[str, int | None]:
    """Each input's batch axis, as the module would find it from the signature."""
    return infer_batch_axes(specs, ()).inputs


def generate_inputs(
    specs: tuple[TensorSpec, ...],
    batch: int = 1,
    seed: int = 0,
    axes: Mapping[str, int | None] | None = None,
) -> dict[str, Array]:
    """Random inputs shaped by the signature: ``batch`` rows along each input's batch axis,
    other dynamic dimensions 16."""
    axes = axes if axes is not None else axes_of(specs)
    rng = np.random.default_rng(seed)
    feeds: dict[str, Array] = {}
    for spec in specs:
        dims = shape_for(spec, axes.get(spec.name), batch, DYNAMIC_DIM)
        kind = spec.dtype.kind
        if is_float(spec.dtype):
            feeds[spec.name] = rng.standard_normal(dims).astype(spec.dtype)
        elif kind in "iu":
            feeds[spec.name] = rng.integers(0, 8, dims).astype(spec.dtype)
        elif kind == "b":
            feeds[spec.name] = rng.integers(0, 2, dims).astype(bool)
        else:
            raise ConfigError("MODEL", spec.describe(), "inputs of numeric or boolean types")
    return feeds


def load_npz(
    path: Path,
    specs: tuple[TensorSpec, ...],
    flag: str,
    extra: tuple[str, ...] = (),
    axes: Mapping[str, int | None] | None = None,
) -> tuple[dict[str, Array], dict[str, Array]]:
    """Arrays for every input (samples along its batch axis), and the ``extra`` arrays asked for.

    A single-input model takes the one array whatever its name; otherwise
    arrays are matched to inputs by name. Shapes and dtypes are checked
    against the signature, and the error names what was expected.
    """
    axes = axes if axes is not None else axes_of(specs)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: np.asarray(data[key]) for key in data.files}
    except FileNotFoundError as exc:
        raise ConfigError(flag, str(path), "an existing .npz file") from exc
    except (OSError, ValueError) as exc:
        raise ConfigError(
            flag, str(path), f"a .npz file of arrays from numpy.savez ({exc})"
        ) from exc
    wanted_extra = {k: arrays.pop(k) for k in extra if k in arrays}
    arrays.pop("labels", None)  # an evaluation set's labels are no input
    missing_extra = [k for k in extra if k not in wanted_extra]
    if missing_extra:
        raise ConfigError(flag, str(path), f"arrays {missing_extra} besides the inputs")
    names = [s.name for s in specs]
    if len(specs) == 1 and len(arrays) == 1:
        arrays = {names[0]: next(iter(arrays.values()))}
    if sorted(arrays) != sorted(names):
        raise ConfigError(
            flag,
            str(path),
            f"arrays named after the model inputs {names} (it has {sorted(arrays)})",
        )
    feeds = {
        spec.name: _check(spec, arrays[spec.name], axes.get(spec.name), flag, path)
        for spec in specs
    }
    rows = {a.shape[axis] for n, a in feeds.items() if (axis := axes.get(n)) is not None}
    rows |= {len(a) for a in wanted_extra.values()}
    if len(rows) > 1:
        raise ConfigError(flag, str(path), "the same number of samples in every array")
    return feeds, wanted_extra


def _check(spec: TensorSpec, arr: Array, axis: int | None, flag: str, path: Path) -> Array:
    expected: list[Any] = list(spec.shape)
    if axis is not None:
        expected[axis] = "N"
    shown = "[" + ", ".join(_dim(d) for d in expected) + "]"
    ok = arr.ndim == len(expected) and all(
        not isinstance(e, int) or e < 0 or e == a for a, e in zip(arr.shape, expected, strict=True)
    )
    if not ok or (axis is not None and arr.shape[axis] == 0):
        raise ConfigError(
            flag,
            str(path),
            f"input {spec.name!r} shaped {shown} (N samples), got {list(arr.shape)}",
        )
    if arr.dtype.kind not in "biuf":
        raise ConfigError(flag, str(path), f"numbers for input {spec.name!r}, got {arr.dtype}")
    return arr.astype(spec.dtype, copy=False)


def _dim(dim: Any) -> str:
    if isinstance(dim, int):
        return str(dim) if dim >= 0 else "?"
    return "N" if dim == "N" else "?"


def take_rows(
    feeds: Mapping[str, Array], start: int, stop: int, axes: Mapping[str, int | None]
) -> dict[str, Array]:
    """Samples ``start:stop`` of every input (inputs without a batch axis as they are)."""
    return {
        name: arr if axes.get(name) is None else np.take(arr, range(start, stop), axis=axes[name])
        for name, arr in feeds.items()
    }


def as_reading(
    feeds: Mapping[str, Array], row: int = 0, axes: Mapping[str, int | None] | None = None
) -> dict[str, Any]:
    """One sample of ``feeds`` as a reading payload (``features`` when there is one input)."""
    axes = axes if axes is not None else {name: 0 for name in feeds}
    values = {
        name: (arr if axes.get(name) is None else np.take(arr, row, axis=axes[name])).tolist()
        for name, arr in feeds.items()
    }
    if len(values) == 1:
        return {"features": next(iter(values.values()))}
    return {"inputs": values}
