"""The desired-state document (docs/reference.md, "Desired state"), parsed strictly.

Unknown fields are refused rather than ignored, so that a document written for
a newer module (or mistyped) fails loudly instead of half-applying.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson

from edgeinfer.errors import ModelError, UpdateError
from edgeinfer.manifest.document import Manifest
from edgeinfer.serving.selftest import check_self_test_spec
from edgeinfer.updates.download import shown
from edgeinfer.updates.rollouts.spec import RolloutSpec
from edgeinfer.updates.states import Target
from edgeinfer.updates.store import check_part

MAX_DOCUMENT_BYTES = 65_536
#: Manifest keys a desired state may carry, so that they travel with the update.
MANIFEST_KEYS = (
    "batch_axes",
    "label_output",
    "score_output",
    "quantized_io",
    "window",
    "state",
    "preprocess",
    "postprocess",
    "cascade",
)
_TOP_KEYS = {
    "model",
    "labels",
    "self_test",
    "sequence",
    "signature",
    "target",
    "rollout",
    *MANIFEST_KEYS,
}
_MODEL_KEYS = {"name", "version", "url", "sha256", "size", "format"}
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class DesiredStateError(UpdateError):
    """A desired state refused after its model's name and version were read."""

    def __init__(self, message: str, target: Target) -> None:
        super().__init__(message)
        self.target = target


@dataclass(frozen=True)
class Recipient:
    """Who a document is for: one module, or every module whose labels match a selector."""

    module_id: str | None = None
    selector: dict[str, str] = field(default_factory=dict)

    def refuses(self, module_id: str, labels: dict[str, str]) -> str | None:
        """Why a module with ``module_id`` and ``labels`` must not take the document, or None."""
        if self.module_id is not None and self.module_id != module_id:
            return f"this desired state is for module {self.module_id!r}, not this one"
        missing = {k: v for k, v in self.selector.items() if labels.get(k) != v}
        if missing:
            return (
                f"this desired state is for modules labelled {self.selector}, and this one "
                f"is labelled {labels}"
            )
        return None

    @classmethod
    def parse(cls, value: object) -> Recipient:
        """``{"module_id": "gw1"}`` or ``{"selector": {"site": "a"}}``."""
        expected = 'expected {"module_id": "<id>"} or {"selector": {"<label>": "<value>"}}'
        if not isinstance(value, dict) or set(value) - {"module_id", "selector"} or not value:
            raise UpdateError(f"target = {value!r}: {expected}")
        module_id, selector = value.get("module_id"), value.get("selector", {})
        if module_id is not None and not isinstance(module_id, str):
            raise UpdateError(f"target.module_id = {module_id!r}: {expected}")
        if not isinstance(selector, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in selector.items()
        ):
            raise UpdateError(f"target.selector = {selector!r}: {expected}")
        return cls(module_id, dict(selector))


@dataclass(frozen=True)
class DesiredState:
    """A validated desired state."""

    name: str
    version: str
    url: str | None
    sha256: str | None
    size: int | None
    format: str | None
    labels: tuple[str, ...] | None
    self_test: dict[str, Any] | None
    sequence: int | None
    document: dict[str, Any] = field(repr=False, compare=False)
    recipient: Recipient | None = None  # the document's "target": who it is for
    extensions: dict[str, Any] = field(default_factory=dict)  # MANIFEST_KEYS it carries
    rollout: RolloutSpec | None = None  # bring the model in progressively

    @property
    def target(self) -> Target:
        return Target(self.name, self.version)

    def manifest(self, fmt: str | None) -> Manifest:
        """The manifest a version installed from this document is stored with."""
        base = Manifest(
            name=self.name,
            version=self.version,
            format=fmt,
            sha256=self.sha256 or "",
            size=self.size,
            labels=self.labels or (),
            self_test=self.self_test or {},
            source=self.url,
        )
        if not self.extensions:
            return base
        return Manifest.from_doc({**base.to_doc(), **self.extensions}, "desired state")


