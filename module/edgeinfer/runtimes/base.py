"""The interface every inference runtime implements, and the tensor description it reports."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.generic]
#: One dimension: a fixed size, or the symbolic name (or None) of a dynamic one.
Dim = int | str | None


@dataclass(frozen=True)
class TensorSpec:
    """Name, element type and shape of one model input or output."""

    name: str
    dtype: np.dtype[np.generic]
    shape: tuple[Dim, ...]

    @property
    def batch_dim(self) -> str:
        """How the leading dimension behaves: ``dynamic``, ``fixed`` (size 1) or ``none``."""
        if len(self.shape) < 2:
            return "none"
        first = self.shape[0]
        if not isinstance(first, int) or first < 0:
            return "dynamic"
        return "fixed" if first == 1 else "none"

    @property
    def sample_shape(self) -> tuple[Dim, ...]:
        """The shape of one sample: without the batch dimension, if there is one."""
        return self.shape[1:] if self.batch_dim != "none" else self.shape

    def describe(self) -> str:
        dims = ", ".join(_dim_name(d) for d in self.shape)
        return f"{self.name} {self.dtype.name}[{dims}]"


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

    def run(self, feeds: Mapping[str, Array]) -> dict[str, Array]:
        """Run one batch; ``feeds`` holds every input, already of its dtype and shape."""
        ...

    def close(self) -> None:
        """Release the runtime's resources."""
        ...


def batchable(model: Model) -> bool:
    """True when every input has a dynamic leading (batch) dimension."""
    return all(spec.batch_dim == "dynamic" for spec in model.inputs)
