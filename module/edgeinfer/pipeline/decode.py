"""Decode stage: a reading's bytes into model-ready arrays, or a ReadingError.

Accepted payloads (docs/reference.md, "Readings"):

* ``{"features": [...], "id": ..., "ts": ...}`` for single-input models,
* ``{"inputs": {"<name>": [...] | scalar, ...}}`` for models with several inputs,
* a bare JSON array, the same as ``{"features": [...]}``,
* ``.npy`` bytes (magic ``\\x93NUMPY``) for the single input, and ``.npz``
  bytes (a zip of ``<input name>.npy``) for several, loaded without pickle,
* JPEG or PNG bytes (by their signature) for a model whose manifest declares
  ``preprocess`` (:mod:`edgeinfer.vision`),
* ``{"payload": "<base64 of any of these>", "id": ..., "ts": ...}``: a reading
  in a JSON envelope (escalated readings travel so); the envelope's id and ts win.

Each array is cast to its input's dtype and fitted to its shape around the
input's batch axis (:mod:`edgeinfer.runtimes.axes`). A reading's ``bucket``
says which readings may share a run: the same sample shapes, and the same
values for the inputs that have no batch axis.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from edgeinfer.config.sections import ImageLimits
from edgeinfer.errors import ReadingError
from edgeinfer.pipeline.fast_json import FastReadings
from edgeinfer.pipeline.npy import EMPTY_ZIP, ZIP_MAGIC, load_npy, load_npz
from edgeinfer.pipeline.npy import MAGIC as NPY_MAGIC
from edgeinfer.pipeline.tensors import fit_shape, to_input
from edgeinfer.runtimes.axes import BatchAxes, infer_batch_axes
from edgeinfer.runtimes.base import Array, TensorSpec
from edgeinfer.vision.images import ImageGuard, image_kind
from edgeinfer.vision.preprocess import Geometry, Preprocessor

Bucket = tuple[Any, ...]


@dataclass(frozen=True)
class Reading:
    """A decoded reading: one array per model input, shaped as the model takes it."""

    feeds: dict[str, Array]
    rows: int
    id: Any = None
    ts: Any = None
    bucket: Bucket = ()
    key: Any = None  # the value of the decoder's key field (streams keyed by a payload field)
    geometry: Geometry | None = None  # an image reading's: how its pixels map to the input's
    escalated: bool = False  # it came escalated by another module: not escalated again


class Decoder:
    """Turns payloads into :class:`Reading` objects for one model's inputs."""

    def __init__(
        self,
        inputs: tuple[TensorSpec, ...],
        max_bytes: int,
        allow_non_finite: bool = False,
        axes: BatchAxes | None = None,
        key_field: str | None = None,
        images: tuple[Preprocessor | None, int | ImageGuard] = (None, 0),
    ) -> None:
        """``images``: the model's preprocessor (None: no image readings), and the pixel
        limit or the engine's :class:`ImageGuard` (its scan limit, deadline and memory of
        payloads that overran, kept across model swaps)."""
        self._preprocessor, limit = images
        self._images = (
            limit if isinstance(limit, ImageGuard) else ImageGuard(ImageLimits(max_pixels=limit))
        )
        self._inputs = inputs
        self._key_field = key_field
        self._by_name = {spec.name: spec for spec in inputs}
        self._max_bytes = max_bytes
        self._allow_non_finite = allow_non_finite
        axes = axes or infer_batch_axes(inputs, ())
        self._axes = axes.inputs
        single_float = len(inputs) == 1 and inputs[0].dtype.kind == "f"
        self._fast = FastReadings() if single_float and key_field is None else None
        # A model run one reading at a time takes each reading whole: its inputs'
        # "rows" need not agree (a sequence beside a fixed state, say).
        self._batchable = axes.batchable

    def decode(self, payload: bytes) -> Reading:
        """Decode one payload; raises :class:`ReadingError` naming what was expected.

        The error carries the reading's ``id`` whenever the payload is a JSON
        object that has one, so the error report can name the reading.
        """
        if len(payload) > self._max_bytes:
            raise ReadingError(
                "oversize",
                f"payload is {len(payload)} bytes, expected at most "
                f"{self._max_bytes} (pipeline.max_payload_bytes)",
                _peek_id(payload),
            )
        if self._key_field is not None and payload[:1] not in (b"{", b" ", b"\n", b"\t", b"\r"):
            raise ReadingError(
                "bad_payload",
                f"streams are keyed by the field {self._key_field!r}: expected a JSON object "
                "that has it",
            )
        if payload.startswith(NPY_MAGIC):
            return self._from_arrays({self._single_input().name: load_npy(payload)})
        if image_kind(payload) is not None:
            return self._from_image(payload)
        if payload.startswith((ZIP_MAGIC, EMPTY_ZIP)):
            return self._from_arrays(load_npz(payload, self._max_bytes * 16))
        if self._fast is not None and (found := self._fast.read(payload)) is not None:
            numbers, rid, ts = found
            try:
                return self._from_arrays({self._inputs[0].name: numbers}, rid, ts)
            except ReadingError as exc:
                exc.rid = rid
                raise
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            if "UTF-8" in str(exc):
                raise ReadingError(
                    "bad_encoding",
                    "payload is not valid UTF-8: expected a UTF-8 JSON document or .npy bytes",
                ) from exc
            raise ReadingError(
                "bad_json",
                f"payload is not JSON ({exc}): expected a JSON object, a JSON array or .npy bytes",
            ) from exc
        if isinstance(doc, list):
            return self._from_arrays({self._single_input().name: doc})
        if not isinstance(doc, dict):
            raise ReadingError(
                "bad_payload",
                f"payload is a JSON {type(doc).__name__}: expected "
                'an object with "features" or "inputs", or an array',
            )
        if "payload" in doc:
            return self._from_envelope(doc)
        try:
            reading = self._from_arrays(self._arrays_of(doc), doc.get("id"), doc.get("ts"))
            if self._key_field is not None:
                return dataclasses.replace(reading, key=self._key_of(doc))
            return reading
        except ReadingError as exc:
            exc.rid = doc.get("id")
            raise

    def _from_image(self, payload: bytes) -> Reading:
        pre = self._preprocessor
        if pre is None:
            raise ReadingError(
                "bad_payload",
                f"payload is a {image_kind(payload) or 'image'} image but the model's manifest "
                "declares no preprocess: expected a tensor reading (JSON or .npy bytes)",
            )
        tensor, geometry = pre(self._images.decode(payload, pre.spec.color))
        reading = self._from_arrays({pre.input.name: tensor})
        return dataclasses.replace(reading, geometry=geometry)

    def _from_envelope(self, doc: dict[str, Any]) -> Reading:
        """``{"payload": base64, "id", "ts"}``: the inner reading, with the envelope's id and ts."""
        rid, ts, inner = doc.get("id"), doc.get("ts"), doc["payload"]
        try:
            raw = base64.b64decode(inner if isinstance(inner, str) else b"\x00", validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ReadingError(
                "bad_payload",
                f'"payload" is not base64 ({exc}): expected the base64 of a reading '
                "(JPEG, PNG, .npy, .npz or JSON)",
                rid,
            ) from exc
        if raw.lstrip()[:1] == b"{" and _is_envelope(raw):
            raise ReadingError(
                "bad_payload", "an envelope inside an envelope: expected one level", rid
            )
        try:
            reading = self.decode(raw)
        except ReadingError as exc:
            exc.rid = rid
            raise
        return dataclasses.replace(
            reading,
            id=rid if rid is not None else reading.id,
            ts=ts if ts is not None else reading.ts,
            escalated="escalation" in doc,
        )

    def _arrays_of(self, doc: dict[str, Any]) -> dict[str, Any]:
        if "features" in doc and "inputs" in doc:
            raise ReadingError(
                "bad_payload", 'payload has both "features" and "inputs": expected one of them'
            )
        if "features" in doc:
            return {self._single_input().name: doc["features"]}
        if "inputs" not in doc:
            raise ReadingError(
                "bad_payload",
                'payload has neither "features" nor "inputs": '
                f"expected one of them, for inputs {self._names()}",
            )
        arrays = doc["inputs"]
        if not isinstance(arrays, dict):
            raise ReadingError(
                "bad_payload",
                '"inputs" must be an object mapping input '
                f"names to arrays, expected keys {self._names()}",
            )
        return arrays

    def _key_of(self, doc: dict[str, Any]) -> str:
        field = self._key_field or ""
        if field not in doc:
            raise ReadingError(
                "bad_payload",
                f"the reading has no field {field!r}: expected it to name the stream "
                "(window.key), a string or an integer",
            )
        key = doc[field]
        if not isinstance(key, str | int) or isinstance(key, bool) or key == "":
            raise ReadingError(
                "bad_payload",
                f"{field} = {orjson.dumps(key).decode()[:100]}: expected a string or "
                "integer naming the stream (window.key)",
            )
        return str(key)

    def _names(self) -> list[str]:
        return [spec.name for spec in self._inputs]

    def _single_input(self) -> TensorSpec:
        if len(self._inputs) != 1:
            raise ReadingError(
                "bad_payload",
                f"this model has {len(self._inputs)} inputs "
                f'{self._names()}: expected {{"inputs": {{name: array}}}} or .npz bytes',
            )
        return self._inputs[0]

    def _from_arrays(self, values: dict[str, Any], rid: Any = None, ts: Any = None) -> Reading:
        missing = [name for name in self._by_name if name not in values]
        unknown = [name for name in values if name not in self._by_name]
        if missing or unknown:
            raise ReadingError(
                "bad_payload",
                f"inputs {sorted(values)} do not match the model: expected exactly {self._names()}",
            )
        feeds: dict[str, Array] = {}
        rows: dict[str, int] = {}
        for spec in self._inputs:
            arr = to_input(spec, values[spec.name], self._allow_non_finite)
            axis = self._axes.get(spec.name)
            feeds[spec.name], count = fit_shape(spec, arr, axis)
            if axis is not None:
                rows[spec.name] = count
        if not self._batchable:
            rows = {}
        if len(set(rows.values())) > 1:
            raise ReadingError(
                "wrong_shape",
                f"inputs carry different numbers of rows {rows}: "
                "expected the same batch size for every input",
            )
        return Reading(feeds, next(iter(rows.values()), 1), rid, ts, self._bucket(feeds))

    def _bucket(self, feeds: dict[str, Array]) -> Bucket:
        """Readings with the same key can be stacked along their batch axes."""
        key: list[Any] = []
        for spec in self._inputs:
            arr = feeds[spec.name]
            axis = self._axes.get(spec.name)
            if axis is None:
                # Given whole (a sample rate, say): only equal values share a run.
                raw = orjson.dumps(arr.tolist()) if arr.dtype.kind == "O" else arr.tobytes()
                digest = hashlib.blake2b(raw, digest_size=16).digest()
                key.append((arr.shape, str(arr.dtype), digest))
            else:
                key.append(arr.shape[:axis] + arr.shape[axis + 1 :])
        return tuple(key)


def _peek_id(payload: bytes) -> object:
    """The ``id`` of an oversize JSON reading, if it is not too large to look at."""
    if len(payload) > 1_048_576 or payload.lstrip()[:1] != b"{":
        return None
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return doc.get("id") if isinstance(doc, dict) else None


def _is_envelope(raw: bytes) -> bool:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False  # not JSON: the decoder says why
    return isinstance(doc, dict) and "payload" in doc
