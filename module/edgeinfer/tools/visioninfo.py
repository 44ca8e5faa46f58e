"""What ``edgeinfer inspect`` says about a manifest's ``preprocess``, ``postprocess`` and
``cascade``: each in a line, checked against the model (a mismatch is printed, not raised)."""

from __future__ import annotations

from edgeinfer.errors import ModelError
from edgeinfer.manifest import Manifest
from edgeinfer.postspec import DetectSpec, TopKSpec
from edgeinfer.runtimes.base import Model
from edgeinfer.vision.plan import VisionPlan
from edgeinfer.vision.preprocess import Preprocessor


def _numbers(values: tuple[float, ...]) -> str:
    shown = [f"{v:g}" for v in values]
    return shown[0] if len(shown) == 1 else "[" + ", ".join(shown) + "]"


def _preprocess(pre: Preprocessor) -> str:
    spec, (width, height) = pre.spec, pre.size
    resize = {"stretch": "stretch to", "fit": "letterbox into", "crop": "centre-crop to"}
    pad = f", pad {spec.resize.pad}" if spec.resize.mode == "fit" else ""
    return (
        f"JPEG/PNG -> {spec.color}, {resize[spec.resize.mode]} {width}x{height} "
        f"({spec.resize.interpolation}{pad}), (pixel * {spec.scale:g} - {_numbers(spec.mean)}) "
        f"/ {_numbers(spec.std)}, {pre.layout} {pre.dtype} into {pre.input.name!r}"
    )


def _postprocess(plan: VisionPlan, manifest: Manifest) -> str:
    post = manifest.postprocess
    labels = f"{len(manifest.labels)} labels from the manifest" if manifest.labels else "no labels"
    if isinstance(post, TopKSpec):
        return f"top {post.k} classes ({post.activation} activation), {labels}"
    assert isinstance(post, DetectSpec)
    anchors = ""
    if plan.detector is not None and plan.detector.anchors is not None:
        anchors = f" ({len(plan.detector.anchors)} anchors)"
    return (
        f"detect {post.format}{anchors}: score >= {post.score_min:g}, NMS per class at IoU "
        f"{post.iou:g}, at most {post.max_detections}, boxes in the original image's pixels, "
        f"{labels}"
    )


def vision_lines(model: Model, manifest: Manifest) -> list[tuple[str, str]]:
    """``(heading, text)`` pairs for the declared blocks; empty when none is declared."""
    if not (manifest.preprocess or manifest.postprocess or manifest.cascade):
        return []
    try:
        plan = VisionPlan(model, manifest, manifest.score_output)
    except ModelError as exc:
        return [("vision", f"refused: {exc}")]
    lines = []
    if plan.preprocessor is not None:
        lines.append(("preprocess", _preprocess(plan.preprocessor)))
    if manifest.postprocess is not None:
        lines.append(("postprocess", _postprocess(plan, manifest)))
    cascade = manifest.cascade
    if cascade is not None:
        when = []
        if cascade.below is not None:
            when.append(f"top score < {cascade.below:g}")
        if cascade.margin is not None:
            when.append(f"first two within {cascade.margin:g}")
        lines.append((
            "cascade",
            f"{' or '.join(when)} -> {cascade.topic}, at most {cascade.max_fraction:.0%} of "
            f"readings and {cascade.max_per_s:g}/s",
        ))  # fmt: skip
    return lines
