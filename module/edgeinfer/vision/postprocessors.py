"""Every postprocess kind's implementation, by the type of its manifest block.

A kind's builder checks the block against the model it is loaded with (raising
ModelError naming the mismatch, so an update that does not fit is refused at its
self-test) and returns a :class:`~edgeinfer.vision.answer.Postprocessor`. A new kind
is a file of its own with a builder, and one line here (its manifest block is
registered in :data:`edgeinfer.manifest.kinds.KINDS`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edgeinfer.manifest.document import Manifest
from edgeinfer.manifest.postprocess import DetectSpec, PostprocessSpec, TopKSpec
from edgeinfer.runtimes.base import Model
from edgeinfer.vision.answer import Postprocessor
from edgeinfer.vision.detect import Detector
from edgeinfer.vision.preprocess import Preprocessor
from edgeinfer.vision.topk import TopK

#: ``(spec, model, manifest, preprocessor, score output) -> Postprocessor``.
Builder = Callable[[Any, Model, Manifest, Preprocessor | None, str | None], Postprocessor]

#: Every kind's builder, by its manifest block's type.
POSTPROCESSORS: dict[type[PostprocessSpec], Builder] = {
    TopKSpec: TopK.build,
    DetectSpec: Detector.build,
}


def build_postprocessor(
    spec: PostprocessSpec,
    model: Model,
    manifest: Manifest,
    preprocessor: Preprocessor | None,
    score_output: str | None,
) -> Postprocessor:
    """The postprocessor of ``spec`` for ``model``; raises ModelError when it does not fit."""
    return POSTPROCESSORS[type(spec)](spec, model, manifest, preprocessor, score_output)
