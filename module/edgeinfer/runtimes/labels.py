"""Where a result's ``label`` and ``score`` come from.

From the manifest's ``label_output`` and ``score_output`` when it names them;
else from an output that holds a label of its own (an integer or string per
row, as scikit-learn classifiers have) and the scores beside it (a probability
map or array); else the argmax of the first float output, when the manifest
has labels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeinfer.runtimes.base import MAP, SEQUENCE, TENSOR, TensorSpec, Value, float_view


@dataclass(frozen=True)
class LabelRule:
    """Where ``label`` and ``score`` come from (None: no label for this model)."""

    label_output: str | None  # an output holding the label itself
    score_output: str | None  # the scores (a probability map or array)

    @classmethod
    def find(
        cls,
        outputs: tuple[TensorSpec, ...],
        labels: Sequence[str],
        label_output: str | None = None,
        score_output: str | None = None,
    ) -> LabelRule | None:
        """The rule for a model's outputs, from the manifest's names or by looking."""
        if label_output or score_output:
            return cls(label_output, score_output)
        for spec in outputs:
            if spec.kind == TENSOR and spec.dtype.kind in "iuOUS" and 1 <= spec.rank <= 2:
                if spec.rank == 2 and spec.shape[1] not in (1, None, -1):
                    continue
                scores = next((o.name for o in outputs if o is not spec and _scores(o)), None)
                return cls(spec.name, scores)
        if labels and any(_scores(o) for o in outputs):
            return cls(None, next(o.name for o in outputs if _scores(o)))
        return None

    def apply(self, outputs: Mapping[str, Value], labels: Sequence[str]) -> tuple[Any, Any] | None:
        """``(label, score)`` for one reading: single values for one row, else lists."""
        label_rows = self._labels(outputs, labels)
        score_rows = self._scores(outputs, label_rows)
        if label_rows is None:
            return None
        names = [_name(v, labels) for v in label_rows]
        if len(names) == 1:
            return names[0], (score_rows[0] if score_rows else None)
        return names, score_rows

    def _labels(self, outputs: Mapping[str, Value], labels: Sequence[str]) -> list[Any] | None:
        if self.label_output is not None:
            value = outputs.get(self.label_output)
            if not isinstance(value, np.ndarray):
                return None
            return [v.item() if isinstance(v, np.generic) else v for v in value.reshape(-1)]
        scores = outputs.get(self.score_output or "")
        if isinstance(scores, np.ndarray) and scores.ndim >= 1:
            flat = float_view(scores).reshape(len(scores), -1)
            return [int(i) for i in flat.argmax(axis=1)]
        return None

    def _scores(self, outputs: Mapping[str, Value], label_rows: list[Any] | None) -> list[Any]:
        scores = outputs.get(self.score_output or "")
        if scores is None or label_rows is None:
            return []
        if isinstance(scores, list):  # one {class: probability} per row
            return [_from_map(row, label) for row, label in zip(scores, label_rows, strict=False)]
        if isinstance(scores, np.ndarray) and scores.ndim >= 1:
            flat = float_view(scores).reshape(len(scores), -1)
            return [
                float(flat[row, label])
                if isinstance(label, int) and label < flat.shape[1]
                else float(flat[row].max())
                for row, label in enumerate(label_rows[: len(flat)])
            ]
        return []


def _scores(spec: TensorSpec) -> bool:
    if spec.kind == SEQUENCE and spec.detail.startswith("seq(map"):
        return True
    return spec.kind not in (SEQUENCE, MAP) and spec.dtype.kind in "fV" and spec.rank >= 1


def _from_map(row: Any, label: Any) -> Any:
    if isinstance(row, dict):
        value = row.get(label)
        return float(value) if value is not None else None
    return None


def _name(value: Any, labels: Sequence[str]) -> Any:
    """An integer label as the manifest's class name when there is one; else as it is."""
    if isinstance(value, int | np.integer) and 0 <= int(value) < len(labels):
        return labels[int(value)]
    return value
