"""Defaults from a TFLite model's metadata: colour space, normalisation and labels.

A ``.tflite`` file may carry a ``TFLITE_METADATA`` buffer (tflite-support's
``metadata_schema.fbs``, file identifier ``M001``) and a zip appended to the
flatbuffer holding its associated files. Only what a camera reading needs is
read: the first input tensor's ``ImageProperties.color_space`` and
``NormalizationOptions`` (``(pixel - mean) / std`` on raw pixel values), and
the first output tensor's ``TENSOR_AXIS_LABELS`` file.

:func:`with_metadata_defaults` fills what a manifest leaves out; the manifest
always wins. A model without metadata gives nothing; a malformed buffer is
logged and ignored, never raised.
"""

from __future__ import annotations

import io
import logging
import struct
import zipfile
from dataclasses import dataclass, replace
from typing import Any

from edgeinfer.errors import ModelError
from edgeinfer.manifest.document import Manifest
from edgeinfer.manifest.vision import PreprocessSpec
from edgeinfer.runtimes.base import TensorSpec

try:  # flatbuffers comes with ai-edge-litert, on the platforms that have TFLite models
    from flatbuffers import encode, number_types
    from flatbuffers.table import Table
except ImportError:  # pragma: no cover
    Table = None

log = logging.getLogger(__name__)

METADATA_NAME = "TFLITE_METADATA"
_MAX_ITEMS = 1 << 16  # more entries than this in any vector read here: malformed

# Enum values and field ids from tflite-support 0.4.4's metadata_schema.fbs.
_COLORS = {1: "RGB", 2: "GRAYSCALE"}  # ColorSpaceType
_IMAGE_PROPERTIES = 2  # ContentProperties union: ImageProperties
_NORMALIZATION_OPTIONS = 1  # ProcessUnitOptions union: NormalizationOptions
_TENSOR_AXIS_LABELS = 2  # AssociatedFileType


@dataclass(frozen=True)
class TfliteMetadata:
    """What the metadata says; None for what it does not."""

    color: str | None = None  # "RGB" or "L"
    mean: tuple[float, ...] | None = None  # on raw pixel values (scale 1)
    std: tuple[float, ...] | None = None
    labels: tuple[str, ...] | None = None


def _slot(field_id: int) -> int:
    return 4 + 2 * field_id


def _table(tab: Table, field_id: int) -> Table | None:
    o = tab.Offset(_slot(field_id))
    return Table(tab.Bytes, tab.Indirect(o + tab.Pos)) if o else None


def _tables(tab: Table, field_id: int) -> list[Table]:
    o = tab.Offset(_slot(field_id))
    if not o:
        return []
    n = tab.VectorLen(o)
    if n > _MAX_ITEMS:
        raise ValueError(f"a vector of {n} tables")
    start = tab.Vector(o)
    return [Table(tab.Bytes, tab.Indirect(start + 4 * j)) for j in range(n)]


def _floats(tab: Table, field_id: int) -> tuple[float, ...]:
    o = tab.Offset(_slot(field_id))
    if not o:
        return ()
    n = tab.VectorLen(o)
    if n > _MAX_ITEMS:
        raise ValueError(f"a vector of {n} floats")
    start = tab.Vector(o)
    return tuple(float(tab.Get(number_types.Float32Flags, start + 4 * j)) for j in range(n))


def _byte(tab: Table, field_id: int) -> int:
    o = tab.Offset(_slot(field_id))
    return int(tab.Get(number_types.Int8Flags, o + tab.Pos)) if o else 0


def _string(tab: Table, field_id: int) -> str | None:
    o = tab.Offset(_slot(field_id))
    return bytes(tab.String(o + tab.Pos)).decode("utf-8") if o else None


def _union(tab: Table, type_id: int, wanted: int) -> Table | None:
    """The union value stored after its type field (``type_id``), if of type ``wanted``."""
    if _byte(tab, type_id) != wanted:
        return None
    o = tab.Offset(_slot(type_id + 1))
    if not o:
        return None
    found = Table(bytearray(), 0)
    tab.Union(found, o)
    return found


def _metadata_buffer(model: bytes) -> bytes | None:
    """The ``TFLITE_METADATA`` buffer's bytes, or None when the model has none."""
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:  # no LiteRT on this platform: no TFLite models either
        return None
    root = schema.Model.GetRootAs(model, 0)
    for i in range(root.MetadataLength()):
        entry = root.Metadata(i)
        if entry.Name() != METADATA_NAME.encode():
            continue
        index = int(entry.Buffer())
        if not 0 <= index < root.BuffersLength():
            raise ValueError(f"metadata names buffer {index}, which is absent")
        buffer = root.Buffers(index)
        if buffer.DataLength():
            return bytes(buffer.DataAsNumpy().tobytes())
        offset, size = int(buffer.Offset()), int(buffer.Size())
        if offset > 1 and size and offset + size <= len(model):
            return model[offset : offset + size]
        raise ValueError("the metadata buffer is empty")
    return None


