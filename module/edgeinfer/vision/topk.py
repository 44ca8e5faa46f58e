"""``postprocess: topk``: a classifier's ``k`` best classes, named from the labels; and
the class scores of a model that declares no postprocess (the cascade's two best)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edgeinfer.errors import ModelError
from edgeinfer.manifest.document import Manifest
from edgeinfer.manifest.postprocess import TopKSpec
from edgeinfer.runtimes.base import Array, Model, Value, float_view
from edgeinfer.vision.answer import Answer
from edgeinfer.vision.detect import activate
from edgeinfer.vision.preprocess import Geometry, Preprocessor


class ClassScores:
    """One reading's class scores: an output, flattened, through an activation."""

    def __init__(self, output: str | None, activation: str = "none") -> None:
        self.output = output
        self.activation = activation

    def __call__(self, outputs: Mapping[str, Value]) -> Array:
        value = outputs.get(self.output or "")
        if not isinstance(value, np.ndarray) or value.size == 0:
            return np.zeros(0, np.float64)
        return activate(float_view(value).astype(np.float64).reshape(-1), self.activation)

    def best_two(self, outputs: Mapping[str, Value]) -> Answer:
        """No fields; the two best scores (the cascade's margin needs the second)."""
        scores = self(outputs)
        best = np.argsort(-scores, kind="stable")[:2]
        return Answer({}, [float(scores[i]) for i in best], True)


class TopK:
    """The ``k`` best classes with their scores: ``label``, ``score`` and ``top``."""

    def __init__(self, spec: TopKSpec, scores: ClassScores, labels: Sequence[str]) -> None:
        self.spec = spec
        self._scores = scores
        self._labels = labels

    @classmethod
    def build(
        cls,
        spec: TopKSpec,
        model: Model,
        manifest: Manifest,
        preprocessor: Preprocessor | None,
        score_output: str | None,
    ) -> TopK:
        """Check ``spec`` against ``model``; raises ModelError naming the mismatch."""
        outputs = [o.name for o in model.outputs]
        if spec.output is not None and spec.output not in outputs:
            raise ModelError(
                f"postprocess.output = {spec.output!r}: expected one of the outputs {outputs}"
            )
        return cls(spec, ClassScores(spec.output or score_output, spec.activation), manifest.labels)

    def answer(self, outputs: Mapping[str, Value], geometry: Geometry | None) -> Answer:
        scores = self._scores(outputs)
        order = np.argsort(-scores, kind="stable")
        top: list[dict[str, Any]] = [
            {"label": self._name(int(i)), "class": int(i), "score": float(scores[i])}
            for i in order[: self.spec.k]
        ]
        fields: dict[str, Any] = {}
        if top:
            fields = {"label": top[0]["label"], "score": top[0]["score"], "top": top}
        # The two best always, whatever k: the cascade's margin needs the second.
        return Answer(fields, [float(scores[i]) for i in order[:2]], True)

    def describe(self, labels: str) -> str:
        return f"top {self.spec.k} classes ({self.spec.activation} activation), {labels}"

    def _name(self, index: int) -> str | int:
        return self._labels[index] if 0 <= index < len(self._labels) else index
