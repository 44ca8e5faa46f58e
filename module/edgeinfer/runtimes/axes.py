"""Which dimension of each input and output is the batch, and whether readings can share a run.

Models do not say "axis 0 is the batch": a recurrent state is ``[layers, batch,
hidden]``, a sample rate is a scalar, a detector's image has a batch and two
free dimensions. The batch axis is found, in this order:

1. the manifest's ``batch_axes`` (``{"state": 1, "sr": null}``), which wins;
2. the symbolic dimension name the inputs share (``batch`` in
   ``input[batch, sequence]`` and ``state[2, batch, 128]``), wherever it sits,
   in inputs and outputs alike;
3. for a tensor without that name: a dynamic first dimension, else its only
   dynamic dimension, else a first dimension of 1 (a batch of one).

Scalars and tensors with none of these have no batch axis: such an input is
passed as given, and readings that give it different values never share a run.
The guess is then checked on the model itself (:mod:`edgeinfer.serving`
runs a batch of one and of two and keeps the output axis that doubled).
Readings share a run only when every input with a batch axis can grow along
it and every output can be split along its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from edgeinfer.runtimes.base import MAP, SEQUENCE, TENSOR, TensorSpec


@dataclass(frozen=True)
class BatchAxes:
    """The batch axis of every input and output (None: it has none), and the verdict."""

    inputs: Mapping[str, int | None]
    outputs: Mapping[str, int | None]
    batchable: bool
    why: str  # how the axes were found, or why readings cannot share a run
    fixed_one: frozenset[str] = field(default_factory=frozenset)  # inputs whose batch is 1

    def with_outputs(
        self, outputs: Mapping[str, int | None], batchable: bool, why: str
    ) -> BatchAxes:
        return BatchAxes(self.inputs, dict(outputs), batchable, why, self.fixed_one)

    def describe(self) -> str:
        """For ``inspect``: ``window: 0, sr: none; outputs ...; batched (...)``."""

        def show(axes: Mapping[str, int | None]) -> str:
            return ", ".join(f"{k}: {'none' if v is None else v}" for k, v in axes.items())

        verdict = "batched" if self.batchable else "one reading at a time"
        return f"inputs {show(self.inputs)}; outputs {show(self.outputs)}; {verdict} ({self.why})"


def infer_batch_axes(
    inputs: tuple[TensorSpec, ...],
    outputs: tuple[TensorSpec, ...],
    declared: Mapping[str, int | None] | None = None,
) -> BatchAxes:
    """The batch axes a model's signature (and its manifest) suggest."""
    declared = dict(declared or {})
    symbol = _shared_symbol(inputs, outputs)
    axes_in = {s.name: _axis_of(s, symbol, declared) for s in inputs}
    axes_out = {s.name: _axis_of(s, symbol, declared) for s in outputs}
    fixed_one = frozenset(
        s.name for s in inputs if (a := axes_in[s.name]) is not None and not s.is_dynamic(a)
    )
    if declared:
        how = "from the manifest's batch_axes"
    elif symbol:
        how = f"the dimension {symbol!r} the inputs and outputs share"
    else:
        how = "the dynamic dimensions"
    batchable, why = _verdict(inputs, outputs, axes_in, axes_out, fixed_one)
    return BatchAxes(axes_in, axes_out, batchable, why if not batchable else how, fixed_one)


def _shared_symbol(inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...]) -> str | None:
    """The symbolic dimension name most inputs and outputs share (one that an input has).

    Ties go to the name that comes first in the inputs: ``[batch, seq]`` and a
    mask ``[batch, seq]`` share both, and the batch comes first.
    """
    order: list[str] = []
    for spec in inputs:
        order += [d for d in spec.shape if isinstance(d, str) and d and d not in order]
    if not order:
        return None
    score = {name: sum(name in spec.shape for spec in (*inputs, *outputs)) for name in order}
    return max(order, key=lambda name: (score[name], -order.index(name)))


def _axis_of(spec: TensorSpec, symbol: str | None, declared: dict[str, int | None]) -> int | None:
    if spec.name in declared:
        return declared[spec.name]
    if spec.kind == SEQUENCE and spec.detail.startswith("seq(map"):
        return 0  # a ZipMap: one map per row
    if spec.kind != TENSOR or spec.rank == 0:
        return None
    if symbol is not None and symbol in spec.shape:
        return spec.shape.index(symbol)
    if spec.is_dynamic(0):
        return 0
    dynamic = [axis for axis in range(spec.rank) if spec.is_dynamic(axis)]
    if len(dynamic) == 1:
        return dynamic[0]
    if spec.shape[0] == 1 and spec.rank > 1:
        return 0
    return None


def _verdict(
    inputs: tuple[TensorSpec, ...],
    outputs: tuple[TensorSpec, ...],
    axes_in: Mapping[str, int | None],
    axes_out: Mapping[str, int | None],
    fixed_one: frozenset[str],
) -> tuple[bool, str]:
    batched = [s for s in inputs if axes_in[s.name] is not None]
    if not batched:
        return False, "no input has a batch axis"
    if fixed_one:
        return False, f"input {sorted(fixed_one)[0]!r} takes one reading at a time (batch of 1)"
    for spec in outputs:
        if spec.kind == MAP or (spec.kind == SEQUENCE and axes_out[spec.name] is None):
            return False, f"output {spec.name!r} is {spec.detail}, which cannot be split by reading"
        if axes_out[spec.name] is None:
            return False, f"output {spec.name!r} has no batch axis"
    return True, ""
