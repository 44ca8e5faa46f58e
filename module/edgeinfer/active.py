"""The model being served: a loaded runtime plus what results and reports say about it."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeinfer.manifest import load_manifest
from edgeinfer.pipeline.encode import ModelIdentity
from edgeinfer.runtimes import load_model
from edgeinfer.runtimes.base import Model


@dataclass(frozen=True, eq=False)
class ActiveModel:
    """A loaded model with its identity; compared by identity, not value."""

    model: Model
    identity: ModelIdentity
    path: Path
    sha256: str
    self_test: dict[str, Any] = field(default_factory=dict)
    loaded_at: float = field(default_factory=time.time)


def load_active(
    path: Path, threads: int = 0, providers: tuple[str, ...] = ("CPUExecutionProvider",)
) -> ActiveModel:
    """Load ``path`` and its manifest; raises ModelError for a file that is no model."""
    model = load_model(path, threads=threads, providers=providers)
    manifest = load_manifest(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return ActiveModel(
        model,
        ModelIdentity(manifest.name, manifest.version, manifest.labels),
        path,
        digest,
        dict(manifest.self_test),
    )
