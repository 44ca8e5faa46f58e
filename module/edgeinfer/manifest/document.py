"""A model's manifest (``manifest.json`` beside the model file) and its identity.

The manifest names the model and its version, lists class labels and carries
the self-test reading with its expected output; in the store it also records
the format, sha256, size and where the file came from. A model without a
manifest still runs, named after its file and versioned ``unversioned``.

Keys the module does not use (``trained_on``, ``accuracy``, ...) are kept as
they are: a manifest is documentation too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from edgeinfer.errors import ModelError
from edgeinfer.manifest.kinds import postprocess_from_doc, postprocess_to_doc
from edgeinfer.manifest.postprocess import PostprocessSpec
from edgeinfer.manifest.streams import StateSpec, WindowSpec
from edgeinfer.manifest.vision import CascadeSpec, PreprocessSpec

MANIFEST_NAME = "manifest.json"
UNVERSIONED = "unversioned"


@dataclass(frozen=True)
class ModelIdentity:
    """What a result says about the model that produced it."""

    name: str
    version: str
    labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class Manifest:
    """The parts of ``manifest.json`` the module uses, and the rest kept as ``extra``."""

    name: str
    version: str
    format: str | None = None
    sha256: str = ""
    size: int | None = None
    labels: tuple[str, ...] = ()
    self_test: Mapping[str, Any] = field(default_factory=dict)
    source: str | None = None
    #: Where the model does not say: the batch axis of an input or output (None: none).
    batch_axes: Mapping[str, int | None] = field(default_factory=dict)
    label_output: str | None = None
    score_output: str | None = None
    #: Quantized TFLite: "float" (quantize inputs, dequantize outputs) or "raw".
    quantized_io: str = "float"
    #: Streams of samples: the model's window, and its recurrent state per stream.
    window: WindowSpec | None = None
    state: StateSpec | None = None
    #: Camera readings: an image into the input, the outputs into labels or boxes,
    #: and where uncertain readings are escalated (docs/reference.md, "Camera readings").
    preprocess: PreprocessSpec | None = None
    postprocess: PostprocessSpec | None = None
    cascade: CascadeSpec | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def identity(self) -> ModelIdentity:
        return ModelIdentity(self.name, self.version, self.labels)

    def to_doc(self) -> dict[str, Any]:
        """The JSON document written as ``manifest.json`` (optional keys only when set)."""
        doc: dict[str, Any] = dict(self.extra)
        doc.update(name=self.name, version=self.version)
        if self.format is not None:
            doc["format"] = self.format
        if self.sha256:
            doc["sha256"] = self.sha256
        if self.size is not None:
            doc["size"] = self.size
        doc["labels"] = list(self.labels)
        doc["self_test"] = dict(self.self_test)
        if self.source is not None:
            doc["source"] = self.source
        if self.batch_axes:
            doc["batch_axes"] = dict(self.batch_axes)
        for key in ("label_output", "score_output"):
            if getattr(self, key) is not None:
                doc[key] = getattr(self, key)
        if self.quantized_io != "float":
            doc["quantized_io"] = self.quantized_io
        if self.window is not None:
            doc["window"] = self.window.to_doc()
        if self.state is not None:
            doc["state"] = self.state.to_doc()
        if self.preprocess is not None:
            doc["preprocess"] = self.preprocess.to_doc()
        if self.postprocess is not None:
            doc["postprocess"] = postprocess_to_doc(self.postprocess)
        if self.cascade is not None:
            doc["cascade"] = self.cascade.to_doc()
        return doc

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_doc(), option=orjson.OPT_INDENT_2)

    @classmethod
    def from_doc(cls, doc: object, where: str, default_name: str = "model") -> Manifest:
        """Validate a manifest document; raises ModelError naming ``where`` and the bad key."""
        if not isinstance(doc, dict):
            kind = type(doc).__name__
            raise ModelError(f"{where}: manifest is a JSON {kind}: expected an object")
        labels = doc.get("labels") or []
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise ModelError(f"{where}: labels = {labels!r}: expected a list of strings")
        self_test = doc.get("self_test") or {}
        if not isinstance(self_test, dict):
            raise ModelError(f"{where}: self_test = {self_test!r}: expected an object")
        size = doc.get("size")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
            raise ModelError(f"{where}: size = {size!r}: expected a byte count")
        fmt = doc.get("format")
        if fmt is not None and fmt not in ("onnx", "tflite"):
            raise ModelError(f'{where}: format = {fmt!r}: expected "onnx" or "tflite"')
        batch_axes = doc.get("batch_axes") or {}
        if not isinstance(batch_axes, dict) or not all(
            v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 0)
            for v in batch_axes.values()
        ):
            raise ModelError(
                f"{where}: batch_axes = {batch_axes!r}: expected {{input or output name: "
                "axis >= 0, or null for none}"
            )
        for key in ("label_output", "score_output"):
            if doc.get(key) is not None and not isinstance(doc[key], str):
                raise ModelError(f"{where}: {key} = {doc[key]!r}: expected an output name")
        quantized_io = doc.get("quantized_io", "float")
        if quantized_io not in ("float", "raw"):
            raise ModelError(f'{where}: quantized_io = {quantized_io!r}: expected "float" or "raw"')
        known = {
            "name",
            "version",
            "format",
            "sha256",
            "size",
            "labels",
            "self_test",
            "source",
            "batch_axes",
            "label_output",
            "score_output",
            "quantized_io",
            "window",
            "state",
            "preprocess",
            "postprocess",
            "cascade",
        }
        window = doc.get("window")
        state = doc.get("state")
        pre, post, cascade = (doc.get(k) for k in ("preprocess", "postprocess", "cascade"))
        return cls(
            name=str(doc.get("name") or default_name),
            version=str(doc.get("version") or UNVERSIONED),
            format=fmt,
            sha256=str(doc.get("sha256") or ""),
            size=size,
            labels=tuple(labels),
            self_test=self_test,
            source=str(doc["source"]) if doc.get("source") is not None else None,
            batch_axes=batch_axes,
            label_output=doc.get("label_output"),
            score_output=doc.get("score_output"),
            quantized_io=quantized_io,
            window=WindowSpec.from_doc(window, where) if window is not None else None,
            state=StateSpec.from_doc(state, where) if state is not None else None,
            preprocess=PreprocessSpec.from_doc(pre, where) if pre is not None else None,
            postprocess=postprocess_from_doc(post, where) if post is not None else None,
            cascade=CascadeSpec.from_doc(cascade, where) if cascade is not None else None,
            extra={k: v for k, v in doc.items() if k not in known},
        )


def load_manifest(model_path: Path) -> Manifest:
    """Read the manifest beside ``model_path``, or derive a minimal one."""
    path = model_path.parent / MANIFEST_NAME
    if not path.exists():
        return Manifest(name=model_path.stem, version=UNVERSIONED)
    try:
        doc = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ModelError(
            f"{path}: cannot read the manifest ({exc}): expected a JSON object"
        ) from exc
    return Manifest.from_doc(doc, str(path), default_name=model_path.stem)
