"""What a model's manifest declares about its outputs: ``postprocess``.

``{"type": "topk", "k": 5, "output": "probs", "activation": "softmax"}`` for
classifiers: the ``k`` best classes with their scores, named from the
manifest's ``labels``.

``{"type": "detect", "format": ..., "score_min", "iou", "max_detections"}`` for
detectors, in one of three output layouts (``format``):

* ``boxes``: already decoded, ``outputs: {"boxes", "scores", "classes"}``
  (``classes`` optional; ``box``: ``xyxy | yxyx | xywh | cxcywh``,
  ``normalized``: coordinates in 0..1 of the input rather than pixels);
* ``yolo``: one output ``[1, 4 + classes, N]`` (or ``[1, N, 4 + classes]``)
  of ``cx, cy, w, h`` in input pixels and one score per class;
* ``ssd_anchors``: raw regressors ``[1, N, >=4]`` and logits ``[1, N, classes]``
  decoded against anchors generated as MediaPipe's ``SsdAnchorsCalculator``
  does from ``anchors`` (its options), as its ``TensorsToDetectionsCalculator``
  does: ``box_scale`` (x, y, w, h scales), ``box`` (``cxcywh``, or ``cycxhw`` as
  TensorFlow's Object Detection API writes them) and ``box_size`` (``linear``,
  or ``exponential`` for that API's box coder).

Any format may name ``ignore_classes`` (a background class, say): they are
never reported.

Validated here with errors naming the key; the arithmetic is in
:mod:`edgeinfer.vision`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Self

from edgeinfer.errors import ModelError
from edgeinfer.manifest.vision import check_keys, choice, count, number, numbers

ACTIVATIONS = ("none", "softmax", "sigmoid")
FORMATS = ("boxes", "yolo", "ssd_anchors")
BOX_ORDERS = ("xyxy", "yxyx", "xywh", "cxcywh")
SSD_ORDERS = ("cxcywh", "cycxhw")  # MediaPipe's reverse_output_order true / false
#: Orders earlier versions accepted, and ignored, with ssd_anchors (their stores hold "xyxy",
#: the default they wrote): read as the x-first order they were decoded in.
LEGACY_SSD_ORDERS = ("xyxy", "yxyx", "xywh")
BOX_SIZES = ("linear", "exponential")  # MediaPipe's apply_exponential_on_box_size
#: The keys only an ``ssd_anchors`` layout reads. Beside another format ``box_size`` is
#: refused; ``anchors`` and ``box_scale`` are ignored, as earlier versions did (and stored
#: ``box_scale`` with every detector): manifests already in a store load as they did.
SSD_KEYS = ("anchors", "box_scale", "box_size")
#: Anchors a manifest may generate: BlazeFace has 896, SSD MobileNet 1,917; the cap keeps a
#: mistyped stride from allocating gigabytes at load.
MAX_ANCHORS = 1_000_000


class PostprocessSpec:
    """A validated ``postprocess`` block: one kind of it, named by its ``type``.

    A kind is a frozen dataclass with a ``TYPE``, read from the manifest by ``from_doc``
    and written back by ``to_doc``, registered in :data:`edgeinfer.manifest.kinds.KINDS`;
    what it does to a model's outputs is registered beside it in
    :data:`edgeinfer.vision.postprocessors.POSTPROCESSORS`.
    """

    #: The manifest's ``postprocess.type``.
    TYPE: ClassVar[str]
    #: Where results' labels come from, as ``edgeinfer inspect`` says it.
    LABELS_FROM: ClassVar[str]

    @classmethod
    def from_doc(cls, doc: dict[str, Any], where: str) -> Self:
        """Validate the block; raises ModelError naming the key and what was expected."""
        raise NotImplementedError

    def to_doc(self) -> dict[str, Any]:
        """The manifest's ``postprocess`` object."""
        raise NotImplementedError


@dataclass(frozen=True)
class TopKSpec(PostprocessSpec):
    """``postprocess`` of type ``topk``."""

    TYPE: ClassVar[str] = "topk"
    LABELS_FROM: ClassVar[str] = "topk"

    k: int = 5
    output: str | None = None  # None: the label rule's score output, else the first output
    activation: str = "none"

    @classmethod
    def from_doc(cls, doc: dict[str, Any], where: str) -> Self:
        doc = check_keys(doc, "postprocess", {"type", "k", "output", "activation"}, where)
        output = doc.get("output")
        if output is not None and not isinstance(output, str):
            raise ModelError(f"{where}: postprocess.output = {output!r}: expected an output name")
        return cls(
            k=count(doc.get("k", 5), "postprocess.k", where, 1, 1000),
            output=output,
            activation=choice(
                doc.get("activation", "none"), "postprocess.activation", ACTIVATIONS, where
            ),
        )

    def to_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"type": "topk", "k": self.k, "activation": self.activation}
        if self.output is not None:
            doc["output"] = self.output
        return doc


