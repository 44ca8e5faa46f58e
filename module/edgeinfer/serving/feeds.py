"""A test reading made from a model's signature, for a model whose manifest gives none.

It follows the rules live readings do: the batch axis wherever the model has it
(one row), scalars as scalars, values inside the dtype's range (zeros, empty
strings). A dynamic dimension other than the batch gets a size a real input
might have (128: an image side, a chunk of audio, a sentence), so that a
convolution or a padded filter has something to slide over.
"""

from __future__ import annotations

import numpy as np

from edgeinfer.runtimes.axes import BatchAxes
from edgeinfer.runtimes.base import Array, TensorSpec

#: The size given to a dynamic dimension that is not the batch (a length, a height).
FREE_DIM = 128


def shape_for(spec: TensorSpec, axis: int | None, rows: int = 1, free: int = FREE_DIM) -> list[int]:
    """The concrete shape of ``rows`` samples of ``spec``."""
    dims: list[int] = []
    for n, dim in enumerate(spec.shape):
        if n == axis:
            dims.append(rows if spec.is_dynamic(n) else int(dim or 1))
        else:
            dims.append(int(dim) if isinstance(dim, int) and dim >= 0 else free)
    return dims


def generate_feeds(
    inputs: tuple[TensorSpec, ...], axes: BatchAxes, rows: int = 1
) -> dict[str, Array]:
    """Zeros (or empty strings) of every input's shape, ``rows`` along each batch axis."""
    feeds: dict[str, Array] = {}
    for spec in inputs:
        shape = shape_for(spec, axes.inputs.get(spec.name), rows)
        if spec.dtype.kind in "OUS":
            feeds[spec.name] = np.full(shape, "", dtype=object)
        else:
            feeds[spec.name] = np.zeros(shape, dtype=spec.dtype)
    return feeds


__all__ = ["FREE_DIM", "generate_feeds", "shape_for"]
