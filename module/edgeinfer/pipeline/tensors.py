"""One input's values made into the tensor the model takes: dtype cast and shape fit.

A cast never changes a value silently: NaN and infinity are refused before it
(unless allowed), and a value the target dtype cannot hold (``1e39`` for
float32, ``2147483648`` for int32, ``1.5`` for an integer) is refused, naming
the range. Integer ranges are compared exactly, not through float32.

A reading gives one sample (the input's shape without its batch axis) or
several along the batch axis, wherever that axis is; an input without a batch
axis (a scalar, a fixed shape) is given whole.
"""

from __future__ import annotations

import itertools
import math
import typing
from typing import Any

import numpy as np

from edgeinfer.errors import ReadingError
from edgeinfer.runtimes.base import Array, TensorSpec, is_float, type_name


def to_input(spec: TensorSpec, value: Any, allow_non_finite: bool = False) -> Array:
    """``value`` (nested lists, a scalar or an array) as an array of ``spec``'s dtype.

    A ReadingError names what is wrong: strings for numbers, a value the dtype
    cannot hold, NaN or infinity (unless allowed), a ragged array.
    """
    fast = _float_rows(spec, value)
    if fast is not None:
        return fast
    return cast(spec, as_value_array(spec, value), allow_non_finite)


def as_value_array(spec: TensorSpec, value: Any) -> Array:
    """``value`` (nested lists, a scalar or an array) as a numpy array of numbers or strings."""
    if isinstance(value, np.ndarray):
        arr = value
    else:
        try:
            arr = np.asarray(value)
        except ValueError as exc:  # ragged nesting
            raise ReadingError(
                "wrong_shape",
                f"input {spec.name!r} is a ragged array: expected "
                f"a rectangular array of shape {fmt_shape(spec.shape)}",
            ) from exc
    if arr.dtype.kind == "V" and is_float(spec.dtype) and arr.dtype.itemsize == spec.dtype.itemsize:
        # numpy stores bfloat16 and float8 in .npy as raw voids of their size.
        return arr.view(spec.dtype)
    if spec.dtype.kind in "OUS":
        if arr.dtype.kind != "U":
            raise ReadingError(
                "wrong_dtype", f"input {spec.name!r} holds {_kind_name(arr)}: expected strings"
            )
        return arr.astype(object)
    if arr.dtype.kind not in "biuf":
        raise ReadingError(
            "wrong_dtype",
            f"input {spec.name!r} holds {_kind_name(arr)}: "
            f"expected numbers for {type_name(spec.dtype)}",
        )
    return arr


def _float_rows(spec: TensorSpec, value: Any) -> Array | None:
    """The common JSON reading, a flat or two-level list of numbers for a float input,
    read straight into the input's dtype in one pass (twice as fast as numpy's
    nested-list conversion and a cast). None: not that case, or not a clean one."""
    if spec.dtype.kind != "f" or type(value) is not list or not value:
        return None
    try:
        if type(value[0]) is list:
            # map(len) runs in C: a Python loop over 100 rows would cost more than it saves.
            if len(set(map(len, value))) != 1:
                return None
            items: Any = itertools.chain.from_iterable(value)
            shape: tuple[int, ...] = (len(value), len(value[0]))
        else:
            items, shape = value, (len(value),)
        with np.errstate(over="ignore", invalid="ignore"):
            flat = np.fromiter(items, spec.dtype, math.prod(shape))
    except (TypeError, ValueError, OverflowError):
        return None  # strings, deeper nesting: the general path says what is wrong
    # NaN (fromiter reads null as NaN) or infinity (a value too large for the
    # dtype): the general path refuses it, naming which.
    return flat.reshape(shape) if np.isfinite(flat).all() else None


def cast(spec: TensorSpec, arr: Array, allow_non_finite: bool = False) -> Array:
    """``arr`` as ``spec.dtype``, or a ReadingError when a value would change."""
    target = spec.dtype
    if target.kind == "O":
        return arr
    if is_float(target) and arr.dtype.kind in "iufb":
        with np.errstate(over="ignore", invalid="ignore"):
            out = arr.astype(target, copy=False)
        if np.isfinite(out).all():
            return out  # one check covers NaN in the reading and overflow in the cast
        return _non_finite(spec, arr, out, allow_non_finite)
    if arr.dtype.kind == "f" and not allow_non_finite and not np.isfinite(arr).all():
        raise _not_finite(spec)
    if arr.dtype == target:
        return arr
    if target.kind in "iu":
        _check_integers(spec, arr)
    elif target.kind == "b" and arr.dtype.kind != "b":
        raise ReadingError(
            "wrong_dtype",
            f"input {spec.name!r} holds {arr.dtype.name}: expected booleans (true/false)",
        )
    return arr.astype(target, copy=False)