@dataclass(frozen=True)
class AnchorSpec:
    """MediaPipe ``SsdAnchorsCalculatorOptions``, as the manifest declares them."""

    num_layers: int
    strides: tuple[int, ...]
    min_scale: float
    max_scale: float
    input_width: int | None = None  # None: the model input's
    input_height: int | None = None
    anchor_offset_x: float = 0.5
    anchor_offset_y: float = 0.5
    aspect_ratios: tuple[float, ...] = (1.0,)
    fixed_anchor_size: bool = False
    interpolated_scale_aspect_ratio: float = 1.0
    reduce_boxes_in_lowest_layer: bool = False

    @classmethod
    def from_doc(cls, doc: object, where: str) -> AnchorSpec:
        """Validate ``postprocess.anchors``; raises ModelError naming the key."""
        names = set(cls.__dataclass_fields__)
        doc = check_keys(doc, "postprocess.anchors", names, where)
        name = "postprocess.anchors."
        layers = count(doc.get("num_layers"), name + "num_layers", where, 1, 64)
        strides = doc.get("strides")
        if not isinstance(strides, list) or len(strides) != layers:
            raise ModelError(
                f"{where}: {name}strides = {strides!r}: expected {layers} strides (num_layers)"
            )
        optional = {k: doc[k] for k in ("input_width", "input_height") if k in doc}
        return cls(
            num_layers=layers,
            strides=tuple(count(s, name + "strides", where, 1, 4096) for s in strides),
            min_scale=number(doc.get("min_scale"), name + "min_scale", where, 0.0, 10.0),
            max_scale=number(doc.get("max_scale"), name + "max_scale", where, 0.0, 10.0),
            **{k: count(v, name + k, where) for k, v in optional.items()},
            anchor_offset_x=number(
                doc.get("anchor_offset_x", 0.5), name + "anchor_offset_x", where
            ),
            anchor_offset_y=number(
                doc.get("anchor_offset_y", 0.5), name + "anchor_offset_y", where
            ),
            aspect_ratios=numbers(doc.get("aspect_ratios", [1.0]), name + "aspect_ratios", where),
            fixed_anchor_size=_flag(
                doc.get("fixed_anchor_size", False), name + "fixed_anchor_size", where
            ),
            interpolated_scale_aspect_ratio=number(
                doc.get("interpolated_scale_aspect_ratio", 1.0),
                name + "interpolated_scale_aspect_ratio",
                where,
            ),
            reduce_boxes_in_lowest_layer=_flag(
                doc.get("reduce_boxes_in_lowest_layer", False),
                name + "reduce_boxes_in_lowest_layer",
                where,
            ),
        )


@dataclass(frozen=True)
class DetectSpec(PostprocessSpec):
    """``postprocess`` of type ``detect``."""

    TYPE: ClassVar[str] = "detect"
    LABELS_FROM: ClassVar[str] = "detect, per detection"

    format: str
    score_min: float = 0.25
    iou: float = 0.45
    max_detections: int = 100
    outputs: tuple[tuple[str, str], ...] = ()  # (role, output name): boxes, scores, classes
    box: str = "xyxy"
    normalized: bool = False
    activation: str = "none"
    anchors: AnchorSpec | None = None
    box_scale: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    box_size: str = "linear"
    ignore_classes: tuple[int, ...] = ()

    def output(self, role: str) -> str | None:
        """The output that plays ``role`` (``boxes``, ``scores``, ``classes``), if named."""
        return dict(self.outputs).get(role)

    @classmethod
    def from_doc(cls, doc: dict[str, Any], where: str) -> Self:
        return cls(**_detect(doc, where))

    def to_doc(self) -> dict[str, Any]:
        doc = {
            "type": "detect",
            "format": self.format,
            "score_min": self.score_min,
            "iou": self.iou,
            "max_detections": self.max_detections,
            "outputs": dict(self.outputs),
            "box": self.box,
            "normalized": self.normalized,
            "activation": self.activation,
            "box_scale": list(self.box_scale),
        }
        # The keys this version added, only when used: the previous one reads the rest.
        if self.box_size != "linear":
            doc["box_size"] = self.box_size
        if self.ignore_classes:
            doc["ignore_classes"] = list(self.ignore_classes)
        if self.anchors is not None:
            doc["anchors"] = {
                k: list(v) if isinstance(v, tuple) else v
                for k, v in self.anchors.__dict__.items()
                if v is not None
            }
        return doc


