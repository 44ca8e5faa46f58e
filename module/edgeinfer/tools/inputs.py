"""Model inputs for the operator tools: read from a ``.npz`` and checked, or generated."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeinfer.errors import ConfigError
from edgeinfer.runtimes.base import Array, TensorSpec

#: Size given to a dynamic dimension other than the batch (a sequence length, say).
DYNAMIC_DIM = 16


def generate_inputs(
    specs: tuple[TensorSpec, ...], batch: int = 1, seed: int = 0
) -> dict[str, Array]:
    """Inputs shaped and typed by the signature: batch dim ``batch``, other dynamic dims 16."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, Array] = {}
    for spec in specs:
        dims = [d if isinstance(d, int) and d > 0 else DYNAMIC_DIM for d in spec.shape]
        if spec.batch_dim != "none":
            dims[0] = batch if spec.batch_dim == "dynamic" else 1
        kind = spec.dtype.kind
        if kind == "f":
            feeds[spec.name] = rng.standard_normal(dims).astype(spec.dtype)
        elif kind in "iu":
            feeds[spec.name] = rng.integers(0, 8, dims).astype(spec.dtype)
        elif kind == "b":
            feeds[spec.name] = rng.integers(0, 2, dims).astype(bool)
        else:
            raise ConfigError("MODEL", spec.describe(), "inputs of numeric or boolean types")
    return feeds


def load_npz(
    path: Path, specs: tuple[TensorSpec, ...], flag: str, extra: tuple[str, ...] = ()
) -> tuple[dict[str, Array], dict[str, Array]]:
    """Arrays for every input (rows on the first axis), and the ``extra`` arrays asked for.

    A single-input model takes the one array whatever its name; otherwise
    arrays are matched to inputs by name. Shapes and dtypes are checked
    against the signature, and the error names what was expected.
    """
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
    feeds = {spec.name: _check(spec, arrays[spec.name], flag, path) for spec in specs}
    rows = {len(a) for a in feeds.values()} | {len(a) for a in wanted_extra.values()}
    if len(rows) != 1:
        raise ConfigError(flag, str(path), "the same number of rows in every array")
    return feeds, wanted_extra


def _check(spec: TensorSpec, arr: Array, flag: str, path: Path) -> Array:
    expected: list[Any] = ["N", *spec.sample_shape]
    shown = "[" + ", ".join(_dim(d) for d in expected) + "]"
    ok = (
        arr.ndim == len(expected)
        and len(arr) > 0
        and all(
            not isinstance(e, int) or e < 0 or e == a
            for a, e in zip(arr.shape[1:], expected[1:], strict=True)
        )
    )
    if not ok:
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


def as_reading(feeds: dict[str, Array], row: int = 0) -> dict[str, Any]:
    """One row of ``feeds`` as a reading payload (``features`` when there is one input)."""
    values = {name: np.asarray(arr[row]).tolist() for name, arr in feeds.items()}
    if len(values) == 1:
        return {"features": next(iter(values.values()))}
    return {"inputs": values}
