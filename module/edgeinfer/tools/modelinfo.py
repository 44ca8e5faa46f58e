"""``edgeinfer inspect``: what a model file is, and a manifest ready for the desired state."""

from __future__ import annotations

import contextlib
import hashlib
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from edgeinfer.errors import ConfigError, ModelError, UpdateError
from edgeinfer.manifest.document import load_manifest
from edgeinfer.pipeline.decode import Decoder
from edgeinfer.runtimes import detect_format, load_model
from edgeinfer.runtimes.axes import infer_batch_axes
from edgeinfer.runtimes.base import Model, TensorSpec
from edgeinfer.runtimes.labels import LabelRule
from edgeinfer.serving.admission import TEST_IMAGE_MAX_PIXELS
from edgeinfer.serving.probe import verify_axes
from edgeinfer.serving.selftest import test_feeds
from edgeinfer.tools.inputs import as_reading, generate_inputs, load_npz
from edgeinfer.tools.visioninfo import vision_lines
from edgeinfer.vision.preprocess import Preprocessor


@dataclass(frozen=True)
class ModelInfo:
    """What ``inspect`` prints."""

    path: Path
    format: str
    runtime: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    version: str  # ONNX opsets, or the TFLite schema version
    producer: str
    size: int
    sha256: str
    batching: str = ""  # the batch axes and whether readings share a run
    label: str = ""  # where label and score come from
    #: The manifest's preprocess, postprocess and cascade, as (heading, text).
    vision: tuple[tuple[str, str], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        def tensor(s: TensorSpec) -> dict[str, Any]:
            return {
                "name": s.name,
                "dtype": s.dtype.name,
                "shape": [d if isinstance(d, int) and d >= 0 else (d or "?") for d in s.shape],
            }

        return {
            "path": str(self.path),
            "format": self.format,
            "runtime": self.runtime,
            "inputs": [tensor(s) for s in self.inputs],
            "outputs": [tensor(s) for s in self.outputs],
            "version": self.version,
            "producer": self.producer,
            "size": self.size,
            "sha256": self.sha256,
            "batching": self.batching,
            "label": self.label,
            **({"vision": dict(self.vision)} if self.vision else {}),
        }

    def text(self) -> str:
        lines = [
            f"{self.path}",
            f"  format    {self.format} ({self.version})",
            f"  runtime   {self.runtime}",
            f"  producer  {self.producer or 'unknown'}",
            f"  size      {self.size} bytes",
            f"  sha256    {self.sha256}",
        ]
        lines += [f"  input     {s.describe()}" for s in self.inputs]
        lines += [f"  output    {s.describe()}" for s in self.outputs]
        lines += [f"  batch     {self.batching}", f"  label     {self.label}"]
        lines += [f"  {heading:<11} {text}" for heading, text in self.vision]
        return "\n".join(lines)


def open_model(path: Path, flag: str = "MODEL", threads: int = 0) -> tuple[Model, str]:
    """Load ``path``; a missing file or one that is no model is a usage error (exit 2)."""
    if not path.is_file():
        raise ConfigError(flag, str(path), "an existing ONNX or TFLite model file")
    try:
        fmt = detect_format(path)
        return load_model(path, threads=threads), fmt
    except ModelError as exc:
        raise ConfigError(flag, str(path), f"an ONNX or TFLite model ({exc})") from exc


def describe(path: Path, sample: Path | None = None) -> ModelInfo:
    model, fmt = open_model(path)
    try:
        batching, label = _behaviour(model, path, sample)
        vision = tuple(vision_lines(model, load_manifest(path), path.read_bytes()))
    except BaseException:
        model.close()
        raise
    data = path.read_bytes()
    if fmt == "onnx":
        version, producer = _onnx_meta(data)
    else:
        version, producer = f"TFLite schema version {_tflite_version(data)}", ""
    info = ModelInfo(
        path,
        fmt,
        model.runtime,
        model.inputs,
        model.outputs,
        version,
        producer,
        len(data),
        hashlib.sha256(data).hexdigest(),
        batching,
        label,
        vision,
    )
    model.close()
    return info


def _behaviour(model: Model, path: Path, sample: Path | None) -> tuple[str, str]:
    """How the module will batch the model (checked on it) and where its label comes from."""
    manifest = load_manifest(path)
    axes = infer_batch_axes(model.inputs, model.outputs, manifest.batch_axes)
    reading = sample_reading(model, sample) if sample else manifest.self_test.get("inputs")
    images: tuple[Preprocessor | None, int] = (None, 0)
    if manifest.preprocess is not None:
        with contextlib.suppress(ModelError):  # what does not fit: vision_lines says it
            images = (Preprocessor(manifest.preprocess, model.inputs), TEST_IMAGE_MAX_PIXELS)
    try:
        feeds = test_feeds(model, reading, axes, images)
        axes = verify_axes(model, axes, feeds)
        batching = axes.describe()
    except (UpdateError, ModelError) as exc:
        batching = f"{axes.describe()}; not checked on the model: {exc}"
    rule = LabelRule.find(
        model.outputs, manifest.labels, manifest.label_output, manifest.score_output
    )
    if manifest.postprocess is not None:  # its fields replace the label rule's
        label = f"from postprocess {manifest.postprocess.LABELS_FROM} (labels: see postprocess)"
    elif rule is None:
        label = "none (no label output; no labels in a manifest)"
    elif rule.label_output is not None:
        label = f"output {rule.label_output!r}, score from {rule.score_output!r}"
    else:
        label = f"argmax of {rule.score_output!r}, named by the manifest's labels"
    return batching, label


def _onnx_meta(data: bytes) -> tuple[str, str]:
    try:
        import onnx
    except ImportError:
        return "opset unknown (install edgeinfer[tools] for onnx)", ""
    proto = onnx.load_from_string(data)
    opsets = ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in proto.opset_import)
    producer = f"{proto.producer_name} {proto.producer_version}".strip()
    return f"IR {proto.ir_version}, opset {opsets}", producer


