"""A model ready to serve: a loaded runtime, its manifest and where it came from."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeinfer.manifest import Manifest, ModelIdentity, load_manifest
from edgeinfer.runtimes import load_model
from edgeinfer.runtimes.base import Model


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A loaded model with its manifest; compared by identity, not value.

    Whoever stops serving it closes it (``model.close()``), once the engine
    has let go of it.
    """

    model: Model
    manifest: Manifest
    path: Path
    sha256: str
    loaded_at: float = field(default_factory=time.time)

    @property
    def identity(self) -> ModelIdentity:
        return self.manifest.identity

    @property
    def self_test(self) -> Mapping[str, Any]:
        return self.manifest.self_test

    def describe(self) -> str:
        return f"{self.manifest.name} {self.manifest.version}"


def load(
    path: Path,
    manifest: Manifest | None = None,
    threads: int = 0,
    providers: Sequence[str] = ("CPUExecutionProvider",),
) -> LoadedModel:
    """Load ``path`` with ``manifest`` (default: the one beside it); raises ModelError."""
    model = load_model(path, threads=threads, providers=providers)
    try:
        manifest = manifest if manifest is not None else load_manifest(path)
        # Hashed here, not taken from the manifest: what is reported must be
        # the bytes actually loaded.
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except BaseException:
        model.close()
        raise
    return LoadedModel(model, manifest, path, digest)