def parse_desired(payload: bytes, allowed_schemes: tuple[str, ...]) -> DesiredState:
    """Parse and validate a desired-state payload; raises UpdateError naming the bad field.

    Once the model's name and version are read, the error is a DesiredStateError
    that names them, so the failed report says which update it was.
    """
    if len(payload) > MAX_DOCUMENT_BYTES:
        raise UpdateError(
            f"desired state is {len(payload)} bytes: expected at most {MAX_DOCUMENT_BYTES}"
        )
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise UpdateError(f"desired state is not JSON ({exc}): expected a JSON object") from exc
    if not isinstance(doc, dict):
        raise UpdateError(f"desired state is a JSON {type(doc).__name__}: expected an object")
    _no_unknown("desired state", doc, _TOP_KEYS)
    model = doc.get("model")
    if not isinstance(model, dict):
        raise UpdateError('"model" is missing or not an object: expected {"name", "version", ...}')
    _no_unknown('"model"', model, _MODEL_KEYS)
    name = check_part("model.name", model.get("name"))
    version = check_part("model.version", model.get("version"))
    try:
        return _parse_rest(doc, model, name, version, allowed_schemes)
    except UpdateError as exc:
        raise DesiredStateError(str(exc), Target(name, version)) from exc


def _parse_rest(
    doc: dict[str, Any],
    model: dict[str, Any],
    name: str,
    version: str,
    allowed_schemes: tuple[str, ...],
) -> DesiredState:
    url = model.get("url")
    sha256 = model.get("sha256")
    size = model.get("size")
    fmt = model.get("format")
    if url is not None:
        if not isinstance(url, str) or urlsplit(url).scheme not in allowed_schemes:
            scheme = urlsplit(url).scheme if isinstance(url, str) else type(url).__name__
            shown_url = shown(url) if isinstance(url, str) else url
            raise UpdateError(
                f"model.url {shown_url!r} has scheme {scheme!r}: expected one of "
                f"{', '.join(allowed_schemes)}"
            )
        if not isinstance(sha256, str) or not _SHA256.match(sha256):
            raise UpdateError(
                f"model.sha256 = {sha256!r}: expected 64 lowercase hex digits (required with a url)"
            )
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise UpdateError(
                f"model.size = {size!r}: expected the file size in bytes, > 0 (required with a url)"
            )
    elif sha256 is not None and (not isinstance(sha256, str) or not _SHA256.match(sha256)):
        raise UpdateError(f"model.sha256 = {sha256!r}: expected 64 lowercase hex digits")
    if fmt is not None and fmt not in ("onnx", "tflite"):
        raise UpdateError(f'model.format = {fmt!r}: expected "onnx" or "tflite"')
    labels = doc.get("labels")
    if labels is not None and (
        not isinstance(labels, list) or not all(isinstance(x, str) for x in labels)
    ):
        raise UpdateError(f"labels = {labels!r}: expected a list of strings")
    self_test = doc.get("self_test")
    if self_test is not None:
        check_self_test_spec(self_test)
    sequence = doc.get("sequence")
    if sequence is not None and (
        not isinstance(sequence, int) or isinstance(sequence, bool) or sequence < 0
    ):
        raise UpdateError(f"sequence = {sequence!r}: expected an integer >= 0")
    signature = doc.get("signature")
    if signature is not None and not isinstance(signature, str):
        raise UpdateError(f"signature = {signature!r}: expected a base64 string")
    recipient = Recipient.parse(doc["target"]) if "target" in doc else None
    extensions = {key: doc[key] for key in MANIFEST_KEYS if key in doc}
    try:
        Manifest.from_doc(dict(extensions), "desired state")
    except ModelError as exc:
        raise UpdateError(str(exc)) from exc
    rollout = RolloutSpec.parse(doc["rollout"]) if "rollout" in doc else None
    return DesiredState(
        name=name,
        version=version,
        url=url,
        sha256=sha256,
        size=size if isinstance(size, int) else None,
        format=fmt,
        labels=tuple(labels) if labels is not None else None,
        self_test=self_test,
        sequence=sequence,
        document=doc,
        recipient=recipient,
        extensions=extensions,
        rollout=rollout,
    )


def _no_unknown(where: str, doc: dict[str, Any], known: set[str]) -> None:
    unknown = sorted(set(doc) - known)
    if unknown:
        raise UpdateError(f"{where} has unknown fields {unknown}: expected only {sorted(known)}")


def check_install_fields(manifest: Manifest) -> None:
    """The checks a desired state's model gets, for a manifest installed from a local file."""
    check_part("model.name", manifest.name)
    check_part("model.version", manifest.version)
    if not _SHA256.match(manifest.sha256):
        raise UpdateError(
            f"sha256 = {manifest.sha256!r}: expected 64 lowercase hex digits (required)"
        )
    if manifest.size is None or manifest.size <= 0:
        raise UpdateError(f"size = {manifest.size!r}: expected the file size in bytes, > 0")
    check_self_test_spec(dict(manifest.self_test))