def _tflite_version(data: bytes) -> int:
    # Model table: root offset at 0; field 0 of its vtable is the schema version.
    root = struct.unpack_from("<I", data, 0)[0]
    vtable = root - struct.unpack_from("<i", data, root)[0]
    field = (
        struct.unpack_from("<H", data, vtable + 4)[0]
        if struct.unpack_from("<H", data, vtable)[0] > 4
        else 0
    )
    return int(struct.unpack_from("<I", data, root + field)[0]) if field else 0


def read_labels(path: Path) -> list[str]:
    """Labels from a JSON list or a text file of one label per line."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError("--labels", str(path), f"a readable file ({exc.strerror})") from exc
    if text.lstrip().startswith("["):
        labels = orjson.loads(text)
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise ConfigError("--labels", str(path), "a JSON list of strings")
        return labels
    return [line.strip() for line in text.splitlines() if line.strip()]


def sample_reading(model: Model, sample: Path | None) -> dict[str, Any]:
    """The self-test reading: from ``--sample`` (.json reading, .npy, .npz) or generated."""
    if sample is None:
        # Shaped by the batch axes the module will find (an image's named width is no batch).
        axes = infer_batch_axes(model.inputs, model.outputs).inputs
        return as_reading(generate_inputs(model.inputs, axes=axes))
    if sample.suffix == ".npz":
        feeds, _ = load_npz(sample, model.inputs, "--sample")
        return as_reading(feeds)
    try:
        if sample.suffix == ".npy":
            return {"features": np.load(sample, allow_pickle=False).tolist()}
        reading = orjson.loads(sample.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(
            "--sample", str(sample), f"a .json reading, .npy or .npz ({exc})"
        ) from exc
    if not isinstance(reading, dict | list):
        raise ConfigError("--sample", str(sample), "a JSON reading (object or array)")
    return reading if isinstance(reading, dict) else {"features": reading}


def build_manifest(
    path: Path,
    name: str,
    version: str,
    labels: list[str],
    reading: dict[str, Any],
    atol: float = 1e-4,
) -> dict[str, Any]:
    """A manifest whose self-test golden output is computed by this very model."""
    model, fmt = open_model(path)
    try:
        axes = infer_batch_axes(model.inputs, model.outputs)  # as the module will decode it
        feeds = Decoder(model.inputs, 1 << 26, axes=axes).decode(orjson.dumps(reading)).feeds
    except Exception as exc:  # ReadingError: the sample does not fit
        raise ConfigError(
            "--sample", reading.keys(), f"a reading that fits the model ({exc})"
        ) from exc
    outputs = model.run(feeds)
    timings = []
    for _ in range(20):
        started = time.perf_counter()
        model.run(feeds)
        timings.append((time.perf_counter() - started) * 1000)
    model.close()
    first = next(iter(outputs))
    value = np.asarray(outputs[first])
    expect: dict[str, Any] = {"output": first, "shape": list(value.shape)}
    if value.size and value.min() >= 0 and value.max() <= 1:
        expect.update(min=0, max=1)  # probabilities
    data = path.read_bytes()
    # A slower gateway than this machine must still pass: 20x, at least 50 ms.
    max_latency = max(50.0, round(float(np.percentile(timings, 95)) * 20, 1))
    return {
        "name": name,
        "version": version,
        "format": fmt,
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "labels": labels,
        "self_test": {
            "inputs": reading,
            "expect": expect,
            "golden": {k: np.asarray(v).tolist() for k, v in outputs.items()},
            "atol": atol,
            "max_latency_ms": max_latency,
        },
    }
