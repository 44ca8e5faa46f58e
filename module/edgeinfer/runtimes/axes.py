"""Which dimension of each input and output is the batch, and whether readings can share a run.

Models do not say "axis 0 is the batch": a recurrent state is ``[layers, batch,
hidden]``, a sample rate is a scalar, a detector's image has a batch and two
free dimensions. The batch axis is found, in this order:

1. the manifest's ``batch_axes`` (``{"state": 1, "sr": null}``), which wins;
2. the symbolic dimension name the inputs and outputs share (``batch`` in
   ``input[batch, sequence]``, ``state[2, batch, 128]`` and ``output[batch, 1]``),
   wherever it sits, in inputs and outputs alike;
3. for a tensor without that name: an unnamed dynamic first dimension, else its
   only dynamic dimension when that one is unnamed, else a first dimension of 1
   (a batch of one).

A name that no output shares is no batch axis: an OCR model's
``image[1, 1, 64, image_width]`` is a batch of one image of any width, not a
batch along the width. "Unnamed" is ``-1``, ``None``, ``?``, and the names
exporters generate for a size they do not know, a new one for every tensor
(``unk__214`` on the input and ``unk__215`` on the output, paddle2onnx's
``p2o.DynamicDimension.3``, torch's ``x_dynamic_axes_1``): they say "unknown",
not "the same as there".

Scalars and tensors with none of these have no batch axis: such an input is
passed as given, and readings that give it different values never share a run.
The guess is then checked on the model itself (:mod:`edgeinfer.serving`
runs a batch of one and of two and keeps the output axis that doubled).
Readings share a run only when every input with a batch axis can grow along
it and every output can be split along its own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from edgeinfer.runtimes.base import MAP, SEQUENCE, TENSOR, Dim, TensorSpec

#: Names exporters give dimensions whose size they do not know (one per tensor and axis).
_GENERATED = re.compile(r"^(unk__\d+|(p2o\.)?DynamicDimension\.\d+|.+_dynamic_axes_\d+)$")
#: Why the axes are what they are, when no name is shared.
_OWN = "no dimension name is shared: each one's unnamed dynamic dimension"


@dataclass(frozen=True)
class BatchAxes:
    """The batch axis of every input and output (None: it has none), and the verdict."""

    inputs: Mapping[str, int | None]
    outputs: Mapping[str, int | None]
    batchable: bool
    why: str  # how the axes were found, or why readings cannot share a run
    fixed_one: frozenset[str] = field(default_factory=frozenset)  # inputs whose batch is 1
    #: Every input's and output's shape, for naming the dimension each axis is.
    shapes: Mapping[str, tuple[Dim, ...]] = field(default_factory=dict)

    def with_outputs(
        self, outputs: Mapping[str, int | None], batchable: bool, why: str
    ) -> BatchAxes:
        return BatchAxes(self.inputs, dict(outputs), batchable, why, self.fixed_one, self.shapes)

    def describe(self) -> str:
        """For ``inspect``: ``x: axis 0 ('unk__214'), sr: none; outputs ...; batched (...)``."""

        def show(axes: Mapping[str, int | None]) -> str:
            return ", ".join(f"{k}: {self._dimension(k, v)}" for k, v in axes.items())

        verdict = "batched" if self.batchable else "one reading at a time"
        return f"inputs {show(self.inputs)}; outputs {show(self.outputs)}; {verdict} ({self.why})"

    def _dimension(self, name: str, axis: int | None) -> str:
        """``axis 1 ('batch')``, ``axis 0 (unnamed)``, ``axis 0 (size 1)``, or ``none``."""
        if axis is None:
            return "none"
        shape = self.shapes.get(name, ())
        if axis >= len(shape):
            return f"axis {axis}"  # a sequence of maps, or axes set by hand
        dim = shape[axis]
        if isinstance(dim, int):
            return f"axis {axis} (size {dim})" if dim >= 0 else f"axis {axis} (unnamed)"
        return f"axis {axis} ({dim!r})" if dim else f"axis {axis} (unnamed)"


def infer_batch_axes(
    inputs: tuple[TensorSpec, ...],
    outputs: tuple[TensorSpec, ...],
    declared: Mapping[str, int | None] | None = None,
) -> BatchAxes:
    """The batch axes a model's signature (and its manifest) suggest.

    ``outputs`` empty means they are not known (the operator tools shaping
    inputs alone): the guess is then the one made before outputs were
    consulted, any name an input has may be the batch.
    """
    declared = dict(declared or {})
    symbol = _shared_symbol(inputs, outputs)
    # With the outputs unknown nothing tells a batch's name from a length's: the
    # dynamic first dimension is taken, named or not, as the module always has.
    named_ok = not outputs
    axes_in = {s.name: _axis_of(s, symbol, declared, named_ok) for s in inputs}
    axes_out = {s.name: _axis_of(s, symbol, declared, named_ok) for s in outputs}
    fixed_one = frozenset(
        s.name for s in inputs if (a := axes_in[s.name]) is not None and not s.is_dynamic(a)
    )
    if declared:
        how = "from the manifest's batch_axes"
    elif symbol:
        how = f"the dimension {symbol!r} the inputs and outputs share"
    else:
        how = _OWN
    batchable, why = _verdict(inputs, outputs, axes_in, axes_out, fixed_one)
    shapes = {s.name: s.shape for s in (*inputs, *outputs)}
    return BatchAxes(axes_in, axes_out, batchable, why if not batchable else how, fixed_one, shapes)


def is_unnamed(dim: Dim) -> bool:
    """True for a dynamic dimension that names nothing: ``-1``, None, ``?``, ``unk__214``."""
    if isinstance(dim, int):
        return dim < 0
    return not dim or dim == "?" or bool(_GENERATED.match(dim))


def _shared_symbol(inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...]) -> str | None:
    """The symbolic dimension name that inputs and outputs share, most widely, or None.

    A name only inputs have is a length of theirs (an image's width), not a
    batch; with the outputs unknown (``outputs`` empty: the operator tools
    shaping inputs alone), an input's name is taken as shared. Ties go
    to the name that comes first in the inputs: ``[batch, seq]`` and a mask
    ``[batch, seq]`` with an output ``[batch, seq, 2]`` share both, and the
    batch comes first.
    """
    order: list[str] = []
    for spec in inputs:
        order += [d for d in spec.shape if isinstance(d, str) and d and d not in order]
    in_outputs = {d for spec in outputs for d in spec.shape if isinstance(d, str)}
    if outputs:
        order = [name for name in order if name in in_outputs]
    if not order:
        return None
    score = {name: sum(name in spec.shape for spec in (*inputs, *outputs)) for name in order}
    return max(order, key=lambda name: (score[name], -order.index(name)))


def _axis_of(
    spec: TensorSpec, symbol: str | None, declared: dict[str, int | None], named_ok: bool
) -> int | None:
    if spec.name in declared:
        return declared[spec.name]
    if spec.kind == SEQUENCE and spec.detail.startswith("seq(map"):
        return 0  # a ZipMap: one map per row
    if spec.kind != TENSOR or spec.rank == 0:
        return None
    if symbol is not None and symbol in spec.shape:
        return spec.shape.index(symbol)
    # A name that is not the shared one is a length of this tensor's own.
    free = spec.is_dynamic if named_ok else lambda axis: is_unnamed(spec.shape[axis])
    if free(0):
        return 0
    dynamic = [axis for axis in range(spec.rank) if spec.is_dynamic(axis)]
    if len(dynamic) == 1 and free(dynamic[0]):
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
