"""Running decoded readings on a model: shape buckets, stacking along batch axes, splitting.

Readings share a run only when the model is batchable and their ``bucket``s are
equal (the same sample shapes, the same values for inputs given whole): an
image of another size in the same window runs in a batch of its own. Inputs
are stacked along each one's own batch axis and outputs split along theirs. A
batch the model fails on, or whose outputs do not split into the readings'
rows, is run again one reading at a time, so one reading never costs its
batch-mates their answers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edgeinfer.errors import ModelError, ReadingError
from edgeinfer.model.loaded import LoadedModel
from edgeinfer.pipeline.decode import Reading
from edgeinfer.pipeline.outputs import non_finite_rows, rows_of, split_rows
from edgeinfer.runtimes.base import Array, Value

log = logging.getLogger(__name__)

#: One reading's outputs, or why it has none.
Answer = dict[str, Value] | ReadingError


@dataclass
class RunStats:
    """What the runs of one engine batch did, for the probation monitor."""

    failed: int = 0  # readings answered with inference_failed
    non_finite: int = 0  # readings whose outputs hold NaN or infinity
    seconds: float = 0.0


class Runner:
    """Runs readings on a model (the serving thread)."""

    def __init__(self, max_batch: int, observe: Callable[[float, int], None] | None = None) -> None:
        self._max_batch = max_batch
        self._observe = observe  # (seconds, readings) of every model run

    def answer(self, loaded: LoadedModel, readings: list[Reading]) -> tuple[list[Answer], RunStats]:
        """One answer per reading, in the order given."""
        answers: list[Answer | None] = [None] * len(readings)
        stats = RunStats()
        started = time.perf_counter()
        for group in self._groups(loaded, readings):
            batch = [readings[i] for i in group]
            for i, answer in zip(group, self._run_group(loaded, batch, stats), strict=True):
                answers[i] = answer
        stats.seconds = time.perf_counter() - started
        return [a if a is not None else ReadingError.internal() for a in answers], stats

    def _groups(self, loaded: LoadedModel, readings: list[Reading]) -> list[list[int]]:
        """Indices of readings that may share a run, each group in arrival order."""
        if not loaded.batch_axes.batchable or self._max_batch == 1:
            return [[i] for i in range(len(readings))]
        current: dict[object, list[int]] = {}  # each bucket's run being filled
        rows: dict[object, int] = {}  # and the rows it holds
        order: list[list[int]] = []
        for i, reading in enumerate(readings):
            key = reading.bucket
            if key not in current or rows[key] >= self._max_batch:
                current[key], rows[key] = [], 0
                order.append(current[key])
            current[key].append(i)
            rows[key] += reading.rows
        return order

    def _run_group(
        self, loaded: LoadedModel, batch: list[Reading], stats: RunStats
    ) -> list[Answer]:
        try:
            outputs = self._run(loaded, batch)
            answers: list[Answer] = list(self._split(loaded, batch, outputs))
        except ModelError as exc:
            if len(batch) == 1:
                stats.failed += 1
                return [ReadingError("inference_failed", str(exc), batch[0].id)]
            # One bad reading must not fail its batch-mates: answer one by one.
            return [a for reading in batch for a in self._run_group(loaded, [reading], stats)]
        total = sum(r.rows for r in batch)
        stats.non_finite += non_finite_rows(outputs, loaded.batch_axes.outputs, total)
        return answers

    def _run(self, loaded: LoadedModel, batch: list[Reading]) -> dict[str, Value]:
        axes = loaded.batch_axes.inputs
        if len(batch) == 1:
            feeds = batch[0].feeds
        else:
            feeds = {
                name: _stack([r.feeds[name] for r in batch], axes.get(name))
                for name in batch[0].feeds
            }
        started = time.perf_counter()
        outputs = loaded.model.run(feeds)
        if self._observe is not None:
            self._observe(time.perf_counter() - started, len(batch))
        return outputs

    def _split(
        self, loaded: LoadedModel, batch: list[Reading], outputs: dict[str, Value]
    ) -> list[dict[str, Value]]:
        if len(batch) == 1:
            return [outputs]
        axes = loaded.batch_axes.outputs
        total = sum(r.rows for r in batch)
        for name, value in outputs.items():
            if rows_of(value, axes.get(name)) != total:
                # The probe passed, yet this batch does not split: a model whose
                # output size depends on its input. Not an error of the readings.
                raise ModelError(f"output {name!r} does not hold {total} rows for this batch")
        return split_rows(outputs, axes, [r.rows for r in batch])


def _stack(arrays: list[Array], axis: int | None) -> Array:
    if axis is None:
        return arrays[0]  # equal in every reading of a bucket
    return np.concatenate(arrays, axis=axis)
