"""A model's manifest: ``manifest.json`` beside the model file.

It names the model and its version, lists class labels and carries the
self-test reading with its expected output. A model without a manifest still
runs, named after its file and versioned ``unversioned``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from edgeinfer.errors import ModelError

MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class Manifest:
    """The parts of ``manifest.json`` the module uses."""

    name: str
    version: str
    labels: tuple[str, ...] = ()
    self_test: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""


def load_manifest(model_path: Path) -> Manifest:
    """Read the manifest beside ``model_path``, or derive a minimal one."""
    path = model_path.parent / MANIFEST_NAME
    if not path.exists():
        return Manifest(name=model_path.stem, version="unversioned")
    try:
        doc = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ModelError(
            f"{path}: cannot read the manifest ({exc}): expected a JSON object"
        ) from exc
    if not isinstance(doc, dict):
        raise ModelError(f"{path}: manifest is a JSON {type(doc).__name__}: expected an object")
    labels = doc.get("labels") or []
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise ModelError(f"{path}: labels = {labels!r}: expected a list of strings")
    return Manifest(
        name=str(doc.get("name") or model_path.stem),
        version=str(doc.get("version") or "unversioned"),
        labels=tuple(labels),
        self_test=doc.get("self_test") or {},
        sha256=str(doc.get("sha256") or ""),
    )
