"""One input's values made into the tensor the model takes: dtype cast and shape fit.

A cast never changes a value silently: NaN and infinity are refused before it
(unless allowed), and a value the target dtype cannot hold (``1e39`` for
float32, ``2147483648`` for int32, ``1.5`` for an integer) is refused, naming
the range. Integer ranges are compared exactly, not through float32.
"""

from __future__ import annotations

import math
import typing
from typing import Any

import numpy as np

from edgeinfer.errors import ReadingError
from edgeinfer.runtimes.base import Array, TensorSpec


def as_numeric_array(spec: TensorSpec, value: Any) -> Array:
    """``value`` (nested lists, a scalar or an array) as a numeric numpy array."""
    if isinstance(value, np.ndarray):
        arr = value
    else:
        try:
            arr = np.asarray(value)
        except ValueError as exc:  # ragged nesting
            raise ReadingError(
                "wrong_shape",
                f"input {spec.name!r} is a ragged array: expected "
                f"a rectangular array of shape {fmt_shape(spec.sample_shape)}",
            ) from exc
    if arr.dtype.kind not in "biuf":
        raise ReadingError(
            "wrong_dtype",
            f"input {spec.name!r} holds {_kind_name(arr)}: expected numbers for {spec.dtype.name}",
        )
    return arr


def cast(spec: TensorSpec, arr: Array, allow_non_finite: bool = False) -> Array:
    """``arr`` as ``spec.dtype``, or a ReadingError when a value would change."""
    target = spec.dtype
    if arr.dtype.kind == "f" and not allow_non_finite and not np.isfinite(arr).all():
        raise ReadingError(
            "not_finite", f"input {spec.name!r} holds NaN or infinity: expected finite numbers"
        )
    if arr.dtype == target:
        return arr
    if target.kind in "iu":
        _check_integers(spec, arr)
    elif target.kind == "b" and arr.dtype.kind != "b":
        raise ReadingError(
            "wrong_dtype",
            f"input {spec.name!r} holds {arr.dtype.name}: expected booleans (true/false)",
        )
    with np.errstate(over="ignore", invalid="ignore"):
        out = arr.astype(target, copy=False)
    # Overflow shows as infinity where the source was finite.
    if (
        target.kind == "f"
        and arr.dtype.kind in "iuf"
        and arr.size
        and not np.array_equal(np.isfinite(out), np.isfinite(arr))
    ):
        top = str(np.finfo(typing.cast("np.dtype[np.floating[Any]]", target)).max)
        raise ReadingError(
            "wrong_dtype",
            f"input {spec.name!r} holds values outside {target.name} range [-{top}, {top}]",
        )
    return out


def _check_integers(spec: TensorSpec, arr: Array) -> None:
    target = spec.dtype
    info = np.iinfo(typing.cast("np.dtype[np.integer[Any]]", target))
    if not arr.size:
        return
    if arr.dtype.kind == "f":
        wide = arr.astype(np.float64)  # exact for float16/32/64
        if not np.equal(np.mod(wide, 1), 0).all():
            raise ReadingError(
                "wrong_dtype",
                f"input {spec.name!r} holds non-integer values: "
                f"expected integers for {target.name}",
            )
        # Bounds as exact floats: info.max + 1 is a power of two, info.min is one too.
        low, high_exclusive = float(info.min), float(info.max + 1)
        inside = bool(wide.min() >= low and wide.max() < high_exclusive)
    elif arr.dtype.kind in "iu":
        inside = int(arr.min()) >= info.min and int(arr.max()) <= info.max
    else:
        inside = True  # booleans
    if not inside:
        raise ReadingError(
            "wrong_dtype",
            f"input {spec.name!r} holds values outside {target.name} range "
            f"[{info.min}, {info.max}]",
        )


def fit_shape(spec: TensorSpec, arr: Array) -> Array:
    """Reshape ``arr`` to ``[rows, *sample_shape]`` or raise naming the expected shape."""
    sample = spec.sample_shape
    if spec.batch_dim == "none":
        if _matches(arr.shape, sample):
            return arr[np.newaxis]
        if _static_size(sample) == arr.size:
            return arr.reshape((1, *_ints(sample)))
        raise _shape_error(spec, arr)
    if _matches(arr.shape, sample):
        arr = arr[np.newaxis]
    elif arr.ndim == len(sample) + 1 and _matches(arr.shape[1:], sample):
        pass
    else:
        size = _static_size(sample)
        if size is None or size == 0 or arr.size % size:
            raise _shape_error(spec, arr)
        arr = arr.reshape((arr.size // size, *_ints(sample)))
    if len(arr) == 0:
        raise _shape_error(spec, arr)
    if spec.batch_dim == "fixed" and len(arr) != 1:
        raise ReadingError(
            "wrong_shape",
            f"input {spec.name!r} got {len(arr)} rows: the model "
            f"takes one sample of shape {fmt_shape(sample)} at a time",
        )
    return arr


def fmt_shape(shape: tuple[Any, ...]) -> str:
    """``[100, 6]``; dynamic dimensions as ``?``."""
    return "[" + ", ".join(str(d) if isinstance(d, int) and d >= 0 else "?" for d in shape) + "]"


def _matches(shape: tuple[int, ...], expected: tuple[Any, ...]) -> bool:
    return len(shape) == len(expected) and all(
        not isinstance(e, int) or e < 0 or e == s for s, e in zip(shape, expected, strict=True)
    )


def _ints(shape: tuple[Any, ...]) -> tuple[int, ...]:
    """A shape already known to be static (``_static_size`` returned a size)."""
    return tuple(int(d) for d in shape)


def _static_size(shape: tuple[Any, ...]) -> int | None:
    if all(isinstance(d, int) and d >= 0 for d in shape):
        return int(math.prod(shape))
    return None


def _shape_error(spec: TensorSpec, arr: Array) -> ReadingError:
    size = _static_size(spec.sample_shape)
    count = f"{size} values shaped " if size is not None else "values shaped "
    return ReadingError(
        "wrong_shape",
        f"input {spec.name!r} got shape {list(arr.shape)} "
        f"({arr.size} values): expected {count}{fmt_shape(spec.sample_shape)}",
    )


def _kind_name(arr: Array) -> str:
    return {"U": "strings", "S": "bytes", "O": "mixed or null values", "b": "booleans"}.get(
        arr.dtype.kind, arr.dtype.name
    )
