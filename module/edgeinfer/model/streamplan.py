"""A model's plan for streams of samples: which input is windowed, how samples look, its state.

Worked out once, when the model is admitted, from the manifest's ``window`` and
``state`` (:mod:`edgeinfer.manifest.streams`) and the model's signature and batch
axes, so a model whose manifest does not fit it is refused at start with a
reason, never half-served.

The windowed input, without its batch axis, is ``[size, *sample]``: a window
is ``size`` samples along its first axis. ``sample`` dimensions the model
leaves free are taken from each stream's first sample.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeinfer.errors import ModelError
from edgeinfer.manifest.streams import StateSpec, WindowSpec
from edgeinfer.runtimes.axes import BatchAxes
from edgeinfer.runtimes.base import TENSOR, Array, Model, TensorSpec


@dataclass(frozen=True)
class StreamPlan:
    """How windows of samples feed one model."""

    window: WindowSpec
    input: str  # the windowed input
    axis: int | None  # its batch axis
    dtype: np.dtype[Any]
    sample: tuple[int | None, ...]  # one sample's shape (None: free, fixed per stream)
    fixed: Mapping[str, Array]  # feeds that are the same for every window
    state: Mapping[str, str]  # state input -> state output
    state_axes: Mapping[str, int | None]  # each state input's batch axis
    state_init: Mapping[str, Array]  # a stream's first state, one row on its batch axis
    idle_reset_s: float = 0.0

    @property
    def sample_spec(self) -> TensorSpec:
        """What one reading of samples decodes to: rows of samples along axis 0."""
        return TensorSpec(self.input, self.dtype, ("samples", *self.sample))

    def feeds(self, data: Array, state: Mapping[str, Array] | None) -> dict[str, Array]:
        """A window's feeds: its samples with the batch axis, the fixed inputs, its state."""
        feeds = dict(self.fixed)
        feeds[self.input] = data if self.axis is None else np.expand_dims(data, self.axis)
        if state:
            feeds.update(state)
        return feeds

    def describe(self) -> str:
        w = self.window
        state = f", state {dict(self.state)}" if self.state else ""
        return (
            f"windows of {w.size} samples of {self.input!r} every {w.hop}, streams by {w.key}"
            f"{state}"
        )


def plan_streams(
    model: Model,
    axes: BatchAxes,
    window: WindowSpec | None,
    state: StateSpec | None,
    model_dir: Path,
) -> StreamPlan | None:
    """The model's stream plan (None without a window); ModelError naming what does not fit."""
    if window is None:
        if state is not None:
            raise ModelError("manifest has state but no window: expected a window for its streams")
        return None
    specs = {s.name: s for s in model.inputs}
    outputs = {s.name: s for s in model.outputs}
    mapping = dict(state.map) if state is not None else {}
    for name, out in mapping.items():
        if name not in specs:
            raise ModelError(f"state.map names input {name!r}: expected one of {sorted(specs)}")
        if out not in outputs:
            raise ModelError(f"state.map names output {out!r}: expected one of {sorted(outputs)}")
    for name in window.fixed:
        if name not in specs:
            raise ModelError(f"window.fixed names input {name!r}: expected one of {sorted(specs)}")
    spec = _windowed_input(specs, window, mapping)
    axis = axes.inputs.get(spec.name)
    dims = list(spec.shape)
    if axis is not None:
        del dims[axis]
    if not dims:
        raise ModelError(
            f"input {spec.name!r} is {spec.describe()}: expected a window axis beside the batch"
        )
    first = dims[0]
    if isinstance(first, int) and first >= 0 and first != window.size:
        raise ModelError(
            f"window.size = {window.size}: input {spec.name!r} takes {first} samples a window"
        )
    sample = tuple(d if isinstance(d, int) and d >= 0 else None for d in dims[1:])
    fixed = {name: _fixed(specs[name], value, axes) for name, value in window.fixed.items()}
    missing = sorted(set(specs) - {spec.name} - set(fixed) - set(mapping))
    if missing:
        raise ModelError(
            f"inputs {missing} are neither windowed, state nor fixed: expected them in "
            "window.fixed (a value for every window) or state.map"
        )
    state_axes = {name: axes.inputs.get(name) for name in mapping}
    init = _initial_state(specs, state, state_axes, model_dir) if state is not None else {}
    return StreamPlan(
        window=window,
        input=spec.name,
        axis=axis,
        dtype=spec.dtype,
        sample=sample,
        fixed=fixed,
        state=mapping,
        state_axes=state_axes,
        state_init=init,
        idle_reset_s=state.idle_reset_s if state is not None else 0.0,
    )


