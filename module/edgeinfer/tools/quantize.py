"""``edgeinfer quantize``: INT8 (dynamic or static) or float16 ONNX models, validated.

ONNX only, through ``onnxruntime.quantization`` and its float16 converter;
TFLite models are quantized when they are converted (TFLiteConverter), so a
``.tflite`` is refused. The result is validated against the original on
``--eval``; below ``--min-accuracy-retention`` nothing is written.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from edgeinfer.errors import ConfigError, EdgeInferError, MissingExtraError, ModelError
from edgeinfer.manifest.document import load_manifest
from edgeinfer.runtimes import detect_format, load_model
from edgeinfer.runtimes.base import Array, Model
from edgeinfer.tools.inputs import as_reading, generate_inputs, load_npz
from edgeinfer.tools.modelbench import time_runs
from edgeinfer.tools.modelinfo import build_manifest, open_model

MODES = ("dynamic", "static", "fp16")
#: Operators left in float by static quantization (see _run_quantizer).
KEEP_FLOAT = ("Softmax",)
METHODS = ("minmax", "entropy", "percentile")


class AccuracyBarNotMet(EdgeInferError):  # noqa: N818 (reads as the outcome it is)
    """The quantized model lost more accuracy than allowed; nothing was written."""


@dataclass(frozen=True)
class QuantizeReport:
    """What ``quantize`` measured, original against quantized."""

    mode: str
    size_before: int
    size_after: int
    p50_ms_before: float
    p50_ms_after: float
    accuracy_before: float | None
    accuracy_after: float | None
    retention: float | None
    max_abs_diff: float
    eval_samples: int

    def text(self) -> str:
        def acc(v: float | None) -> str:
            return "-" if v is None else f"{v:.2%}"

        retention = "-" if self.retention is None else f"{self.retention:.4f}"
        return "\n".join(
            [
                f"{'':<22}{'original':>12}{'quantized':>12}",
                f"{'size (bytes)':<22}{self.size_before:>12}{self.size_after:>12}"
                f"   ratio {self.size_after / self.size_before:.2f}",
                f"{'p50 latency (ms)':<22}{self.p50_ms_before:>12.4f}{self.p50_ms_after:>12.4f}"
                f"   speed-up {self.p50_ms_before / self.p50_ms_after:.2f}x",
                f"{'accuracy':<22}{acc(self.accuracy_before):>12}{acc(self.accuracy_after):>12}"
                f"   retention {retention}",
                f"largest output difference {self.max_abs_diff:.4g}"
                f" over {self.eval_samples} samples",
            ]
        )


def require_tools() -> None:
    """The quantizer's own dependencies (onnx, sympy), checked before any work."""
    import importlib.util

    for module in ("onnx", "sympy", "onnxruntime.quantization"):
        try:
            found = importlib.util.find_spec(module) is not None
        except ImportError:
            found = False
        if not found:
            raise MissingExtraError("edgeinfer quantize", "tools", module)


def quantize(
    source: Path,
    out: Path,
    mode: str,
    calibration: Path | None = None,
    eval_file: Path | None = None,
    min_retention: float = 0.98,
    method: str = "minmax",
    per_channel: bool = False,
    version: str | None = None,
    on_step: Callable[[str], None] = lambda step: None,
) -> QuantizeReport:
    """Quantize ``source`` into ``out`` (and ``out``'s manifest.json); see the module doc.

    ``on_step`` is told each step as it starts (for progress).
    """
    require_tools()
    if mode not in MODES:
        raise ConfigError("--mode", mode, " or ".join(MODES))
    if method not in METHODS:
        raise ConfigError("--method", method, " or ".join(METHODS))
    if not 0 < min_retention <= 2:
        raise ConfigError("--min-accuracy-retention", min_retention, "a fraction in (0, 2]")
    if source.is_file():
        try:
            fmt = detect_format(source)
        except ModelError as exc:
            raise ConfigError("MODEL", str(source), f"an ONNX model ({exc})") from exc
        if fmt != "onnx":  # refused before loading: nothing to gain from a TFLite runtime
            raise ConfigError(
                "MODEL",
                str(source),
                "an ONNX model: quantize works on ONNX "
                "only (TFLite models are quantized when converted, with "
                "TFLiteConverter)",
            )
    original, _ = open_model(source)
    if out.suffix != ".onnx":
        raise ConfigError("OUT", str(out), "a path ending in .onnx")
    if mode == "static" and calibration is None:
        raise ConfigError("--calibration", None, "a .npz of real inputs for --mode static")
    calib = load_npz(calibration, original.inputs, "--calibration")[0] if calibration else None
    if eval_file is not None:
        eval_feeds, extra = load_npz(eval_file, original.inputs, "--eval", extra=("labels",))
        labels: Array | None = extra["labels"]
    else:
        eval_feeds, labels = generate_inputs(original.inputs, batch=16, seed=2), None
    with tempfile.TemporaryDirectory(prefix="edgeinfer-quantize-") as tmp:
        work = Path(tmp) / "quantized.onnx"
        rows = f" (calibrating on {len(next(iter(calib.values())))} samples)" if calib else ""
        on_step(f"quantizing: {mode}{rows}")
        _run_quantizer(source, work, mode, calib, method, per_channel, Path(tmp))
        quantized = load_model(work)
        on_step("validating against the original")
        report = _validate(mode, source, work, original, quantized, eval_feeds, labels)
        if report.retention is not None and report.retention < min_retention:
            raise AccuracyBarNotMet(
                f"accuracy retention {report.retention:.4f} is below "
                f"--min-accuracy-retention {min_retention}: nothing written\n{report.text()}"
            )
        # Only now does anything appear under OUT: model and manifest together.
        manifest = _manifest_for(source, work, mode, version, eval_feeds)
        out.parent.mkdir(parents=True, exist_ok=True)
        staged = out.with_name(f".{out.name}.tmp")
        shutil.copyfile(work, staged)
        (out.parent / "manifest.json").write_bytes(
            orjson.dumps(manifest, option=orjson.OPT_INDENT_2)
        )
        staged.replace(out)
    return report


