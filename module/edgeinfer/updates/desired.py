"""The desired-state document (SPEC.md, "Desired state"), parsed strictly.

Unknown fields are refused rather than ignored, so that a document written for
a newer module (or mistyped) fails loudly instead of half-applying.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson

from edgeinfer.errors import UpdateError
from edgeinfer.manifest import Manifest
from edgeinfer.updates.states import Target
from edgeinfer.updates.store import check_part

MAX_DOCUMENT_BYTES = 65_536
_TOP_KEYS = {"model", "labels", "self_test", "sequence", "signature"}
_MODEL_KEYS = {"name", "version", "url", "sha256", "size", "format"}
_SELF_TEST_KEYS = {"inputs", "expect", "golden", "atol", "max_latency_ms"}
_EXPECT_KEYS = {"output", "shape", "min", "max"}
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


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

    @property
    def target(self) -> Target:
        return Target(self.name, self.version)

    def manifest(self, fmt: str) -> Manifest:
        """The manifest a version installed from this document is stored with."""
        return Manifest(
            name=self.name,
            version=self.version,
            format=fmt,
            sha256=self.sha256 or "",
            size=self.size,
            labels=self.labels or (),
            self_test=self.self_test or {},
            source=self.url,
        )


def parse_desired(payload: bytes, allowed_schemes: tuple[str, ...]) -> DesiredState:
    """Parse and validate a desired-state payload; raises UpdateError naming the bad field."""
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
    url = model.get("url")
    sha256 = model.get("sha256")
    size = model.get("size")
    fmt = model.get("format")
    if url is not None:
        if not isinstance(url, str) or urlsplit(url).scheme not in allowed_schemes:
            scheme = urlsplit(url).scheme if isinstance(url, str) else type(url).__name__
            raise UpdateError(
                f"model.url {url!r} has scheme {scheme!r}: expected one of "
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
        _check_self_test(self_test)
    sequence = doc.get("sequence")
    if sequence is not None and (
        not isinstance(sequence, int) or isinstance(sequence, bool) or sequence < 0
    ):
        raise UpdateError(f"sequence = {sequence!r}: expected an integer >= 0")
    signature = doc.get("signature")
    if signature is not None and not isinstance(signature, str):
        raise UpdateError(f"signature = {signature!r}: expected a base64 string")
    return DesiredState(
        name=name, version=version, url=url, sha256=sha256,
        size=size if isinstance(size, int) else None, format=fmt,
        labels=tuple(labels) if labels is not None else None,
        self_test=self_test, sequence=sequence, document=doc,
    )  # fmt: skip


def _no_unknown(where: str, doc: dict[str, Any], known: set[str]) -> None:
    unknown = sorted(set(doc) - known)
    if unknown:
        raise UpdateError(f"{where} has unknown fields {unknown}: expected only {sorted(known)}")


def _check_self_test(self_test: object) -> None:
    if not isinstance(self_test, dict):
        raise UpdateError(f"self_test = {self_test!r}: expected an object")
    _no_unknown('"self_test"', self_test, _SELF_TEST_KEYS)
    expect = self_test.get("expect")
    if expect is not None:
        if not isinstance(expect, dict):
            raise UpdateError(f"self_test.expect = {expect!r}: expected an object")
        _no_unknown('"self_test.expect"', expect, _EXPECT_KEYS)
        shape = expect.get("shape")
        if shape is not None and (
            not isinstance(shape, list) or not all(isinstance(d, int) for d in shape)
        ):
            raise UpdateError(f"self_test.expect.shape = {shape!r}: expected a list of integers")
    for key in ("atol", "max_latency_ms"):
        value = self_test.get(key)
        if value is not None and (not isinstance(value, int | float) or value < 0):
            raise UpdateError(f"self_test.{key} = {value!r}: expected a number >= 0")
    golden = self_test.get("golden")
    if golden is not None and not isinstance(golden, dict):
        raise UpdateError(f"self_test.golden = {golden!r}: expected {{output name: array}}")


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
    _check_self_test(dict(manifest.self_test))
