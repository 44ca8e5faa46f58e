"""Decode stage: a reading's bytes into model-ready arrays, or a ReadingError.

Accepted payloads (see SPEC.md, "Readings"):

* ``{"features": [...], "id": ..., "ts": ...}`` for single-input models,
* ``{"inputs": {"<name>": [...] | scalar, ...}}`` for models with several inputs,
* a bare JSON array, the same as ``{"features": [...]}``,
* ``.npy`` bytes (magic ``\\x93NUMPY``), loaded without pickle.

Each array is cast to its input's dtype; one whose size matches the sample
shape is reshaped, and a missing batch dimension is added. A reading may carry
several rows (a leading batch dimension) when the model's batch is dynamic.
"""

from __future__ import annotations

import io
import math
import typing
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from edgeinfer.errors import ReadingError
from edgeinfer.runtimes.base import Array, TensorSpec

NPY_MAGIC = b"\x93NUMPY"


@dataclass(frozen=True)
class Reading:
    """A decoded reading: one array per model input, each with the batch dimension."""

    feeds: dict[str, Array]
    rows: int
    id: Any = None
    ts: Any = None


class Decoder:
    """Turns payloads into :class:`Reading` objects for one model's inputs."""

    def __init__(
        self, inputs: tuple[TensorSpec, ...], max_bytes: int, allow_non_finite: bool = False
    ) -> None:
        self._inputs = inputs
        self._by_name = {spec.name: spec for spec in inputs}
        self._max_bytes = max_bytes
        self._allow_non_finite = allow_non_finite

    def decode(self, payload: bytes) -> Reading:
        """Decode one payload; raises :class:`ReadingError` naming what was expected.

        The error carries the reading's ``id`` whenever the payload is a JSON
        object that has one, so the error report can name the reading.
        """
        if len(payload) > self._max_bytes:
            raise ReadingError(
                "oversize",
                f"payload is {len(payload)} bytes, expected at most "
                f"{self._max_bytes} (pipeline.max_payload_bytes)",
                _peek_id(payload),
            )
        if payload.startswith(NPY_MAGIC):
            return self._from_arrays({self._single_input().name: _load_npy(payload)})
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            if "UTF-8" in str(exc):
                raise ReadingError(
                    "bad_encoding",
                    "payload is not valid UTF-8: expected a UTF-8 JSON document or .npy bytes",
                ) from exc
            raise ReadingError(
                "bad_json",
                f"payload is not JSON ({exc}): expected a JSON object, a JSON array or .npy bytes",
            ) from exc
        if isinstance(doc, list):
            return self._from_arrays({self._single_input().name: doc})
        if not isinstance(doc, dict):
            raise ReadingError(
                "bad_payload",
                f"payload is a JSON {type(doc).__name__}: expected "
                'an object with "features" or "inputs", or an array',
            )
        try:
            return self._from_arrays(self._arrays_of(doc), doc.get("id"), doc.get("ts"))
        except ReadingError as exc:
            exc.rid = doc.get("id")
            raise

    def _arrays_of(self, doc: dict[str, Any]) -> dict[str, Any]:
        if "features" in doc and "inputs" in doc:
            raise ReadingError(
                "bad_payload", 'payload has both "features" and "inputs": expected one of them'
            )
        if "features" in doc:
            return {self._single_input().name: doc["features"]}
        if "inputs" not in doc:
            raise ReadingError(
                "bad_payload",
                'payload has neither "features" nor "inputs": '
                f"expected one of them, for inputs {self._names()}",
            )
        arrays = doc["inputs"]
        if not isinstance(arrays, dict):
            raise ReadingError(
                "bad_payload",
                '"inputs" must be an object mapping input '
                f"names to arrays, expected keys {self._names()}",
            )
        return arrays

    def _names(self) -> list[str]:
        return [spec.name for spec in self._inputs]

    def _single_input(self) -> TensorSpec:
        if len(self._inputs) != 1:
            raise ReadingError(
                "bad_payload",
                f"this model has {len(self._inputs)} inputs "
                f'{self._names()}: expected {{"inputs": {{name: array}}}}',
            )
        return self._inputs[0]

    def _from_arrays(self, values: dict[str, Any], rid: Any = None, ts: Any = None) -> Reading:
        missing = [name for name in self._by_name if name not in values]
        unknown = [name for name in values if name not in self._by_name]
        if missing or unknown:
            raise ReadingError(
                "bad_payload",
                f"inputs {sorted(values)} do not match the model: expected exactly {self._names()}",
            )
        feeds = {
            name: self._to_tensor(self._by_name[name], value) for name, value in values.items()
        }
        rows = {name: len(arr) for name, arr in feeds.items()}
        if len(set(rows.values())) != 1:
            raise ReadingError(
                "wrong_shape",
                f"inputs carry different numbers of rows {rows}: "
                "expected the same batch size for every input",
            )
        return Reading(feeds, next(iter(rows.values())), rid, ts)

    def _to_tensor(self, spec: TensorSpec, value: Any) -> Array:
        arr = _as_numeric_array(spec, value)
        if arr.dtype.kind == "f" and not self._allow_non_finite and not np.isfinite(arr).all():
            raise ReadingError(
                "not_finite", f"input {spec.name!r} holds NaN or infinity: expected finite numbers"
            )
        arr = _cast(spec, arr)
        return _fit_shape(spec, arr)


