"""``[cascade]``: where uncertain readings are escalated, for whatever model is served.

Set here, it overrides the model manifest's ``cascade`` block (the escalation
topic belongs to the deployment's broker layout more than to the model); an
empty ``topic`` leaves the manifest's, if any.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeinfer.errors import ConfigError
from edgeinfer.manifest.vision import CascadeSpec
from edgeinfer.topics import TopicTemplate


@dataclass(frozen=True)
class CascadeConfig:
    """The deployment's cascade (``topic = ""``: the manifest's)."""

    topic: str = ""
    below: float = 0.0  # 0: not used
    margin: float = 0.0  # 0: not used
    max_fraction: float = 1.0
    max_per_s: float = 10.0

    def __post_init__(self) -> None:
        if not self.topic:
            return
        try:
            TopicTemplate.parse(self.topic)
        except ValueError as exc:
            raise ConfigError(
                "cascade.topic", self.topic, f"a topic template such as escalate/{{topic}} ({exc})"
            ) from exc
        for key in ("below", "margin"):
            if not 0 <= getattr(self, key) <= 1e9:
                raise ConfigError(f"cascade.{key}", getattr(self, key), "a score >= 0 (0: unused)")
        if not self.below and not self.margin:
            raise ConfigError("cascade.below", self.below, "a score > 0, or cascade.margin > 0")
        if not 0 <= self.max_fraction <= 1:
            raise ConfigError("cascade.max_fraction", self.max_fraction, "a fraction in 0..1")
        if not 0.01 <= self.max_per_s <= 1e6:
            raise ConfigError(
                "cascade.max_per_s", self.max_per_s, "escalations a second in 0.01..1e6"
            )

    def spec(self) -> CascadeSpec | None:
        """The block this section declares, or None when ``topic`` is empty."""
        if not self.topic:
            return None
        return CascadeSpec(
            topic=self.topic,
            below=self.below or None,
            margin=self.margin or None,
            max_fraction=self.max_fraction,
            max_per_s=self.max_per_s,
        )
