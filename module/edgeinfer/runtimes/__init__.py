"""Inference runtimes behind one interface, and the registry that picks one for a file.

The format is read from the file's content, not only its name: a TFLite
flatbuffer carries the identifier ``TFL3`` at byte 4, an ONNX protobuf starts
with its ``ir_version`` field (tag byte 0x08).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from edgeinfer.errors import ModelError
from edgeinfer.runtimes.base import Model, TensorSpec

__all__ = ["Model", "TensorSpec", "detect_format", "load_model"]

FORMATS = ("onnx", "tflite")


def detect_format(path: Path) -> str:
    """Return ``onnx`` or ``tflite`` from the file's first bytes.

    Raises:
        ModelError: the file is missing or is neither format.
    """
    try:
        with path.open("rb") as handle:
            head = handle.read(8)
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the model file ({exc.strerror})") from exc
    if head[4:8] == b"TFL3":
        return "tflite"
    if head[:1] == b"\x08":
        return "onnx"
    raise ModelError(
        f"{path}: not a model file: expected an ONNX protobuf or a TFLite flatbuffer "
        f"(first bytes {head!r})"
    )


def load_model(
    path: str | Path,
    threads: int = 0,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    quantized_io: str = "float",
) -> Model:
    """Load ``path`` with the runtime its content calls for.

    ``quantized_io`` (TFLite): ``float`` quantizes inputs and dequantizes
    outputs of a quantized model, ``raw`` passes its integers through.
    """
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "tflite":
        from edgeinfer.runtimes.tflite import TFLiteModel

        return TFLiteModel(path, threads=threads, quantized_io=quantized_io)
    from edgeinfer.runtimes.onnx import OnnxModel

    return OnnxModel(path, threads=threads, providers=providers)