def _windowed_input(
    specs: dict[str, TensorSpec], window: WindowSpec, mapping: dict[str, str]
) -> TensorSpec:
    if window.input is not None:
        if window.input not in specs:
            raise ModelError(
                f"window.input = {window.input!r}: expected one of the inputs {sorted(specs)}"
            )
        return specs[window.input]
    free = [n for n in specs if n not in mapping and n not in window.fixed]
    if len(free) != 1:
        raise ModelError(
            f"the model's inputs {sorted(specs)} leave {free} to window: expected one "
            "(name it with window.input, give the others in window.fixed or state.map)"
        )
    found = specs[free[0]]
    if found.kind != TENSOR:
        raise ModelError(f"input {found.name!r} is {found.describe()}: expected a tensor to window")
    return found


def _fixed(spec: TensorSpec, value: object, axes: BatchAxes) -> Array:
    try:
        arr = np.asarray(value, dtype=spec.dtype)
    except (TypeError, ValueError) as exc:
        raise ModelError(
            f"window.fixed.{spec.name} = {value!r}: expected {spec.dtype} values ({exc})"
        ) from exc
    axis = axes.inputs.get(spec.name)
    if axis is not None and arr.ndim == spec.rank - 1:
        arr = np.expand_dims(arr, axis)
    if arr.ndim != spec.rank:
        raise ModelError(
            f"window.fixed.{spec.name} has shape {list(arr.shape)}: expected {spec.describe()}"
        )
    return arr


def _initial_state(
    specs: dict[str, TensorSpec],
    state: StateSpec,
    state_axes: Mapping[str, int | None],
    model_dir: Path,
) -> dict[str, Array]:
    arrays: Mapping[str, Any] = {}
    if state.init != "zeros":
        path = (model_dir / state.init).resolve()
        if path.parent != model_dir.resolve() or path.suffix != ".npz":
            raise ModelError(
                f'state.init = {state.init!r}: expected "zeros" or a .npz file beside the model'
            )
        try:
            with np.load(path, allow_pickle=False) as found:
                arrays = {k: found[k] for k in found.files}
        except (OSError, ValueError) as exc:
            raise ModelError(f"state.init = {state.init!r}: cannot read it ({exc})") from exc
    init: dict[str, Array] = {}
    for name in state.map:
        spec = specs[name]
        axis = state_axes[name]
        shape = [1 if i == axis else d for i, d in enumerate(spec.shape)]
        if name in arrays:
            value = np.asarray(arrays[name], dtype=spec.dtype)
            if axis is not None and value.ndim == spec.rank - 1:
                value = np.expand_dims(value, axis)
            fits = value.ndim == spec.rank and all(
                d is None or not isinstance(d, int) or d < 0 or d == n
                for d, n in zip(shape, value.shape, strict=True)
            )
            if not fits:
                raise ModelError(
                    f"state.init {state.init!r} has {name!r} shaped {list(value.shape)}: "
                    f"expected {spec.describe()} with one row on its batch axis"
                )
            init[name] = value
            continue
        if state.init != "zeros":
            raise ModelError(f"state.init {state.init!r} has no array {name!r}: expected one")
        if not all(isinstance(d, int) and d >= 0 for d in shape):
            raise ModelError(
                f"state input {name!r} is {spec.describe()}: its size is not fixed, so zeros "
                "cannot be made: expected state.init to name a .npz file"
            )
        init[name] = np.zeros([int(d) for d in shape if isinstance(d, int)], dtype=spec.dtype)
    return init
