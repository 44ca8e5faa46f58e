"""What a vision model's manifest declares: ``preprocess`` and ``cascade``.

Validated here, once, with errors that name the key, the bad value and what
was expected; the manifest (and so an over-the-air update) is refused
otherwise, leaving the old model serving. The arithmetic lives in
:mod:`edgeinfer.vision`; ``postprocess`` is in :mod:`edgeinfer.manifest.postprocess`.

``preprocess`` turns a decoded image into the model's input::

    {"input": "x", "color": "RGB" | "BGR" | "L",
     "resize": {"mode": "stretch" | "fit" | "crop", "width": 224, "height": 224,
                "interpolation": "bilinear", "pad": 114},
     "normalize": {"scale": 0.00392, "mean": [0.485, ...], "std": [0.229, ...]},
     "layout": "NHWC" | "NCHW", "dtype": "float32"}

applied as ``(pixel * scale - mean) / std``; ``offset`` may stand for
``-mean``. Width, height, layout and dtype default to what the model's input
says; colour and normalisation left out are taken from a TFLite model's
metadata when it carries some (:mod:`edgeinfer.vision.tflite_metadata`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from edgeinfer.errors import ModelError
from edgeinfer.topics import TopicTemplate

COLORS = ("RGB", "BGR", "L")
RESIZE_MODES = ("stretch", "fit", "crop")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")
LAYOUTS = ("NHWC", "NCHW")
#: The largest input side preprocess makes: 4096 x 4096 x 3 float32 is 200 MB per reading
#: already; a mistyped 40000 would ask for gigabytes at the first image.
MAX_SIDE = 4096
DTYPES = ("float32", "float16", "uint8", "int8", "int16", "int32", "int64", "float64")


def check_keys(doc: object, name: str, known: set[str], where: str) -> dict[str, Any]:
    """``doc`` as an object with only ``known`` keys; raises ModelError otherwise."""
    if not isinstance(doc, dict):
        raise ModelError(f"{where}: {name} = {doc!r}: expected an object")
    unknown = sorted(set(doc) - known)
    if unknown:
        raise ModelError(f"{where}: {name} has unknown keys {unknown}: expected {sorted(known)}")
    return doc


def choice(value: object, name: str, allowed: tuple[str, ...], where: str) -> str:
    """``value`` if it is one of ``allowed``; raises ModelError otherwise."""
    if value not in allowed:
        raise ModelError(f"{where}: {name} = {value!r}: expected one of {list(allowed)}")
    return str(value)


def number(
    value: object, name: str, where: str, low: float = -math.inf, high: float = math.inf
) -> float:
    """``value`` as a finite float in ``low..high``; raises ModelError otherwise."""
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not (low <= float(value) <= high) or not math.isfinite(float(value)):  # type: ignore[arg-type]
        raise ModelError(f"{where}: {name} = {value!r}: expected a number in {low}..{high}")
    return float(value)  # type: ignore[arg-type]


def count(value: object, name: str, where: str, low: int = 1, high: int = 1 << 20) -> int:
    """``value`` as an integer in ``low..high``; raises ModelError otherwise."""
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ModelError(f"{where}: {name} = {value!r}: expected an integer in {low}..{high}")
    return value


def numbers(value: object, name: str, where: str) -> tuple[float, ...]:
    """A number or a list of numbers (one per channel) as a tuple."""
    if isinstance(value, list) and value:
        return tuple(number(v, name, where) for v in value)
    return (number(value, name, where),)


@dataclass(frozen=True)
class ResizeSpec:
    """``preprocess.resize``: the model input's size and how the image is fitted to it."""

    mode: str = "stretch"
    width: int | None = None  # None: the model input's
    height: int | None = None
    interpolation: str = "bilinear"
    pad: int = 0  # the letterbox's fill value (0..255), for "fit"

    @classmethod
    def from_doc(cls, doc: object, where: str) -> ResizeSpec:
        known = {"mode", "width", "height", "interpolation", "pad"}
        doc = check_keys(doc, "preprocess.resize", known, where)
        width, height = doc.get("width"), doc.get("height")
        return cls(
            mode=choice(doc.get("mode", "stretch"), "preprocess.resize.mode", RESIZE_MODES, where),
            width=None
            if width is None
            else count(width, "preprocess.resize.width", where, 1, MAX_SIDE),
            height=None
            if height is None
            else count(height, "preprocess.resize.height", where, 1, MAX_SIDE),
            interpolation=choice(
                doc.get("interpolation", "bilinear"),
                "preprocess.resize.interpolation",
                INTERPOLATIONS,
                where,
            ),
            pad=count(doc.get("pad", 0), "preprocess.resize.pad", where, 0, 255),
        )


