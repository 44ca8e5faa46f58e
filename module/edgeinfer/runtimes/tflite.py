"""TFLite backend: LiteRT (``ai_edge_litert``), else ``tflite_runtime`` where installed."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgeinfer.errors import ModelError
from edgeinfer.runtimes.base import Array, Dim, TensorSpec


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


def _spec(name: str, detail: Mapping[str, Any]) -> TensorSpec:
    signature = detail.get("shape_signature")
    dims = signature if signature is not None and len(signature) else detail["shape"]
    shape: tuple[Dim, ...] = tuple(int(d) if d >= 0 else None for d in dims)
    return TensorSpec(name, np.dtype(detail["dtype"]), shape)


class TFLiteModel:
    """A model run by the TFLite interpreter, through its signature when it has one."""

    format = "tflite"

    def __init__(self, path: Path, threads: int = 0) -> None:
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
        if signatures:
            # A signature gives the names the model was exported with
            # ("window") instead of tensor names ("serving_default_window:0").
            self._runner = self._interpreter.get_signature_runner(next(iter(signatures)))
            in_details = self._runner.get_input_details()
            out_details = self._runner.get_output_details()
            self.inputs = tuple(_spec(n, d) for n, d in in_details.items())
            self.outputs = tuple(_spec(n, d) for n, d in out_details.items())
        else:
            self._runner = None
            self._in_index = {d["name"]: d["index"] for d in self._interpreter.get_input_details()}
            self._out_index = {
                d["name"]: d["index"] for d in self._interpreter.get_output_details()
            }
            self.inputs = tuple(_spec(d["name"], d) for d in self._interpreter.get_input_details())
            self.outputs = tuple(
                _spec(d["name"], d) for d in self._interpreter.get_output_details()
            )
        self._shapes = {spec.name: tuple(spec.shape) for spec in self.inputs}

    def run(self, feeds: Mapping[str, Array]) -> dict[str, Array]:
        try:
            if self._runner is not None:
                # The signature runner resizes inputs when the batch size changes.
                return {k: np.array(v) for k, v in self._runner(**feeds).items()}
            return self._run_tensors(feeds)
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"TFLite interpreter failed: {exc}") from exc

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

    def close(self) -> None:
        self._runner = None
        del self._interpreter


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"
