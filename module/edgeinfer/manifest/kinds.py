"""The postprocess kinds a manifest may declare, by their ``type``.

A new kind is a :class:`~edgeinfer.manifest.postprocess.PostprocessSpec` in a file of
its own, one line here, and its implementation registered in
:data:`edgeinfer.vision.postprocessors.POSTPROCESSORS`.
"""

from __future__ import annotations

from typing import Any

from edgeinfer.errors import ModelError
from edgeinfer.manifest.postprocess import DetectSpec, PostprocessSpec, TopKSpec

#: Every kind, by the manifest's ``postprocess.type``.
KINDS: dict[str, type[PostprocessSpec]] = {kind.TYPE: kind for kind in (TopKSpec, DetectSpec)}


def postprocess_from_doc(doc: object, where: str) -> PostprocessSpec:
    """Validate ``manifest.postprocess``; raises ModelError naming the key."""
    kind = doc.get("type") if isinstance(doc, dict) else None
    spec = KINDS.get(kind) if isinstance(kind, str) else None
    if spec is None or not isinstance(doc, dict):
        names = " or ".join(f'"{name}"' for name in KINDS)
        raise ModelError(f"{where}: postprocess.type = {kind!r}: expected {names}")
    return spec.from_doc(doc, where)


def postprocess_to_doc(spec: PostprocessSpec) -> dict[str, Any]:
    """The manifest's ``postprocess`` object."""
    return spec.to_doc()
