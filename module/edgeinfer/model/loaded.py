"""A model ready to serve: a loaded runtime, its manifest, its batch axes and label rule."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeinfer.errors import ModelError
from edgeinfer.manifest.document import Manifest, ModelIdentity, load_manifest
from edgeinfer.model.streamplan import StreamPlan
from edgeinfer.runtimes import load_model
from edgeinfer.runtimes.axes import BatchAxes, infer_batch_axes
from edgeinfer.runtimes.base import Model
from edgeinfer.runtimes.labels import LabelRule
from edgeinfer.vision.plan import VisionPlan
from edgeinfer.vision.tflite_metadata import with_metadata_defaults


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
    axes: BatchAxes | None = None  # None: found from the signature (before any probe)
    label_rule: LabelRule | None = None
    loaded_at: float = field(default_factory=time.time)
    row_seconds: float = 0.0  # a run's time per row, from the self-test (0: not timed)
    streams: StreamPlan | None = None  # how windows of streamed samples feed it (admission)
    vision: VisionPlan | None = None  # its preprocess and postprocess, when declared

    def __post_init__(self) -> None:
        if self.axes is None:
            # Frozen: set once, during construction.
            axes = infer_batch_axes(self.model.inputs, self.model.outputs, self.manifest.batch_axes)
            object.__setattr__(self, "axes", axes)

    @property
    def batch_axes(self) -> BatchAxes:
        """The batch axes (always set after construction)."""
        assert self.axes is not None
        return self.axes

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
    """Load ``path`` with ``manifest`` (default: the one beside it); raises ModelError.

    The manifest's ``batch_axes``, ``label_output`` and ``score_output`` must
    name the model's inputs and outputs. What the manifest leaves out of
    ``preprocess`` (colour, normalisation) and ``labels`` comes from a TFLite
    model's metadata when it carries some.
    """
    manifest = manifest if manifest is not None else load_manifest(path)
    model = load_model(path, threads, providers, manifest.quantized_io)
    try:
        _check_names(model, manifest)
        # Hashed here, not taken from the manifest: what is reported must be
        # the bytes actually loaded.
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        manifest, _ = with_metadata_defaults(manifest, data, model.inputs)
        axes = infer_batch_axes(model.inputs, model.outputs, manifest.batch_axes)
        rule = LabelRule.find(
            model.outputs, manifest.labels, manifest.label_output, manifest.score_output
        )
        vision = None
        if manifest.preprocess or manifest.postprocess or manifest.cascade:
            score_output = rule.score_output if rule is not None else None
            vision = VisionPlan(model, manifest, score_output)
    except BaseException:
        model.close()
        raise
    return LoadedModel(model, manifest, path, digest, axes, rule, vision=vision)


def _check_names(model: Model, manifest: Manifest) -> None:
    inputs = [s.name for s in model.inputs]
    outputs = [s.name for s in model.outputs]
    for name in manifest.batch_axes:
        if name not in inputs + outputs:
            raise ModelError(
                f"manifest batch_axes names {name!r}: expected one of the inputs {inputs} "
                f"or outputs {outputs}"
            )
    for key in ("label_output", "score_output"):
        name = getattr(manifest, key)
        if name is not None and name not in outputs:
            raise ModelError(f"manifest {key} = {name!r}: expected one of the outputs {outputs}")