def _run_quantizer(
    source: Path,
    work: Path,
    mode: str,
    calib: dict[str, Array] | None,
    method: str,
    per_channel: bool,
    tmp: Path,
) -> None:
    try:
        import onnx
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_dynamic,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as exc:
        raise MissingExtraError("edgeinfer quantize", "tools", exc.name or str(exc)) from exc
    if mode == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        onnx.save(convert_float_to_float16(onnx.load(str(source)), keep_io_types=True), str(work))
        return
    # Shape inference and graph optimisation first, as onnxruntime recommends.
    pre = tmp / "preprocessed.onnx"
    with _quiet_root_logger():
        quant_pre_process(str(source), str(pre))
    if mode == "dynamic":
        with _quiet_root_logger():
            quantize_dynamic(
                str(pre), str(work), weight_type=QuantType.QInt8, per_channel=per_channel
            )
        return
    if calib is None:
        raise ConfigError("--calibration", None, "a .npz of real inputs for --mode static")
    data: dict[str, Array] = calib
    rows = len(next(iter(data.values())))
    samples = [{k: v[row : row + 1] for k, v in data.items()} for row in range(rows)]

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._samples = iter(samples)

        def get_next(self) -> dict[str, Array] | None:
            return next(self._samples, None)

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    from onnxruntime.quantization.registry import QDQRegistry

    # Softmax stays float: quantized, a classifier's probabilities come in steps of
    # 1/256 (every confident score reads 0.996), for no size or speed to speak of.
    ops = [op for op in QDQRegistry if op not in KEEP_FLOAT]
    with _quiet_root_logger():
        quantize_static(
            str(pre),
            str(work),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            calibrate_method=methods[method],
            op_types_to_quantize=ops,
        )


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    # onnxruntime.quantization logs advice about optional steps on the root
    # logger; keep the report readable, and restore the level afterwards.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _outputs(model: Model, feeds: dict[str, Array]) -> npt.NDArray[np.float64]:
    """The first output for every row, one sample at a time (works for any batch dim)."""
    rows = len(next(iter(feeds.values())))
    outs = [
        next(iter(model.run({k: v[i : i + 1] for k, v in feeds.items()}).values()))
        for i in range(rows)
    ]
    return np.concatenate([np.asarray(o, dtype=np.float64) for o in outs])


def _validate(
    mode: str,
    source: Path,
    work: Path,
    original: Model,
    quantized: Model,
    feeds: dict[str, Array],
    labels: Array | None,
) -> QuantizeReport:
    before = _outputs(original, feeds)
    after = _outputs(quantized, feeds)
    acc_before = acc_after = retention = None
    if labels is not None:
        acc_before = float((before.reshape(len(before), -1).argmax(axis=1) == labels).mean())
        acc_after = float((after.reshape(len(after), -1).argmax(axis=1) == labels).mean())
        retention = acc_after / acc_before if acc_before > 0 else 1.0
    single = {k: v[:1] for k, v in feeds.items()}
    times: dict[int, list[float]] = {0: [], 1: []}
    for _ in range(5):  # interleaved, so machine noise does not favour one
        for index, model in enumerate((original, quantized)):
            time_runs(model, single, 10)
            times[index] += time_runs(model, single, 40)
    return QuantizeReport(
        mode=mode,
        size_before=source.stat().st_size,
        size_after=work.stat().st_size,
        p50_ms_before=round(float(np.percentile(times[0], 50)) * 1000, 4),
        p50_ms_after=round(float(np.percentile(times[1], 50)) * 1000, 4),
        accuracy_before=acc_before,
        accuracy_after=acc_after,
        retention=None if retention is None else round(retention, 4),
        max_abs_diff=float(np.abs(before - after).max()),
        eval_samples=len(before),
    )


def _manifest_for(
    source: Path, work: Path, mode: str, version: str | None, feeds: dict[str, Array]
) -> dict[str, Any]:
    src = load_manifest(source)
    reading = src.self_test.get("inputs") if src.self_test else None
    tag = {"dynamic": "int8-dynamic", "static": "int8-static", "fp16": "fp16"}[mode]
    return build_manifest(
        work,
        src.name,
        version or f"{src.version}+{tag}",
        list(src.labels),
        reading if isinstance(reading, dict) else as_reading(feeds),
        atol=1e-3,  # quantized kernels differ a little more between CPUs
    )


def report_json(report: QuantizeReport) -> dict[str, Any]:
    return asdict(report)
