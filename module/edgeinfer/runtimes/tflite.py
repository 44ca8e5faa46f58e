"""TFLite backend: LiteRT (``ai_edge_litert``), else ``tflite_runtime`` where installed.

Quantized models (int8, uint8 or int16 tensors with a scale and zero point)
are the normal form of edge models. With ``quantized_io="float"`` (the
default) they take and give floats: readings are quantized with the input's
scale and zero point (per channel where the model has a quantized dimension),
outputs are dequantized. ``"raw"`` passes the integers through.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeinfer.errors import ModelError
from edgeinfer.runtimes.base import Array, Dim, TensorSpec, Value

QUANTIZED_IO = ("float", "raw")


def _interpreter_module() -> tuple[Any, str]:
    # tflite-runtime is frozen at 2.14 and breaks with NumPy 2: prefer LiteRT.
    for name, dist in (
        ("ai_edge_litert.interpreter", "ai-edge-litert"),
        ("tflite_runtime.interpreter", "tflite-runtime"),
    ):
        try:
            return importlib.import_module(name), dist
        except ImportError:
            continue
    raise ModelError("cannot run a .tflite model: install ai-edge-litert (or tflite-runtime)")


@dataclass(frozen=True)
class Quantization:
    """Scale and zero point of a quantized tensor (arrays: per channel along ``axis``)."""

    dtype: np.dtype[Any]
    scales: Array
    zero_points: Array
    axis: int

    def _broadcast(self, values: Array, rank: int) -> Array:
        if values.size == 1:
            return values.reshape(())
        shape = [1] * rank
        shape[self.axis] = values.size
        return values.reshape(shape)

    def quantize(self, x: Array) -> Array:
        scale = self._broadcast(self.scales, x.ndim)
        zero = self._broadcast(self.zero_points, x.ndim)
        info = np.iinfo(self.dtype)
        q = np.rint(np.asarray(x, np.float64) / scale) + zero
        quantized: Array = np.clip(q, info.min, info.max).astype(self.dtype)
        return quantized

    def dequantize(self, q: Array) -> Array:
        scale = self._broadcast(self.scales, q.ndim)
        zero = self._broadcast(self.zero_points, q.ndim)
        return ((q.astype(np.float32) - zero.astype(np.float32)) * scale).astype(np.float32)


def _quantization(detail: Mapping[str, Any]) -> Quantization | None:
    params = detail.get("quantization_parameters") or {}
    scales = np.asarray(params.get("scales", []), np.float32)
    dtype = np.dtype(detail["dtype"])
    if dtype.kind not in "iu" or not scales.size or not np.any(scales):
        return None
    zero_points = np.asarray(params.get("zero_points", np.zeros_like(scales)), np.int64)
    return Quantization(dtype, scales, zero_points, int(params.get("quantized_dimension", 0)))


def _spec(name: str, detail: Mapping[str, Any], as_float: bool) -> TensorSpec:
    signature = detail.get("shape_signature")
    dims = signature if signature is not None and len(signature) else detail["shape"]
    shape: tuple[Dim, ...] = tuple(int(d) if d >= 0 else None for d in dims)
    dtype = np.dtype(np.float32) if as_float else np.dtype(detail["dtype"])
    if dtype.kind not in "biuf":
        raise ModelError(f"tensor {name!r} is {dtype}: expected a numeric or bool tensor")
    return TensorSpec(name, dtype, shape)


class TFLiteModel:
    """A model run by the TFLite interpreter, through its signature when it has one."""

    format = "tflite"

    def __init__(self, path: Path, threads: int = 0, quantized_io: str = "float") -> None:
        self.threads = threads  # 0: the runtime's default
        module, dist = _interpreter_module()
        self.runtime = f"{dist} {_version(dist)}"
        try:
            self._interpreter = module.Interpreter(
                model_path=str(path), num_threads=threads if threads > 0 else None
            )
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"{path}: the TFLite interpreter cannot load it: {exc}") from exc
        signatures = self._interpreter.get_signature_list()
        self._runner: Any = None
        if signatures:
            # A signature gives the names the model was exported with
            # ("window") instead of tensor names ("serving_default_window:0").
            self._runner = self._interpreter.get_signature_runner(next(iter(signatures)))
            ins = dict(self._runner.get_input_details())
            outs = dict(self._runner.get_output_details())
        else:
            ins = {d["name"]: d for d in self._interpreter.get_input_details()}
            outs = {d["name"]: d for d in self._interpreter.get_output_details()}
            self._in_index = {n: d["index"] for n, d in ins.items()}
            self._out_index = {n: d["index"] for n, d in outs.items()}
        convert = quantized_io == "float"
        self._quant_in = {n: q for n, d in ins.items() if convert and (q := _quantization(d))}
        self._quant_out = {n: q for n, d in outs.items() if convert and (q := _quantization(d))}
        self.inputs = tuple(_spec(n, d, n in self._quant_in) for n, d in ins.items())
        self.outputs = tuple(_spec(n, d, n in self._quant_out) for n, d in outs.items())
        self._shapes = {spec.name: tuple(spec.shape) for spec in self.inputs}

    def run(self, feeds: Mapping[str, Array]) -> dict[str, Value]:
        quantized = {
            name: self._quant_in[name].quantize(value) if name in self._quant_in else value
            for name, value in feeds.items()
        }
        try:
            if self._runner is not None:
                # The signature runner resizes inputs when the batch size changes.
                raw = {k: np.array(v) for k, v in self._runner(**quantized).items()}
            else:
                raw = self._run_tensors(quantized)
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"TFLite interpreter failed: {exc}") from exc
        return {
            name: self._quant_out[name].dequantize(value) if name in self._quant_out else value
            for name, value in raw.items()
        }

    def _run_tensors(self, feeds: Mapping[str, Array]) -> dict[str, Array]:
        interp = self._interpreter
        resized = False
        for name, value in feeds.items():
            if self._shapes[name] != value.shape:
                interp.resize_tensor_input(self._in_index[name], value.shape)
                self._shapes[name] = value.shape
                resized = True
        if resized:
            interp.allocate_tensors()
        for name, value in feeds.items():
            interp.set_tensor(self._in_index[name], value)
        interp.invoke()
        # get_tensor copies; tensor() would alias the interpreter's buffers.
        return {name: interp.get_tensor(i) for name, i in self._out_index.items()}

    def reset(self) -> None:
        """Streaming models keep state in variables; a fresh start forgets it."""
        self._interpreter.reset_all_variables()

    def close(self) -> None:
        self._runner = None
        del self._interpreter


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"
