"""What a postprocess makes of one reading's outputs, and the interface every kind has."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from edgeinfer.runtimes.base import Value
from edgeinfer.vision.preprocess import Geometry


@dataclass(frozen=True)
class Answer:
    """What the postprocess adds to a result, and the scores that say how sure it is."""

    fields: dict[str, Any]
    scores: list[float]  # best first: the top classes', or the detections'
    keep_outputs: bool  # False: the raw outputs are left out of the result (detectors)
    detections: bool = False  # scores are the detections' (one each), not the top classes'


class Postprocessor(Protocol):
    """One postprocess kind, checked against its model (built by the kind's registered
    builder, :data:`edgeinfer.vision.postprocessors.POSTPROCESSORS`)."""

    def answer(self, outputs: Mapping[str, Value], geometry: Geometry | None) -> Answer:
        """The result fields of one reading's outputs (``geometry``: how its image was
        resized, to map positions back to the original's pixels)."""
        ...

    def describe(self, labels: str) -> str:
        """One line for ``edgeinfer inspect`` (``labels``: how many, and from where)."""
        ...
