"""A model's vision plan: its manifest's ``preprocess`` and ``postprocess`` checked against
the model, ready to apply to readings and to answers.

Built when the model is loaded (:func:`edgeinfer.model.loaded.load`), so a manifest
that does not fit its model is refused there, at the self-test of an update,
and the model serving keeps serving.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from edgeinfer.manifest.document import Manifest
from edgeinfer.runtimes.base import Model, Value
from edgeinfer.vision.answer import Answer, Postprocessor
from edgeinfer.vision.postprocessors import build_postprocessor
from edgeinfer.vision.preprocess import Geometry, Preprocessor
from edgeinfer.vision.topk import ClassScores

__all__ = ["Answer", "Scored", "VisionPlan", "uncertain"]


class VisionPlan:
    """The checked ``preprocess`` and ``postprocess`` of one loaded model."""

    def __init__(self, model: Model, manifest: Manifest, score_output: str | None) -> None:
        """Check the manifest against ``model``; raises ModelError naming the mismatch.

        ``score_output``: the label rule's (None: the first output), the class scores
        a ``topk`` reads unless it names its own, and the cascade's without a postprocess.
        """
        self.labels = manifest.labels
        self.preprocessor = (
            Preprocessor(manifest.preprocess, model.inputs) if manifest.preprocess else None
        )
        outputs = [o.name for o in model.outputs]
        score_output = score_output or (outputs[0] if outputs else None)
        post = manifest.postprocess
        self.postprocessor: Postprocessor | None = (
            build_postprocessor(post, model, manifest, self.preprocessor, score_output)
            if post is not None
            else None
        )
        self._class_scores = ClassScores(score_output)

    def answer(self, outputs: Mapping[str, Value], geometry: Geometry | None) -> Answer:
        """The result fields of one reading's outputs (none declared: only the two best
        scores, for the cascade)."""
        if self.postprocessor is not None:
            return self.postprocessor.answer(outputs, geometry)
        return self._class_scores.best_two(outputs)


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
