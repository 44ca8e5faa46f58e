"""How a model takes a stream of samples: its window and its recurrent state.

Both are declared in the model's manifest (``window``, ``state``), so they
travel with an over-the-air update; ``[streams]`` in the configuration may
override the window. Validated here, once, with errors that name the key.

A window is ``size`` samples of the model's windowed input, taken every
``hop`` samples (``hop < size``: windows overlap), per stream. A stream is
the readings of one topic, or of one value of a payload field (``key``).
After ``timeout_s`` without a sample a partial window is dropped, or padded
with zeros and answered (``partial``). At most ``max_streams`` streams are
kept.

A recurrent model's ``state.map`` pairs each state input with the output that
carries its next value; each stream starts from ``init`` (zeros, or a ``.npz``
file beside the model, one array per state input) and starts over after ``idle_reset_s`` of silence.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from edgeinfer.errors import ModelError

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MAX_STREAMS = 1000
PARTIAL = ("drop", "pad")


@dataclass(frozen=True)
class WindowSpec:
    """``manifest.window``: how samples become the model's windowed input."""

    size: int
    hop: int
    key: str = "topic"
    timeout_s: float = DEFAULT_TIMEOUT_S
    partial: str = "drop"
    max_streams: int = DEFAULT_MAX_STREAMS
    #: The windowed input (default: the one input that is neither state nor fixed).
    input: str | None = None
    #: Values for the other inputs, the same for every window (a sample rate, say).
    fixed: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_doc(cls, doc: object, where: str) -> WindowSpec:
        """Validate ``manifest.window``; raises ModelError naming the key."""
        if not isinstance(doc, dict):
            raise ModelError(f"{where}: window = {doc!r}: expected an object with size and hop")
        known = {"size", "hop", "key", "timeout_s", "partial", "max_streams", "input", "fixed"}
        unknown = sorted(set(doc) - known)
        if unknown:
            raise ModelError(
                f"{where}: window has unknown keys {unknown}: expected {sorted(known)}"
            )
        size = _count(doc.get("size"), f"{where}: window.size", "a number of samples >= 1")
        hop = _count(doc.get("hop", size), f"{where}: window.hop", f"1..{size} (window.size)")
        spec = cls(
            size=size,
            hop=hop,
            key=_text(doc.get("key", "topic"), f"{where}: window.key", '"topic" or a field name'),
            timeout_s=_seconds(
                doc.get("timeout_s", DEFAULT_TIMEOUT_S), f"{where}: window.timeout_s"
            ),
            partial=doc.get("partial", "drop"),
            max_streams=_count(
                doc.get("max_streams", DEFAULT_MAX_STREAMS),
                f"{where}: window.max_streams",
                "a number of streams >= 1",
            ),
            input=doc.get("input"),
            fixed=doc.get("fixed", {}),
        )
        spec.check(where)
        return spec

    def check(self, where: str) -> None:
        """Raise ModelError when the values do not fit together."""
        if not 1 <= self.hop <= self.size:
            raise ModelError(
                f"{where}: window.hop = {self.hop!r}: expected 1..{self.size} (window.size)"
            )
        if self.partial not in PARTIAL:
            raise ModelError(
                f'{where}: window.partial = {self.partial!r}: expected "drop" or "pad"'
            )
        if self.input is not None and not isinstance(self.input, str):
            raise ModelError(f"{where}: window.input = {self.input!r}: expected an input name")
        if not isinstance(self.fixed, Mapping):
            raise ModelError(
                f"{where}: window.fixed = {self.fixed!r}: expected {{input name: value}}"
            )

    def with_overrides(self, **values: Any) -> WindowSpec:
        """This spec with the given keys replaced (``[streams]`` in the configuration)."""
        spec = replace(self, **{k: v for k, v in values.items() if v not in (None, 0, "")})
        spec.check("[streams]")
        return spec

    def to_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "size": self.size,
            "hop": self.hop,
            "key": self.key,
            "timeout_s": self.timeout_s,
            "partial": self.partial,
            "max_streams": self.max_streams,
        }
        if self.input is not None:
            doc["input"] = self.input
        if self.fixed:
            doc["fixed"] = dict(self.fixed)
        return doc


@dataclass(frozen=True)
class StateSpec:
    """``manifest.state``: a recurrent model's state, carried per stream."""

    map: Mapping[str, str]  # state input -> the output holding its next value
    init: str = "zeros"  # or a .npz file beside the model, one array per state input
    idle_reset_s: float = 0.0  # 0: never

    @classmethod
    def from_doc(cls, doc: object, where: str) -> StateSpec:
        """Validate ``manifest.state``; raises ModelError naming the key."""
        if not isinstance(doc, dict):
            raise ModelError(f"{where}: state = {doc!r}: expected an object with a map")
        mapping = doc.get("map")
        if (
            not isinstance(mapping, dict)
            or not mapping
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items())
        ):
            raise ModelError(
                f"{where}: state.map = {mapping!r}: expected {{state input: state output}}"
            )
        init = doc.get("init", "zeros")
        if not isinstance(init, str) or not init:
            raise ModelError(
                f'{where}: state.init = {init!r}: expected "zeros" or a .npz file beside the model'
            )
        reset = _seconds(doc.get("idle_reset_s", 0.0), f"{where}: state.idle_reset_s", zero=True)
        return cls(dict(mapping), init, reset)

    def to_doc(self) -> dict[str, Any]:
        return {"map": dict(self.map), "init": self.init, "idle_reset_s": self.idle_reset_s}


def _count(value: object, key: str, expected: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ModelError(f"{key} = {value!r}: expected {expected}")
    return value


def _seconds(value: object, key: str, zero: bool = False) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not (value >= 0 if zero else value > 0):  # type: ignore[operator]
        raise ModelError(
            f"{key} = {value!r}: expected a number of seconds {'>=' if zero else '>'} 0"
        )
    return float(value)  # type: ignore[arg-type]


def _text(value: object, key: str, expected: str) -> str:
    if not isinstance(value, str) or not value:
        raise ModelError(f"{key} = {value!r}: expected {expected}")
    return value
