"""The interface every inference runtime implements, and how it describes inputs and outputs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[Any]
#: One dimension: a fixed size, or the symbolic name (or None) of a dynamic one.
Dim = int | str | None
#: What a runtime returns for one output: an array, or for ONNX sequence and map
#: types a list (a sequence; of dicts for ``seq(map(...))``) or a dict (a map).
Value = Array | list[Any] | dict[Any, Any]

TENSOR, SEQUENCE, MAP = "tensor", "sequence", "map"


@dataclass(frozen=True)
class TensorSpec:
    """Name, kind, element type and shape of one model input or output.

    ``kind`` is ``tensor`` for arrays; ONNX ``seq(...)`` and ``map(...)`` values
    are ``sequence`` and ``map`` (dtype object, shape ``()``), with the ONNX type
    in ``detail``.
    """

    name: str
    dtype: np.dtype[Any]
    shape: tuple[Dim, ...]
    kind: str = TENSOR
    detail: str = ""

    @property
    def rank(self) -> int:
        return len(self.shape)

    def is_dynamic(self, axis: int) -> bool:
        """True when dimension ``axis`` has no fixed size."""
        dim = self.shape[axis]
        return not isinstance(dim, int) or dim < 0

    def describe(self) -> str:
        if self.kind != TENSOR:
            return f"{self.name} {self.detail or self.kind}"
        dims = ", ".join(_dim_name(d) for d in self.shape)
        return f"{self.name} {type_name(self.dtype)}[{dims}]"


def type_name(dtype: np.dtype[Any]) -> str:
    """The dtype as users know it (``float32``, ``string``, ``bfloat16``)."""
    if dtype.kind in "OUS":
        return "string"
    return str(dtype.name)


def _dim_name(dim: Dim) -> str:
    if isinstance(dim, int):
        return str(dim) if dim >= 0 else "?"
    return dim or "?"


class Model(Protocol):
    """A loaded model, ready to run. Not thread-safe: one thread runs it."""

    #: ``onnx`` or ``tflite``.
    format: str
    #: The runtime and its version, e.g. ``onnxruntime 1.20.1``.
    runtime: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def run(self, feeds: Mapping[str, Array]) -> dict[str, Value]:
        """Run once; ``feeds`` holds every input, already of its dtype and shape."""
        ...

    def reset(self) -> None:
        """Forget state kept between runs (TFLite variables of streaming models)."""
        ...

    def close(self) -> None:
        """Release the runtime's resources."""
        ...


def is_float(dtype: np.dtype[Any]) -> bool:
    """numpy floats, and the ml_dtypes ones (bfloat16, float8_*) that numpy files as kind V."""
    return dtype.kind == "f" or (dtype.kind == "V" and dtype.name.startswith(("bfloat", "float")))


def float_view(value: Array) -> Array:
    """Low-precision floats (float16, bfloat16, float8) as float32, for arithmetic and JSON."""
    if is_float(value.dtype) and (value.dtype.kind == "V" or value.dtype.itemsize < 4):
        return value.astype(np.float32)
    return value