def _labels(model: bytes, name: str) -> tuple[str, ...] | None:
    try:
        with zipfile.ZipFile(io.BytesIO(model)) as archive:
            text = archive.read(name).decode("utf-8")
    except (zipfile.BadZipFile, KeyError, UnicodeDecodeError) as exc:
        log.warning("TFLite metadata names the label file %r, which cannot be read (%s)", name, exc)
        return None
    return tuple(line.strip() for line in text.splitlines())


def _parse(model: bytes, meta: bytes) -> TfliteMetadata:
    if meta[4:8] != b"M001":
        raise ValueError(f"file identifier {meta[4:8]!r}: expected b'M001'")
    root = Table(meta, encode.Get(number_types.UOffsetTFlags.packer_type, meta, 0))
    subgraphs = _tables(root, 3)  # ModelMetadata.subgraph_metadata
    if not subgraphs:
        return TfliteMetadata()
    inputs, outputs = _tables(subgraphs[0], 2), _tables(subgraphs[0], 3)
    color, mean, std, labels = None, None, None, None
    if inputs:
        content = _table(inputs[0], 3)  # TensorMetadata.content
        image = _union(content, 0, _IMAGE_PROPERTIES) if content is not None else None
        space = _COLORS.get(_byte(image, 0)) if image is not None else None
        color = {"RGB": "RGB", "GRAYSCALE": "L"}.get(space or "")
        for unit in _tables(inputs[0], 4):  # TensorMetadata.process_units
            options = _union(unit, 0, _NORMALIZATION_OPTIONS)
            if options is not None:
                mean, std = _floats(options, 0) or None, _floats(options, 1) or None
                break
    if outputs:
        for file in _tables(outputs[0], 6):  # TensorMetadata.associated_files
            name = _string(file, 0)
            if _byte(file, 2) == _TENSOR_AXIS_LABELS and name:
                labels = _labels(model, name)
                break
    return TfliteMetadata(color, mean, std, labels)


def read_metadata(model: bytes) -> TfliteMetadata | None:
    """The metadata's defaults; None for a model without metadata (or not TFLite)."""
    if model[4:8] != b"TFL3" or Table is None:
        return None
    try:
        meta = _metadata_buffer(model)
        return None if meta is None else _parse(model, meta)
    except (ValueError, IndexError, TypeError, struct.error, UnicodeDecodeError) as exc:
        log.warning("the model's TFLite metadata cannot be read (%s): ignored", exc)
        return None


def with_metadata_defaults(
    manifest: Manifest, model: bytes, inputs: tuple[TensorSpec, ...]
) -> tuple[Manifest, frozenset[str]]:
    """``manifest`` with what it leaves out taken from the model's TFLite metadata.

    Returns the manifest and what came from the metadata (``color``,
    ``normalize``, ``labels``). Colour and normalisation only for a manifest
    declaring ``preprocess`` (even ``{}``) and, for normalisation, a float
    input (a raw integer input takes pixels as they are); labels when the
    manifest has none. Raises ModelError when the result does not hold together.
    """
    meta = read_metadata(model)
    if meta is None:
        return manifest, frozenset()
    used: set[str] = set()
    changes: dict[str, Any] = {}
    if not manifest.labels and meta.labels:
        changes["labels"] = meta.labels
        used.add("labels")
    pre = manifest.preprocess
    if pre is not None:
        doc = pre.to_doc()
        if "color" in pre.defaulted and meta.color is not None:
            doc["color"] = meta.color
            used.add("color")
        chosen = [s for s in inputs if s.name == pre.input] if pre.input else list(inputs)
        floating = len(chosen) == 1 and chosen[0].dtype.kind == "f"
        if "normalize" in pre.defaulted and meta.mean and meta.std and floating:
            doc["normalize"] = {"scale": 1.0, "mean": list(meta.mean), "std": list(meta.std)}
            used.add("normalize")
        if used - {"labels"}:
            where = "preprocess with defaults from the model's TFLite metadata"
            try:
                changes["preprocess"] = PreprocessSpec.from_doc(doc, where)
            except ModelError as exc:
                raise ModelError(f"{exc} (declare it in the manifest)") from exc
    return (replace(manifest, **changes) if changes else manifest), frozenset(used)