def _detect(doc: dict[str, Any], where: str) -> dict[str, Any]:
    """A ``detect`` block's fields, validated."""
    known = {
        "type",
        "format",
        "score_min",
        "iou",
        "max_detections",
        "outputs",
        "box",
        "normalized",
        "activation",
        "ignore_classes",
        *SSD_KEYS,
    }
    doc = check_keys(doc, "postprocess", known, where)
    fmt = choice(doc.get("format"), "postprocess.format", FORMATS, where)
    outputs = _outputs(doc, fmt, where)
    ssd = fmt == "ssd_anchors"
    if not ssd and "box_size" in doc:
        raise ModelError(
            f"{where}: postprocess.box_size = {_brief(doc['box_size'])}: format {fmt!r} does not "
            "read it: expected it only with format 'ssd_anchors'"
        )
    box = doc.get("box", "cxcywh" if ssd else "xyxy")
    if ssd and box in LEGACY_SSD_ORDERS:
        box = "cxcywh"
    box = choice(box, "postprocess.box", SSD_ORDERS if ssd else BOX_ORDERS, where)
    anchors = doc.get("anchors")
    if ssd and anchors is None:
        raise ModelError(
            f"{where}: postprocess.anchors is missing: format 'ssd_anchors' expects the "
            "anchor options (num_layers, strides, min_scale, max_scale, ...)"
        )
    scale = numbers(doc.get("box_scale", [1.0, 1.0, 1.0, 1.0]), "postprocess.box_scale", where)
    if len(scale) != 4 or 0.0 in scale:
        raise ModelError(
            f"{where}: postprocess.box_scale = {list(scale)!r}: expected four non-zero "
            "scales (x, y, w, h)"
        )
    return dict(
        format=fmt,
        score_min=number(doc.get("score_min", 0.25), "postprocess.score_min", where, 0.0, 1.0),
        iou=number(doc.get("iou", 0.45), "postprocess.iou", where, 0.0, 1.0),
        max_detections=count(
            doc.get("max_detections", 100), "postprocess.max_detections", where, 1, 10000
        ),
        outputs=tuple(sorted(outputs.items())),
        box=box,
        normalized=_flag(doc.get("normalized", ssd), "postprocess.normalized", where),
        activation=choice(
            doc.get("activation", "sigmoid" if ssd else "none"),
            "postprocess.activation",
            ACTIVATIONS,
            where,
        ),
        anchors=None if anchors is None else AnchorSpec.from_doc(anchors, where),
        box_scale=(scale[0], scale[1], scale[2], scale[3]),
        box_size=choice(doc.get("box_size", "linear"), "postprocess.box_size", BOX_SIZES, where),
        ignore_classes=_classes(doc.get("ignore_classes", []), where),
    )


def _outputs(doc: dict[str, Any], fmt: str, where: str) -> dict[str, Any]:
    outputs = check_keys(
        doc.get("outputs", {}), "postprocess.outputs", {"boxes", "scores", "classes"}, where
    )
    for role, name in outputs.items():
        if not isinstance(name, str):
            raise ModelError(
                f"{where}: postprocess.outputs.{role} = {name!r}: expected an output name"
            )
    if fmt in ("boxes", "ssd_anchors") and not {"boxes", "scores"} <= set(outputs):
        raise ModelError(
            f"{where}: postprocess.outputs = {outputs!r}: format {fmt!r} expects the "
            "outputs named for boxes and scores"
        )
    return outputs


def _classes(value: object, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) > 100_000:
        raise ModelError(
            f"{where}: postprocess.ignore_classes = {_brief(value)}: expected a list of at most "
            "100000 class indices"
        )
    return tuple(count(v, "postprocess.ignore_classes", where, 0) for v in value)


def _brief(value: object) -> str:
    """``repr(value)``, cut short: an error message names a bad value, not a megabyte of it."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _flag(value: object, name: str, where: str) -> bool:
    if not isinstance(value, bool):
        raise ModelError(f"{where}: {name} = {value!r}: expected true or false")
    return value
