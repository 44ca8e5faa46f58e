"""Who may push a model: Ed25519 signatures and monotonic sequences, behind one interface.

The signature covers the *canonical JSON* of the desired document without its
``signature`` key: keys sorted, no whitespace, UTF-8, numbers in their shortest
form (what ``orjson.dumps(doc, option=OPT_SORT_KEYS)`` writes). ``edgeinfer
deploy --sign-key`` produces exactly that.

Verification is a list of :class:`Verifier` steps so another scheme (TUF
metadata, say) can be added without touching the update path.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any, Protocol

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgeinfer.errors import ConfigError, UpdateError
from edgeinfer.updates.store import ModelStore


def canonical(document: dict[str, Any]) -> bytes:
    """The bytes a signature covers: the document without ``signature``, canonical JSON."""
    unsigned = {k: v for k, v in document.items() if k != "signature"}
    return orjson.dumps(unsigned, option=orjson.OPT_SORT_KEYS)


def sign(document: dict[str, Any], key: Ed25519PrivateKey) -> str:
    """Base64 Ed25519 signature of ``document`` (its ``signature`` key ignored)."""
    return base64.b64encode(key.sign(canonical(document))).decode()


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """An Ed25519 private key from a PEM file (``openssl genpkey -algorithm ed25519``)."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(
            "--sign-key", str(path), f"an unencrypted Ed25519 PEM key ({exc})"
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError("--sign-key", str(path), f"an Ed25519 key, not {type(key).__name__}")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file (``openssl pkey -pubout``)."""
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(
            "updates.trusted_keys", str(path), f"a readable Ed25519 public key in PEM ({exc})"
        ) from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(
            "updates.trusted_keys", str(path), f"an Ed25519 public key, not {type(key).__name__}"
        )
    return key


class Signed(Protocol):
    """A document that may be signed: a desired state, or an inbox manifest."""

    @property
    def document(self) -> dict[str, Any]: ...

    @property
    def sequence(self) -> int | None: ...


class Verifier(Protocol):
    """One check a document must pass before anything is downloaded or installed."""

    def verify(self, desired: Signed) -> None:
        """Raise UpdateError saying why the document is refused."""
        ...

    def accept(self, desired: Signed) -> None:
        """Record that the document was accepted (e.g. persist its sequence)."""
        ...


class SignatureVerifier:
    """The document must be signed by one of the trusted keys."""

    def __init__(self, keys: list[Ed25519PublicKey]) -> None:
        self._keys = keys

    def verify(self, desired: Signed) -> None:
        signature = desired.document.get("signature")
        if not isinstance(signature, str):
            raise UpdateError(
                'desired state is not signed: expected a "signature" from one of the trusted keys'
            )
        try:
            raw = base64.b64decode(signature, validate=True)
        except ValueError as exc:
            raise UpdateError(f"signature is not base64 ({exc})") from exc
        message = canonical(desired.document)
        for key in self._keys:
            try:
                key.verify(raw, message)
                return
            except InvalidSignature:
                continue
        raise UpdateError("bad signature: no trusted key verifies this desired state")

    def accept(self, desired: Signed) -> None:
        return None


class SequenceVerifier:
    """The sequence must exceed the last accepted one (persisted in the store).

    The same document again (same sequence and content) is accepted, so an
    update interrupted by a restart resumes when the retained desired state
    is delivered anew; an older or different document with a used sequence
    is a replay and refused.
    """

    def __init__(self, store: ModelStore) -> None:
        self._store = store

    def verify(self, desired: Signed) -> None:
        if desired.sequence is None:
            raise UpdateError(
                'desired state has no "sequence": expected an integer higher '
                "than the last accepted one"
            )
        last = self._store.read_state().get("sequence")
        if last is None:
            return
        digest = _digest(desired)
        if desired.sequence == last.get("value") and digest == last.get("digest"):
            return
        if desired.sequence <= int(last.get("value", -1)):
            raise UpdateError(
                f"sequence {desired.sequence} is not higher than the last "
                f"accepted {last.get('value')}: a replayed or older desired state"
            )

    def accept(self, desired: Signed) -> None:
        state = self._store.read_state()
        state["sequence"] = {"value": desired.sequence, "digest": _digest(desired)}
        self._store.write_state(state)


def _digest(desired: Signed) -> str:
    return hashlib.sha256(canonical(desired.document)).hexdigest()
