"""A model's vision plan: its manifest's ``preprocess`` and ``postprocess`` checked against
the model, ready to apply to readings and to answers.

Built when the model is loaded (:func:`edgeinfer.model.loaded.load`), so a manifest
that does not fit its model is refused there, at the self-test of an update,
and the model serving keeps serving.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from edgeinfer.errors import ModelError
from edgeinfer.manifest.document import Manifest
from edgeinfer.manifest.postprocess import DetectSpec, TopKSpec
from edgeinfer.runtimes.base import Model, Value, float_view
from edgeinfer.vision.detect import Detector, activate
from edgeinfer.vision.preprocess import Geometry, Preprocessor


@dataclass(frozen=True)
class Answer:
    """What the postprocess adds to a result, and the scores that say how sure it is."""

    fields: dict[str, Any]
    scores: list[float]  # best first: the top classes', or the detections'
    keep_outputs: bool  # False: the raw outputs are left out of the result (detectors)
    detections: bool = False  # scores are the detections' (one each), not the top classes'


class VisionPlan:
    """The checked ``preprocess`` and ``postprocess`` of one loaded model."""

    def __init__(self, model: Model, manifest: Manifest, score_output: str | None) -> None:
        """Check the manifest against ``model``; raises ModelError naming the mismatch."""
        self.labels = manifest.labels
        self.preprocessor = (
            Preprocessor(manifest.preprocess, model.inputs) if manifest.preprocess else None
        )
        outputs = [o.name for o in model.outputs]
        post = manifest.postprocess
        self.topk: TopKSpec | None = post if isinstance(post, TopKSpec) else None
        self.detector: Detector | None = None
        if isinstance(post, DetectSpec):
            if self.preprocessor is None:
                raise ModelError(
                    "postprocess type 'detect' without preprocess: expected a preprocess "
                    "block (boxes are mapped back through its resize)"
                )
            self.detector = Detector(
                post, outputs, self.preprocessor.size, len(self.labels) or None
            )
            self.detector.check(model.outputs)
        self._score_output = score_output or (outputs[0] if outputs else None)
        if self.topk is not None:
            if self.topk.output is not None and self.topk.output not in outputs:
                raise ModelError(
                    f"postprocess.output = {self.topk.output!r}: expected one of the outputs "
                    f"{outputs}"
                )
            self._score_output = self.topk.output or self._score_output

    def answer(self, outputs: Mapping[str, Value], geometry: Geometry | None) -> Answer:
        """The result fields of one reading's outputs."""
        if self.detector is not None:
            found = self.detector.detect(outputs, geometry)
            detections = [
                {"box": [round(v, 2) for v in box], "score": score, "class": cls}
                | ({"label": self.labels[cls]} if 0 <= cls < len(self.labels) else {})
                for box, score, cls in found
            ]
            return Answer({"detections": detections}, [d[1] for d in found], False, True)
        scores = self.class_scores(outputs)
        k = self.topk.k if self.topk is not None else 2
        best = np.argsort(-scores, kind="stable")[:k]
        top: list[dict[str, Any]] = [
            {"label": self._name(int(i)), "class": int(i), "score": float(scores[i])} for i in best
        ]
        fields: dict[str, Any] = {}
        if self.topk is not None and top:
            fields = {"label": top[0]["label"], "score": top[0]["score"], "top": top}
        # The two best always, whatever k: the cascade's margin needs the second.
        best_two = best if len(best) >= 2 else np.argsort(-scores, kind="stable")[:2]
        return Answer(fields, [float(scores[i]) for i in best_two], True)

    def class_scores(self, outputs: Mapping[str, Value]) -> Any:
        """One reading's class scores (after the declared activation), as a flat array."""
        value = outputs.get(self._score_output or "")
        if not isinstance(value, np.ndarray) or value.size == 0:
            return np.zeros(0, np.float64)
        flat = float_view(value).astype(np.float64).reshape(-1)
        return activate(flat, self.topk.activation) if self.topk is not None else flat

    def _name(self, index: int) -> str | int:
        return self.labels[index] if 0 <= index < len(self.labels) else index


class Scored(Protocol):
    """An answer's scores, best first: an :class:`Answer`, or its reading in a result."""

    @property
    def scores(self) -> list[float]: ...

    @property
    def detections(self) -> bool: ...


def uncertain(answer: Scored, below: float | None, margin: float | None) -> bool:
    """How sure the answer is not.

    A classifier's: the best score under ``below``, or within ``margin`` of the
    second. A detector's: a detection (above the postprocess's ``score_min``)
    scored under ``below``; a frame with nothing found is not uncertain, and two
    sure detections of different objects are not a close call (``margin`` is
    the classifiers').
    """
    scores = answer.scores
    if answer.detections:
        return below is not None and any(s < below for s in scores)
    best = scores[0] if scores else 0.0
    if below is not None and best < below:
        return True
    second = scores[1] if len(scores) > 1 else 0.0
    return margin is not None and best - second < margin
