"""Offline installs: a model file and its ``manifest.json`` dropped into ``inbox/``.

Copy the model first and the manifest last: the drop is complete when the
manifest is there, exactly one model file is beside it, and (when the
manifest gives a size) the model file has that size. A drop that is refused
is moved to ``inbox/rejected/<time>/`` with a ``reason.txt``.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from edgeinfer.errors import ModelError, UpdateError
from edgeinfer.manifest.document import MANIFEST_NAME, Manifest
from edgeinfer.updates.desired import Recipient, check_install_fields
from edgeinfer.updates.states import Target

MODEL_SUFFIXES = (".onnx", ".tflite")


@dataclass(frozen=True)
class InboxDrop:
    """A complete drop: the model file, its manifest, and the manifest as written."""

    model: Path
    manifest: Manifest
    document: dict[str, Any]  # what a signature covers

    @property
    def target(self) -> Target:
        return Target(self.manifest.name, self.manifest.version)

    @property
    def recipient(self) -> Recipient | None:
        """The manifest's ``target``: which module (or labels) it is for."""
        return Recipient.parse(self.document["target"]) if "target" in self.document else None

    @property
    def sequence(self) -> int | None:
        value = self.document.get("sequence")
        return value if isinstance(value, int) and not isinstance(value, bool) else None


class InboxRejectedError(UpdateError):
    """The drop is refused; ``target`` names it when the manifest could be read."""

    def __init__(self, reason: str, target: Target | None = None) -> None:
        super().__init__(reason)
        self.target = target


def read_drop(inbox: Path) -> InboxDrop | None:
    """The drop in ``inbox``, or None while it is incomplete.

    Raises:
        InboxRejectedError: the manifest is unreadable or invalid.
    """
    manifest_path = inbox / MANIFEST_NAME
    models = [p for p in inbox.iterdir() if p.suffix in MODEL_SUFFIXES and p.is_file()]
    if not manifest_path.is_file() or len(models) != 1:
        return None
    model = models[0]
    try:
        doc = orjson.loads(manifest_path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise InboxRejectedError(f"inbox/manifest.json is not JSON: {exc}") from exc
    try:
        manifest = Manifest.from_doc(doc, "inbox/manifest.json")
    except ModelError as exc:
        raise InboxRejectedError(str(exc)) from exc
    target = Target(manifest.name, manifest.version)
    if manifest.size is not None and model.stat().st_size < manifest.size:
        return None  # still being copied
    try:
        check_install_fields(manifest)
        if "target" in doc:
            Recipient.parse(doc["target"])
    except UpdateError as exc:
        raise InboxRejectedError(f"inbox install refused: {exc}", target) from exc
    assert isinstance(doc, dict)
    return InboxDrop(model, manifest, doc)


def clear(drop: InboxDrop, inbox: Path) -> None:
    """Remove an installed drop from the inbox."""
    for path in (inbox / MANIFEST_NAME, drop.model):
        path.unlink(missing_ok=True)


def reject(inbox: Path, reason: str) -> Path:
    """Move every file in the inbox to ``rejected/<time>/`` with ``reason.txt``; returns it."""
    rejected = inbox / "rejected" / time.strftime("%Y%m%dT%H%M%S")
    rejected.mkdir(parents=True, exist_ok=True)
    for path in inbox.iterdir():
        if path.is_file():
            shutil.move(str(path), rejected / path.name)
    (rejected / "reason.txt").write_text(reason + "\n")
    return rejected
