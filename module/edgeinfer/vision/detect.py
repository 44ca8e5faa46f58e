"""``postprocess: detect``: a detector's outputs into boxes in the original image's pixels.

Each layout (:mod:`edgeinfer.manifest.postprocess`) is first read as candidate boxes
(``x1, y1, x2, y2`` in input pixels), scores and classes; candidates under
``score_min`` are dropped, non-maximum suppression runs per class (greedy, by
score: a box overlapping a better one of its class by more than ``iou`` is
dropped), the best ``max_detections`` are kept, and the boxes are mapped back
through the resize (stretch, letterbox or crop) to the original image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edgeinfer.errors import ModelError
from edgeinfer.manifest.document import Manifest
from edgeinfer.manifest.postprocess import DetectSpec
from edgeinfer.runtimes.base import Array, Dim, Model, TensorSpec, Value, float_view
from edgeinfer.vision.anchors import ssd_anchors
from edgeinfer.vision.answer import Answer
from edgeinfer.vision.preprocess import Geometry, Preprocessor


def brief(classes: Sequence[int]) -> str:
    """A list of class indices for a message: the first eight, then how many more."""
    more = f", ... ({len(classes)} in all)" if len(classes) > 8 else ""
    return "[" + ", ".join(map(str, classes[:8])) + more + "]"


def numbers_brief(values: Sequence[float]) -> str:
    """One number as itself, several as a list: ``0.5``, ``[10, 10, 5, 5]``."""
    shown = [f"{v:g}" for v in values]
    return shown[0] if len(shown) == 1 else "[" + ", ".join(shown) + "]"


def activate(scores: Array, activation: str) -> Array:
    """Scores through ``none``, ``sigmoid`` (clipped logits) or ``softmax`` (last axis)."""
    if activation == "sigmoid":
        # In float64: exp(100) overflows float32 (MediaPipe clips its logits at 100).
        logits = np.clip(scores.astype(np.float64), -100.0, 100.0)
        sigmoid: Array = 1.0 / (1.0 + np.exp(-logits))
        return sigmoid
    if activation == "softmax":
        wide = scores.astype(np.float64)
        shifted = np.exp(wide - wide.max(axis=-1, keepdims=True))
        softmax: Array = shifted / shifted.sum(axis=-1, keepdims=True)
        return softmax
    return scores


def to_xyxy(boxes: Array, order: str) -> Array:
    """``[N, 4]`` boxes in ``order`` (xyxy, yxyx, xywh, cxcywh) as xyxy."""
    b = boxes.astype(np.float64)
    if order == "yxyx":
        return b[:, [1, 0, 3, 2]]
    if order == "xywh":
        return np.stack([b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]], axis=1)
    if order == "cxcywh":
        half_w, half_h = b[:, 2] / 2, b[:, 3] / 2
        return np.stack([b[:, 0] - half_w, b[:, 1] - half_h, b[:, 0] + half_w, b[:, 1] + half_h], 1)
    return b


def nms(boxes: Array, scores: Array, iou: float) -> list[int]:
    """Indices kept by greedy non-maximum suppression, best score first."""
    order = np.argsort(-scores, kind="stable")
    areas = np.maximum(0, boxes[:, 2] - boxes[:, 0]) * np.maximum(0, boxes[:, 3] - boxes[:, 1])
    keep: list[int] = []
    while order.size:
        best, rest = int(order[0]), order[1:]
        keep.append(best)
        x1 = np.maximum(boxes[best, 0], boxes[rest, 0])
        y1 = np.maximum(boxes[best, 1], boxes[rest, 1])
        x2 = np.minimum(boxes[best, 2], boxes[rest, 2])
        y2 = np.minimum(boxes[best, 3], boxes[rest, 3])
        inter = np.maximum(0, x2 - x1) * np.maximum(0, y2 - y1)
        union = areas[best] + areas[rest] - inter
        overlap = np.where(union > 0, inter / np.where(union > 0, union, 1), 0)
        order = rest[overlap <= iou]
    return keep


class Detector:
    """Reads one detector's outputs, as its manifest's ``postprocess`` declares."""

    def __init__(
        self,
        spec: DetectSpec,
        outputs: Sequence[str],
        size: tuple[int, int],
        classes: int | None = None,
        labels: Sequence[str] = (),
    ) -> None:
        """``outputs``: the model's output names; ``size``: its input's (width, height);
        ``classes``: how many (the manifest's labels), which tells a YOLO output's layout;
        ``labels``: the names a detection's class is given."""
        self.spec = spec
        self._classes = classes
        self._labels = labels
        for role, name in spec.outputs:
            if name not in outputs:
                raise ModelError(
                    f"postprocess.outputs.{role} = {name!r}: expected one of the outputs "
                    f"{list(outputs)}"
                )
        self._first = outputs[0]
        self._size = size
        self.anchors = None if spec.anchors is None else ssd_anchors(spec.anchors, *size)

    @classmethod
    def build(
        cls,
        spec: DetectSpec,
        model: Model,
        manifest: Manifest,
        preprocessor: Preprocessor | None,
        score_output: str | None,
    ) -> Detector:
        """Check ``spec`` against ``model``; raises ModelError naming the mismatch."""
        if preprocessor is None:
            raise ModelError(
                "postprocess type 'detect' without preprocess: expected a preprocess "
                "block (boxes are mapped back through its resize)"
            )
        outputs = [o.name for o in model.outputs]
        labels = manifest.labels
        detector = cls(spec, outputs, preprocessor.size, len(labels) or None, labels)
        detector.check(model.outputs)
        return detector

    def answer(self, outputs: Mapping[str, Value], geometry: Geometry | None) -> Answer:
        """``detections``, best first, each with its box, score, class and label."""
        found = self.detect(outputs, geometry)
        labels = self._labels
        detections = [
            {"box": [round(v, 2) for v in box], "score": score, "class": cls}
            | ({"label": labels[cls]} if 0 <= cls < len(labels) else {})
            for box, score, cls in found
        ]
        return Answer({"detections": detections}, [d[1] for d in found], False, True)

    def describe(self, labels: str) -> str:
        spec = self.spec
        anchors = ""
        if self.anchors is not None:
            anchors = (
                f" ({len(self.anchors)} anchors, regressors {spec.box} scaled by "
                f"{numbers_brief(spec.box_scale)}, {spec.box_size} sizes)"
            )
        ignored = f", ignoring classes {brief(spec.ignore_classes)}" if spec.ignore_classes else ""
        return (
            f"detect {spec.format}{anchors}: {spec.activation} scores >= {spec.score_min:g}"
            f"{ignored}, NMS per class at IoU {spec.iou:g}, at most {spec.max_detections}, "
            f"boxes in the original image's pixels, {labels}"
        )

    def _array(self, outputs: Mapping[str, Value], role: str) -> Array:
        name = self.spec.output(role) or self._first
        value = outputs.get(name)
        if not isinstance(value, np.ndarray):
            raise ValueError(f"output {name!r} ({role}) is not a tensor")
        return float_view(value).astype(np.float32, copy=False)

    def candidates(self, outputs: Mapping[str, Value]) -> tuple[Array, Array, Array]:
        """Every candidate: xyxy boxes in input pixels, scores and classes."""
        fmt, spec = self.spec.format, self.spec
        width, height = self._size
        if fmt == "yolo":
            raw = self._array(outputs, "boxes")
            rows = raw.reshape(raw.shape[-2], raw.shape[-1])
            if self._yolo_columns(rows.shape):  # [4 + classes, N]: one column per candidate
                rows = rows.T
            boxes, class_scores = to_xyxy(rows[:, :4], "cxcywh"), rows[:, 4:]
        elif fmt == "ssd_anchors":
            boxes, class_scores = self._ssd(outputs)
        else:
            boxes = to_xyxy(self._array(outputs, "boxes").reshape(-1, 4), spec.box)
            class_scores = self._array(outputs, "scores").reshape(boxes.shape[0], -1)
        scores_all = activate(class_scores, spec.activation)
        if fmt == "boxes" and spec.output("classes") is not None:
            classes = self._array(outputs, "classes").reshape(-1).astype(np.int64)
            scores = scores_all.max(axis=1)
            if spec.ignore_classes:
                scores = np.where(np.isin(classes, spec.ignore_classes), -np.inf, scores)
        else:
            if spec.ignore_classes:  # as MediaPipe: the best class that is not ignored
                ignored = [c for c in spec.ignore_classes if c < scores_all.shape[1]]
                scores_all = scores_all.astype(np.float64, copy=True)
                scores_all[:, ignored] = -np.inf
            classes = scores_all.argmax(axis=1)
            scores = scores_all[np.arange(len(classes)), classes]
        if spec.normalized:
            boxes = boxes * np.array([width, height, width, height], np.float64)
        return boxes, scores.astype(np.float64), classes

    def _yolo_columns(self, shape: tuple[int, ...]) -> bool:
        """Whether candidates are columns: by the class count when the labels give it (a
        small input can have fewer candidates than 4 + classes), else the longer axis."""
        if self._classes is not None:
            if shape[0] == 4 + self._classes:
                return True
            if shape[-1] == 4 + self._classes:
                return False
        return shape[0] < shape[-1]

    def check(self, specs: Sequence[TensorSpec]) -> None:
        """Refuse, at load, outputs whose fixed shapes cannot be what the spec says."""
        shapes = {s.name: s.shape for s in specs}
        boxes = shapes.get(self.spec.output("boxes") or self._first, ())
        fixed = [d for d in boxes if isinstance(d, int) and d > 0]
        if self.spec.format == "yolo" and len(boxes) not in (2, 3):
            raise ModelError(
                f"postprocess format 'yolo': output shaped {list(boxes)}: expected "
                "[batch, 4 + classes, N] or [batch, N, 4 + classes]"
            )
        self._check_classes(shapes)
        if self.anchors is not None and len(fixed) == len(boxes) >= 2:
            count = fixed[1] if len(fixed) == 3 else fixed[0]  # [batch,] N, coordinates
            if count != len(self.anchors):
                raise ModelError(
                    f"postprocess.anchors make {len(self.anchors)} anchors but the boxes output "
                    f"{list(boxes)} holds {count}: expected as many (check the anchor options)"
                )

    def _check_classes(self, shapes: Mapping[str, tuple[Dim, ...]]) -> None:
        """Refuse ``ignore_classes`` beyond the class count, where the model's shapes (or, for
        YOLO rows, the labels) fix it; class indices read from an output are not known."""
        spec = self.spec
        if not spec.ignore_classes or spec.output("classes") is not None:
            return
        scores = shapes.get(spec.output("scores") or self._first, ())
        count: Dim = None
        source = f"scores output {list(scores)}"
        if spec.format == "yolo":
            count, source = self._classes, "its labels"
        elif len(scores) >= 3 or (spec.format == "ssd_anchors" and len(scores) == 2):
            count = scores[-1]  # [.., N, classes]; [.., N] is one score a box
        if isinstance(count, int) and count > 0 and max(spec.ignore_classes) >= count:
            raise ModelError(
                f"postprocess.ignore_classes = {brief(spec.ignore_classes)}: the model has "
                f"{count} classes ({source}): expected indices below {count}"
            )

    def _ssd(self, outputs: Mapping[str, Value]) -> tuple[Array, Array]:
        assert self.anchors is not None
        raw = self._array(outputs, "boxes")
        raw = raw.reshape(-1, raw.shape[-1])
        logits = self._array(outputs, "scores")
        logits = logits.reshape(raw.shape[0], -1)
        if raw.shape[0] != len(self.anchors):
            raise ValueError(
                f"{raw.shape[0]} boxes for {len(self.anchors)} anchors: expected as many "
                "(postprocess.anchors)"
            )
        a = self.anchors.astype(np.float64)
        xs, ys, ws, hs = self.spec.box_scale
        dx, dy, dw, dh = (0, 1, 2, 3) if self.spec.box == "cxcywh" else (1, 0, 3, 2)
        cx = raw[:, dx] / xs * a[:, 2] + a[:, 0]
        cy = raw[:, dy] / ys * a[:, 3] + a[:, 1]
        w, h = raw[:, dw] / ws, raw[:, dh] / hs
        if self.spec.box_size == "exponential":
            # Clipped so that a wild regressor makes a huge box, not an infinite one (NaN IoUs).
            w, h = np.exp(np.minimum(w, 20.0)), np.exp(np.minimum(h, 20.0))
        return to_xyxy(np.stack([cx, cy, w * a[:, 2], h * a[:, 3]], axis=1), "cxcywh"), logits

    def detect(self, outputs: Mapping[str, Value], geometry: Geometry | None) -> list[Any]:
        """The detections of one reading, best first, boxes in original pixels."""
        boxes, scores, classes = self.candidates(outputs)
        spec = self.spec
        # As MediaPipe: a box with a NaN or a negative side (a wild regressor) is no detection.
        sane = np.isfinite(boxes).all(axis=1) & (boxes[:, 2] >= boxes[:, 0])
        mask = (scores >= spec.score_min) & sane & (boxes[:, 3] >= boxes[:, 1])
        boxes, scores, classes = boxes[mask], scores[mask], classes[mask]
        kept: list[int] = []
        for cls in np.unique(classes):
            index = np.flatnonzero(classes == cls)
            kept += [int(index[i]) for i in nms(boxes[index], scores[index], spec.iou)]
        kept.sort(key=lambda i: -scores[i])
        kept = kept[: spec.max_detections]
        chosen = boxes[kept].reshape(-1, 4)
        if geometry is not None:
            chosen = geometry.to_original(chosen)
        return [(chosen[n].tolist(), float(scores[i]), int(classes[i])) for n, i in enumerate(kept)]
