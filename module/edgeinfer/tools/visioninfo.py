"""What ``edgeinfer inspect`` says about a manifest's ``preprocess``, ``postprocess`` and
``cascade``: each in a line, checked against the model (a mismatch is printed, not raised)."""

from __future__ import annotations

from edgeinfer.errors import ModelError
from edgeinfer.manifest.document import Manifest
from edgeinfer.runtimes.base import Model
from edgeinfer.vision.detect import numbers_brief
from edgeinfer.vision.plan import VisionPlan
from edgeinfer.vision.preprocess import Preprocessor
from edgeinfer.vision.tflite_metadata import with_metadata_defaults

_META = " (from TFLite metadata)"


def _preprocess(pre: Preprocessor, meta: frozenset[str]) -> str:
    spec, (width, height) = pre.spec, pre.size
    color = spec.color + (_META if "color" in meta else "")
    norm = _META if "normalize" in meta else ""
    resize = {"stretch": "stretch to", "fit": "letterbox into", "crop": "centre-crop to"}
    pad = f", pad {spec.resize.pad}" if spec.resize.mode == "fit" else ""
    return (
        f"JPEG/PNG -> {color}, {resize[spec.resize.mode]} {width}x{height} "
        f"({spec.resize.interpolation}{pad}), (pixel * {spec.scale:g} - "
        f"{numbers_brief(spec.mean)}) / {numbers_brief(spec.std)}{norm}, {pre.layout} "
        f"{pre.dtype} into {pre.input.name!r}"
    )


def _postprocess(plan: VisionPlan, manifest: Manifest, meta: frozenset[str]) -> str:
    where = "TFLite metadata" if "labels" in meta else "manifest"
    labels = f"{len(manifest.labels)} labels from the {where}" if manifest.labels else "no labels"
    assert plan.postprocessor is not None
    return plan.postprocessor.describe(labels)


def vision_lines(model: Model, manifest: Manifest, data: bytes = b"") -> list[tuple[str, str]]:
    """``(heading, text)`` pairs for the declared blocks; empty when none is declared.

    ``data``, the model file's bytes, for the defaults of its TFLite metadata.
    """
    if not (manifest.preprocess or manifest.postprocess or manifest.cascade):
        return []
    try:
        manifest, meta = with_metadata_defaults(manifest, data, model.inputs)
        plan = VisionPlan(model, manifest, manifest.score_output)
    except ModelError as exc:
        return [("vision", f"refused: {exc}")]
    lines = []
    if plan.preprocessor is not None:
        lines.append(("preprocess", _preprocess(plan.preprocessor, meta)))
    if manifest.postprocess is not None:
        lines.append(("postprocess", _postprocess(plan, manifest, meta)))
    cascade = manifest.cascade
    if cascade is not None:
        when = []
        if cascade.below is not None:
            when.append(f"top score < {cascade.below:g}")
        if cascade.margin is not None:
            when.append(f"first two within {cascade.margin:g}")
        lines.append(
            (
                "cascade",
                f"{' or '.join(when)} -> {cascade.topic}, at most {cascade.max_fraction:.0%} of "
                f"readings and {cascade.max_per_s:g}/s",
            )
        )
    return lines
