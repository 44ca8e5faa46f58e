"""ONNX Runtime backend.

Inputs must be tensors (of any numeric type, bool, string, float16, bfloat16 or
float8); a model with a sequence or map input is refused at load, naming it.
Outputs may be tensors, sequences (a ZipMap's ``seq(map(...))`` included) or
maps: ONNX Runtime returns lists and dicts for those, and they are passed on
as they are.
"""

from __future__ import annotations

import ctypes
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from edgeinfer.errors import ModelError
from edgeinfer.runtimes.base import MAP, SEQUENCE, Array, Dim, TensorSpec, Value

log = logging.getLogger(__name__)

_NUMPY_TYPES: dict[str, Any] = {
    "float": np.float32,
    "double": np.float64,
    "float16": np.float16,
    "int8": np.int8,
    "int16": np.int16,
    "int32": np.int32,
    "int64": np.int64,
    "uint8": np.uint8,
    "uint16": np.uint16,
    "uint32": np.uint32,
    "uint64": np.uint64,
    "bool": np.bool_,
    "string": np.object_,
}
#: Types numpy lacks: fed as OrtValues from the ml_dtypes arrays (name -> ONNX enum).
_ML_TYPES = {
    "bfloat16": 16,
    "float8e4m3fn": 17,
    "float8e4m3fnuz": 18,
    "float8e5m2": 19,
    "float8e5m2fnuz": 20,
}
_TENSOR = re.compile(r"^tensor\((\w+)\)$")


def _ml_dtype(name: str) -> Any:
    import ml_dtypes

    return {
        "bfloat16": ml_dtypes.bfloat16,
        "float8e4m3fn": ml_dtypes.float8_e4m3fn,
        "float8e4m3fnuz": ml_dtypes.float8_e4m3fnuz,
        "float8e5m2": ml_dtypes.float8_e5m2,
        "float8e5m2fnuz": ml_dtypes.float8_e5m2fnuz,
    }[name]


def _spec(arg: Any, role: str) -> TensorSpec:
    match = _TENSOR.match(arg.type)
    # ONNX Runtime gives an int for a fixed dim, a str (or None) for a symbolic one;
    # exporters write "?" for "unknown", which names nothing.
    raw = arg.shape if isinstance(arg.shape, list) else []
    shape: tuple[Dim, ...] = tuple(None if d in ("?", "") else d for d in raw)
    if match and match.group(1) in _NUMPY_TYPES:
        return TensorSpec(arg.name, np.dtype(_NUMPY_TYPES[match.group(1)]), shape)
    if match and match.group(1) in _ML_TYPES:
        return TensorSpec(arg.name, np.dtype(_ml_dtype(match.group(1))), shape)
    if role == "output" and arg.type.startswith(("seq(", "map(")):
        kind = SEQUENCE if arg.type.startswith("seq(") else MAP
        return TensorSpec(arg.name, np.dtype(object), (), kind, arg.type)
    expected = "a tensor of a numeric, bool or string type"
    if role == "output":
        expected += ", a sequence or a map"
    raise ModelError(f"{role} {arg.name!r} is {arg.type}: expected {expected}")


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
        self.threads = threads  # 0: the runtime's default
        options.inter_op_num_threads = 1
        # ONNX Runtime logs to stderr in its own format; its errors reach us as
        # exceptions and are reported as ours, so only fatal ones are let through.
        options.log_severity_level = 4
        try:
            self._session = ort.InferenceSession(
                str(path), sess_options=options, providers=choose_providers(providers)
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelError(f"{path}: ONNX Runtime cannot load it: {exc}") from exc
        self.providers = tuple(self._session.get_providers())
        self.inputs = tuple(_spec(a, "input") for a in self._session.get_inputs())
        self.outputs = tuple(_spec(a, "output") for a in self._session.get_outputs())
        self._output_names = [o.name for o in self.outputs]
        self._ml_inputs = {
            s.name: _ML_TYPES[s.dtype.name.replace("_", "")]
            for s in self.inputs
            if s.dtype.name.replace("_", "") in _ML_TYPES
        }
        # ONNX Runtime's numpy bridge cannot return these: their bytes are read instead.
        self._ml_outputs = {
            s.name: s.dtype for s in self.outputs if s.dtype.name.replace("_", "") in _ML_TYPES
        }

    def run(self, feeds: Mapping[str, Array]) -> dict[str, Value]:
        try:
            prepared: dict[str, Any] = dict(feeds)
            for name, onnx_type in self._ml_inputs.items():
                raw = np.require(feeds[name], requirements="C")  # keeps a scalar 0-d
                view = raw.view(np.uint16 if raw.dtype.itemsize == 2 else np.uint8)
                prepared[name] = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(view, onnx_type)
            if self._ml_outputs:
                prepared = {
                    name: v if isinstance(v, ort.OrtValue) else ort.OrtValue.ortvalue_from_numpy(v)
                    for name, v in prepared.items()
                }
                values = [
                    _from_ort_value(v, self._ml_outputs.get(name))
                    for name, v in zip(
                        self._output_names,
                        self._session.run_with_ort_values(self._output_names, prepared),
                        strict=True,
                    )
                ]
            else:
                values = self._session.run(self._output_names, prepared)
        except Exception as exc:
            raise ModelError(f"ONNX Runtime failed: {exc}") from exc
        return dict(zip(self._output_names, (_value(v) for v in values), strict=True))

    def reset(self) -> None:
        return None  # ONNX Runtime keeps no state between runs

    def close(self) -> None:
        del self._session


def _from_ort_value(value: Any, ml_dtype: np.dtype[Any] | None) -> Any:
    """An OrtValue as numpy; bfloat16 and float8 copied from its memory as ml_dtypes."""
    if ml_dtype is None:
        return value.numpy()
    shape = tuple(value.shape())
    count = int(np.prod(shape, dtype=np.int64))
    raw = (ctypes.c_uint8 * (count * ml_dtype.itemsize)).from_address(value.data_ptr())
    return np.frombuffer(bytes(raw), dtype=ml_dtype).reshape(shape)


def _value(value: Any) -> Value:
    if isinstance(value, list | dict):
        return value
    return np.asarray(value)