def _peek_id(payload: bytes) -> object:
    """The ``id`` of an oversize JSON reading, if it is not too large to look at."""
    if len(payload) > 1_048_576 or payload.lstrip()[:1] != b"{":
        return None
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return doc.get("id") if isinstance(doc, dict) else None


def _load_npy(payload: bytes) -> Array:
    try:
        arr = np.load(io.BytesIO(payload), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ReadingError(
            "bad_npy",
            f"cannot read .npy payload ({exc}): expected a "
            "numeric array saved with numpy.save, without pickle",
        ) from exc
    return np.asarray(arr)


def _as_numeric_array(spec: TensorSpec, value: Any) -> Array:
    if isinstance(value, np.ndarray):
        arr = value
    else:
        try:
            arr = np.asarray(value)
        except ValueError as exc:  # ragged nesting
            raise ReadingError(
                "wrong_shape",
                f"input {spec.name!r} is a ragged array: expected "
                f"a rectangular array of shape {_fmt(spec.sample_shape)}",
            ) from exc
    if arr.dtype.kind not in "biuf":
        raise ReadingError(
            "wrong_dtype",
            f"input {spec.name!r} holds {_kind_name(arr)}: expected numbers for {spec.dtype.name}",
        )
    return arr


def _cast(spec: TensorSpec, arr: Array) -> Array:
    target = spec.dtype
    if arr.dtype == target:
        return arr
    if target.kind in "iu":
        if arr.dtype.kind == "f" and not (
            np.isfinite(arr).all() and np.equal(np.mod(arr, 1), 0).all()
        ):
            raise ReadingError(
                "wrong_dtype",
                f"input {spec.name!r} holds non-integer values: "
                f"expected integers for {target.name}",
            )
        info = np.iinfo(typing.cast("np.dtype[np.integer[Any]]", target))
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            raise ReadingError(
                "wrong_dtype",
                f"input {spec.name!r} holds values outside "
                f"{target.name} range [{info.min}, {info.max}]",
            )
    elif target.kind == "b" and arr.dtype.kind != "b":
        raise ReadingError(
            "wrong_dtype",
            f"input {spec.name!r} holds {arr.dtype.name}: expected booleans (true/false)",
        )
    return arr.astype(target, copy=False)


def _fit_shape(spec: TensorSpec, arr: Array) -> Array:
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
            f"takes one sample of shape {_fmt(sample)} at a time",
        )
    return arr


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
        f"({arr.size} values): expected {count}{_fmt(spec.sample_shape)}",
    )


def _fmt(shape: tuple[Any, ...]) -> str:
    return "[" + ", ".join(str(d) if isinstance(d, int) and d >= 0 else "?" for d in shape) + "]"


def _kind_name(arr: Array) -> str:
    return {"U": "strings", "S": "bytes", "O": "mixed or null values", "b": "booleans"}.get(
        arr.dtype.kind, arr.dtype.name
    )
