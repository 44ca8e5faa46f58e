"""A runtime-free model for unit tests of single pipeline stages."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from edgeinfer.runtimes.base import Array, TensorSpec


class FakeModel:
    """Computes ``outputs = fn(feeds)`` in numpy and records every batch it ran."""

    format = "fake"
    runtime = "fake"

    def __init__(
        self,
        inputs: tuple[TensorSpec, ...],
        outputs: tuple[TensorSpec, ...],
        fn: Callable[[Mapping[str, Array]], dict[str, Array]],
    ) -> None:
        self.inputs = inputs
        self.outputs = outputs
        self._fn = fn
        self.batches: list[int] = []

    def run(self, feeds: Mapping[str, Array]) -> dict[str, Array]:
        self.batches.append(len(next(iter(feeds.values()))))
        return self._fn(feeds)

    def reset(self) -> None:
        pass

    def close(self) -> None:
        pass


def sum_model(width: int = 3) -> FakeModel:
    """A float32 [batch, width] -> [batch, 1] model that sums its input row."""
    return FakeModel(
        (TensorSpec("x", np.dtype(np.float32), (None, width)),),
        (TensorSpec("y", np.dtype(np.float32), (None, 1)),),
        lambda feeds: {"y": np.asarray(feeds["x"]).sum(axis=1, keepdims=True)},
    )