def _non_finite(spec: TensorSpec, arr: Array, out: Array, allow_non_finite: bool) -> Array:
    """The cast gave NaN or infinity: the reading's own (refused unless allowed) or overflow."""
    source_finite = np.isfinite(arr) if arr.dtype.kind == "f" else np.ones(arr.shape, bool)
    if not allow_non_finite and not source_finite.all():
        raise _not_finite(spec)
    if not np.array_equal(np.isfinite(out.astype(np.float64)), source_finite):
        top = _float_max(spec.dtype)
        raise ReadingError(
            "wrong_dtype",
            f"input {spec.name!r} holds values outside {type_name(spec.dtype)} range "
            f"[-{top}, {top}]",
        )
    return out


def _not_finite(spec: TensorSpec) -> ReadingError:
    return ReadingError(
        "not_finite", f"input {spec.name!r} holds NaN or infinity: expected finite numbers"
    )


def _float_max(dtype: np.dtype[Any]) -> str:
    if dtype.kind == "f":
        return str(np.finfo(typing.cast("np.dtype[np.floating[Any]]", dtype)).max)
    import ml_dtypes

    return str(ml_dtypes.finfo(dtype).max)  # type: ignore[no-untyped-call]


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


def fit_shape(spec: TensorSpec, arr: Array, axis: int | None) -> tuple[Array, int]:
    """``arr`` shaped as the input takes it, and how many rows (along ``axis``) it holds.

    ``axis`` None: the input is given whole (1 row). Otherwise a single sample
    gets the batch axis inserted, a full-rank array keeps its rows, and a flat
    array whose size fits the sample shape is reshaped.
    """
    if axis is None:
        if _matches(arr.shape, spec.shape):
            return arr, 1
        size = _static_size(spec.shape)
        if size is not None and arr.size == size:
            return arr.reshape(_ints(spec.shape)), 1
        raise _shape_error(spec, arr, spec.shape)
    sample = spec.shape[:axis] + spec.shape[axis + 1 :]
    if _matches(arr.shape, sample):
        arr = _with_axis(arr, axis)
    elif arr.ndim == spec.rank and _matches(arr.shape[:axis] + arr.shape[axis + 1 :], sample):
        pass
    else:
        arr = _reshape_flat(spec, arr, axis, sample)
    rows = arr.shape[axis]
    if rows == 0:
        raise _shape_error(spec, arr, sample)
    if not spec.is_dynamic(axis) and rows != spec.shape[axis]:
        count = "one sample" if spec.shape[axis] == 1 else f"{spec.shape[axis]} samples"
        raise ReadingError(
            "wrong_shape",
            f"input {spec.name!r} got {rows} rows: the model takes {count} "
            f"of shape {fmt_shape(sample)} at a time",
        )
    return arr, rows


def _reshape_flat(spec: TensorSpec, arr: Array, axis: int, sample: tuple[Any, ...]) -> Array:
    """A flat (or differently nested) array whose size is whole samples."""
    size = _static_size(sample)
    if size is None or size == 0 or arr.size % size:
        raise _shape_error(spec, arr, sample)
    rows = arr.size // size
    if rows != 1 and axis != 0:
        raise _shape_error(spec, arr, sample)  # rows along an inner axis must be nested
    flat = arr.reshape((rows, *_ints(sample)))
    return flat if axis == 0 else _with_axis(flat[0], axis)


def _with_axis(arr: Array, axis: int) -> Array:
    """``arr`` with a batch axis of one row inserted (np.expand_dims, without its overhead)."""
    return arr.reshape((*arr.shape[:axis], 1, *arr.shape[axis:]))


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


def _shape_error(spec: TensorSpec, arr: Array, sample: tuple[Any, ...]) -> ReadingError:
    size = _static_size(sample)
    count = f"{size} values shaped " if size is not None else "values shaped "
    return ReadingError(
        "wrong_shape",
        f"input {spec.name!r} got shape {list(arr.shape)} "
        f"({arr.size} values): expected {count}{fmt_shape(sample)}",
    )


def _kind_name(arr: Array) -> str:
    return {"U": "strings", "S": "bytes", "O": "mixed or null values", "b": "booleans"}.get(
        arr.dtype.kind, arr.dtype.name
    )
