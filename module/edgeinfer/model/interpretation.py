"""What one reading's outputs say: the one reading of a model's outputs.

A result's ``label`` and ``score`` (the manifest's label rule, or the argmax of the
first output when the model has labels), what a declared ``postprocess`` adds (the
``top`` classes, or ``detections``), the scores that say how sure it is, and the
labels it names best first. Results, shadow results, ``/predict``, the self-test's
expected label, the rollout gates and the cascade all read outputs through
:func:`interpret`, so they cannot disagree on what a model answered.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeinfer.model.loaded import LoadedModel
from edgeinfer.runtimes.base import Value, float_view
from edgeinfer.runtimes.labels import LabelRule
from edgeinfer.vision.plan import VisionPlan
from edgeinfer.vision.preprocess import Geometry

#: What a detector's answer is taken for when it found nothing (the rollout gates compare it).
NOTHING = "nothing"


@dataclass(frozen=True)
class Interpretation:
    """One reading's outputs, read as its result reads them."""

    #: The result's fields: ``label`` and ``score`` (lists for a reading of several rows),
    #: and what the postprocess adds (``top``, ``detections``) over them.
    fields: dict[str, Any]
    #: The outputs the result carries (a detector's result carries its detections instead).
    shown: Mapping[str, Value]
    #: Best first: a classifier's two best scores, or each detection's (none without a plan).
    scores: list[float]
    #: Whether ``scores`` are the detections' (one each), not the top classes'.
    detections: bool
    #: What the declared postprocess alone added to ``fields`` (none declared: empty).
    postprocess: dict[str, Any]

    @property
    def labels(self) -> list[Any]:
        """The labels the result names, best first: each detection's, or the label(s)."""
        if self.detections:
            return [d.get("label", d["class"]) for d in self.fields.get("detections", [])]
        if "label" not in self.fields:
            return []
        label = self.fields["label"]
        return label if isinstance(label, list) else [label]

    def top1(self) -> tuple[str, float] | None:
        """The answer in one label and one score: the label and its score, a detector's
        best detection (or :data:`NOTHING`), else the first float output's argmax."""
        if self.detections:
            found = self.fields.get("detections", [])
            if not found:
                return NOTHING, 1.0
            best = max(found, key=lambda d: d["score"])
            return str(best.get("label", best["class"])), float(best["score"])
        label = self.fields.get("label")
        if label is not None and not isinstance(label, list):
            score = self.fields.get("score")
            return str(label), float(score) if isinstance(score, int | float) else 0.0
        for value in self.shown.values():
            if isinstance(value, np.ndarray) and value.dtype.kind in "fV" and value.size:
                flat = float_view(value).reshape(-1)
                index = int(flat.argmax())
                return str(index), float(flat[index])
        return None


def interpret(
    loaded: LoadedModel,
    outputs: Mapping[str, Value],
    geometry: Geometry | None = None,
    plan: VisionPlan | None = None,
) -> Interpretation:
    """Read one reading's ``outputs`` of ``loaded``.

    ``geometry``: how an image reading was resized (a detector's boxes are mapped back
    through it); ``plan``: the vision plan to read them with, when not the model's own
    (the cascade's scores for a model that declares no vision block).
    """
    plan = plan or loaded.vision
    fields: dict[str, Any] = {}
    rule = loaded.label_rule
    labels = loaded.identity.labels
    if rule is None and labels and outputs:
        rule = LabelRule(None, next(iter(outputs)))  # the first output's argmax
    found = rule.apply(outputs, labels) if rule is not None else None
    if found is not None:
        fields["label"], fields["score"] = found
    if plan is None:
        return Interpretation(fields, outputs, [], False, {})
    answer = plan.answer(outputs, geometry)
    fields.update(answer.fields)
    shown = outputs if answer.keep_outputs else {}
    return Interpretation(fields, shown, answer.scores, answer.detections, answer.fields)
