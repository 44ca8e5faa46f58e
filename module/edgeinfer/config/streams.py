"""``[streams]``: the window over streamed samples, and the journal that keeps them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgeinfer.errors import ConfigError


@dataclass(frozen=True)
class StreamsConfig:
    """Overrides of the model manifest's ``window`` (0 or "": the manifest's), and the journal.

    With ``journal`` on, a sample is acknowledged once it is committed to
    ``<state_dir>/streams.sqlite`` (with the stream's state), so samples that
    wait in a window survive a killed module. ``journal_sync = "full"`` also
    survives a power cut, at the cost of an fsync per group commit.
    """

    journal: bool = True
    journal_sync: str = "normal"
    window_size: int = 0
    window_hop: int = 0
    window_key: str = ""
    window_timeout_s: float = 0.0
    window_partial: str = ""
    max_streams: int = 0

    def __post_init__(self) -> None:
        if self.journal_sync not in ("normal", "full"):
            raise ConfigError("streams.journal_sync", self.journal_sync, '"normal" or "full"')
        for key in ("window_size", "window_hop", "max_streams"):
            if getattr(self, key) < 0:
                raise ConfigError(
                    f"streams.{key}", getattr(self, key), "a count >= 1 (0: the manifest's)"
                )
        if self.window_timeout_s < 0:
            raise ConfigError(
                "streams.window_timeout_s", self.window_timeout_s, "seconds > 0 (0: the manifest's)"
            )
        if self.window_partial not in ("", "drop", "pad"):
            raise ConfigError(
                "streams.window_partial",
                self.window_partial,
                '"drop" or "pad" ("": the manifest\'s)',
            )

    def window_overrides(self) -> dict[str, Any]:
        """The window keys this configuration sets."""
        return {
            "size": self.window_size,
            "hop": self.window_hop,
            "key": self.window_key,
            "timeout_s": self.window_timeout_s,
            "partial": self.window_partial,
            "max_streams": self.max_streams,
        }
