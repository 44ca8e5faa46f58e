"""What the runtimes themselves answer, called directly: the reference for the module's results.

ONNX models run in a plain ``onnxruntime.InferenceSession``; TFLite models in a
fresh LiteRT interpreter, with inputs quantized and outputs dequantized by
hand from the tensors' scale and zero point (unless ``raw``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

Inputs = dict[str, np.ndarray]


def onnx_answers(path: Path, readings: list[Inputs]) -> list[dict[str, Any]]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return [dict(zip(names, session.run(names, feeds), strict=True)) for feeds in readings]


def tflite_answers(path: Path, readings: list[Inputs], raw: bool = False) -> list[dict[str, Any]]:
    """In order, on one interpreter: a streaming model's state carries from one to the next."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    signatures = interpreter.get_signature_list()
    if signatures:
        runner = interpreter.get_signature_runner(next(iter(signatures)))
        ins, outs = runner.get_input_details(), runner.get_output_details()
        run = runner
    else:
        ins = {d["name"]: d for d in interpreter.get_input_details()}
        outs = {d["name"]: d for d in interpreter.get_output_details()}

        def run(**feeds: np.ndarray) -> dict[str, np.ndarray]:
            for name, value in feeds.items():
                interpreter.set_tensor(ins[name]["index"], value)
            interpreter.invoke()
            return {name: interpreter.get_tensor(d["index"]) for name, d in outs.items()}

    answers = []
    for feeds in readings:
        given = {k: v if raw else _quantize(v, ins[k]) for k, v in feeds.items()}
        result = run(**given)
        answers.append({k: v if raw else _dequantize(v, outs[k]) for k, v in result.items()})
    return answers


def _params(detail: dict[str, Any]) -> tuple[float, int] | None:
    scale, zero = detail["quantization"]
    return (scale, zero) if scale else None


def _quantize(value: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    params = _params(detail)
    if params is None:
        return value.astype(detail["dtype"])
    info = np.iinfo(detail["dtype"])
    q = np.rint(value.astype(np.float64) / params[0]) + params[1]
    return np.clip(q, info.min, info.max).astype(detail["dtype"])


def _dequantize(value: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    params = _params(detail)
    if params is None:
        return value
    return (value.astype(np.float32) - params[1]) * params[0]