@dataclass(frozen=True)
class PreprocessSpec:
    """``manifest.preprocess``: an image reading into the model's input tensor."""

    input: str | None = None  # None: the model's only input
    color: str = "RGB"
    resize: ResizeSpec = ResizeSpec()
    scale: float = 1.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: str | None = None  # None: from the input's shape
    dtype: str | None = None  # None: the input's
    #: ``color`` and ``normalize`` when the manifest left them out (TFLite metadata may fill them).
    defaulted: frozenset[str] = field(default=frozenset(), compare=False)

    @classmethod
    def from_doc(cls, doc: object, where: str) -> PreprocessSpec:
        """Validate ``manifest.preprocess``; raises ModelError naming the key."""
        known = {"input", "color", "resize", "normalize", "layout", "dtype"}
        doc = check_keys(doc, "preprocess", known, where)
        norm = check_keys(
            doc.get("normalize", {}),
            "preprocess.normalize",
            {"scale", "mean", "std", "offset"},
            where,
        )
        if "mean" in norm and "offset" in norm:
            raise ModelError(
                f"{where}: preprocess.normalize has both mean and offset: expected one of them"
            )
        mean = numbers(norm.get("mean", 0.0), "preprocess.normalize.mean", where)
        if "offset" in norm:
            mean = tuple(-v for v in numbers(norm["offset"], "preprocess.normalize.offset", where))
        std = numbers(norm.get("std", 1.0), "preprocess.normalize.std", where)
        if any(v == 0 for v in std):
            raise ModelError(f"{where}: preprocess.normalize.std = {std!r}: expected no zeros")
        color = choice(doc.get("color", "RGB"), "preprocess.color", COLORS, where)
        channels = 1 if color == "L" else 3
        for name, values in (("mean", mean), ("std", std)):
            if len(values) not in (1, channels):
                raise ModelError(
                    f"{where}: preprocess.normalize.{name} has {len(values)} values: expected "
                    f"1 or {channels} (one per {color} channel)"
                )
        inp = doc.get("input")
        if inp is not None and not isinstance(inp, str):
            raise ModelError(f"{where}: preprocess.input = {inp!r}: expected an input name")
        layout, dtype = doc.get("layout"), doc.get("dtype")
        return cls(
            input=inp,
            color=color,
            resize=ResizeSpec.from_doc(doc.get("resize", {}), where),
            scale=number(norm.get("scale", 1.0), "preprocess.normalize.scale", where),
            mean=mean,
            std=std,
            layout=None if layout is None else choice(layout, "preprocess.layout", LAYOUTS, where),
            dtype=None if dtype is None else choice(dtype, "preprocess.dtype", DTYPES, where),
            defaulted=frozenset(k for k in ("color", "normalize") if k not in doc),
        )

    def to_doc(self) -> dict[str, Any]:
        """The manifest's ``preprocess`` object."""
        r = self.resize
        doc: dict[str, Any] = {
            "color": self.color,
            "resize": {"mode": r.mode, "interpolation": r.interpolation, "pad": r.pad},
            "normalize": {"scale": self.scale, "mean": list(self.mean), "std": list(self.std)},
        }
        for key in self.defaulted:  # left out again, so that TFLite metadata may still fill it
            doc.pop(key, None)
        for key in ("width", "height"):
            if getattr(r, key) is not None:
                doc["resize"][key] = getattr(r, key)
        for key in ("input", "layout", "dtype"):
            if getattr(self, key) is not None:
                doc[key] = getattr(self, key)
        return doc


@dataclass(frozen=True)
class CascadeSpec:
    """``manifest.cascade`` (or ``[cascade]``): where uncertain readings go, and how many.

    A reading is uncertain when its top score is below ``below`` or the gap
    between its first two scores is below ``margin``. At most ``max_fraction``
    of the readings, and ``max_per_s`` a second, are escalated.
    """

    topic: str
    below: float | None = None
    margin: float | None = None
    max_fraction: float = 1.0
    max_per_s: float = 10.0

    @classmethod
    def from_doc(cls, doc: object, where: str) -> CascadeSpec:
        """Validate ``manifest.cascade``; raises ModelError naming the key."""
        known = {"topic", "below", "margin", "max_fraction", "max_per_s"}
        doc = check_keys(doc, "cascade", known, where)
        topic = doc.get("topic")
        try:
            TopicTemplate.parse(topic if isinstance(topic, str) else "")
        except ValueError as exc:
            raise ModelError(
                f"{where}: cascade.topic = {topic!r}: expected a topic template "
                f"such as escalate/{{topic}} ({exc})"
            ) from exc
        below, margin = doc.get("below"), doc.get("margin")
        if below is None and margin is None:
            raise ModelError(
                f"{where}: cascade has neither below nor margin: expected at least one"
            )
        return cls(
            topic=str(topic),
            below=None if below is None else number(below, "cascade.below", where, 0.0, 1e9),
            margin=None if margin is None else number(margin, "cascade.margin", where, 0.0, 1e9),
            max_fraction=number(
                doc.get("max_fraction", 1.0), "cascade.max_fraction", where, 0.0, 1.0
            ),
            max_per_s=number(doc.get("max_per_s", 10.0), "cascade.max_per_s", where, 0.01, 1e6),
        )

    def to_doc(self) -> dict[str, Any]:
        """The manifest's ``cascade`` object."""
        doc: dict[str, Any] = {"topic": self.topic}
        for key in ("below", "margin"):
            if getattr(self, key) is not None:
                doc[key] = getattr(self, key)
        doc.update(max_fraction=self.max_fraction, max_per_s=self.max_per_s)
        return doc
