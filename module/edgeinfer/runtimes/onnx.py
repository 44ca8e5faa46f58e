"""ONNX Runtime backend."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from edgeinfer.errors import ModelError
from edgeinfer.runtimes.base import Array, Dim, TensorSpec

log = logging.getLogger(__name__)

_ORT_TYPES: dict[str, type[np.generic]] = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int8)": np.int8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
}


def _spec(arg: Any) -> TensorSpec:
    if arg.type not in _ORT_TYPES:
        raise ModelError(f"tensor {arg.name!r} has type {arg.type}, expected a numeric tensor")
    # ONNX Runtime gives an int for a fixed dim, a str (or None) for a symbolic one.
    shape: tuple[Dim, ...] = tuple(arg.shape)
    return TensorSpec(arg.name, np.dtype(_ORT_TYPES[arg.type]), shape)


def choose_providers(wanted: Sequence[str]) -> list[str]:
    """Keep the wanted providers this build of ONNX Runtime has; always end with CPU."""
    available = set(ort.get_available_providers())
    chosen = [p for p in wanted if p in available]
    for missing in (p for p in wanted if p not in available):
        log.warning(
            "execution provider %s is not available (have %s); falling back",
            missing,
            sorted(available),
        )
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


class OnnxModel:
    """A model run by ONNX Runtime."""

    format = "onnx"
    runtime = f"onnxruntime {ort.__version__}"

    def __init__(
        self, path: Path, threads: int = 0, providers: Sequence[str] = ("CPUExecutionProvider",)
    ) -> None:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Readings arrive one small tensor at a time: spinning worker threads
        # burn a core of a 2-core gateway for nothing, so they sleep when idle.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(
                str(path), sess_options=options, providers=choose_providers(providers)
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelError(f"{path}: ONNX Runtime cannot load it: {exc}") from exc
        self.providers = tuple(self._session.get_providers())
        self.inputs = tuple(_spec(a) for a in self._session.get_inputs())
        self.outputs = tuple(_spec(a) for a in self._session.get_outputs())
        self._output_names = [o.name for o in self.outputs]

    def run(self, feeds: Mapping[str, Array]) -> dict[str, Array]:
        try:
            values = self._session.run(self._output_names, dict(feeds))
        except Exception as exc:
            raise ModelError(f"ONNX Runtime failed: {exc}") from exc
        return dict(zip(self._output_names, (np.asarray(v) for v in values), strict=True))

    def close(self) -> None:
        del self._session
