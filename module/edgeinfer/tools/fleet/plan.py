"""A fleet rollout's plan and progress: waves, the failure limit, the persisted state.

Everything ``edgeinfer rollout`` decides is written to its state file before it
acts on it (write-ahead), so a rollout killed at any moment resumes with
``--resume``: a desired state recorded as published is published again with the
same bytes (a module drops a document it already has), and the versions to go
back to were recorded before the first module was touched.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from edgeinfer.errors import ConfigError

#: A member's states. ``pending``: not touched; ``published``: the new desired state
#: is out; then one of the outcomes.
PENDING, PUBLISHED = "pending", "published"
ACTIVE, FAILED, ROLLED_BACK, TIMEOUT = "active", "failed", "rolled_back", "timeout"
OUTCOMES = (ACTIVE, FAILED, ROLLED_BACK, TIMEOUT)
FAILURES = (FAILED, ROLLED_BACK, TIMEOUT)
#: A member published to but without an outcome when the rollout stopped.
INTERRUPTED = "interrupted"
#: Revert states of a touched member after an abort.
REVERTING, REVERTED, NOT_CONFIRMED = "reverting", "reverted", "not confirmed"
#: The rollout's phases.
ROLLING, ABORTED, DONE = "rolling", "aborted", "done"


def parse_waves(text: str) -> list[tuple[float, bool]]:
    """``1,5,25,100%``: cumulative sizes, a count or (with ``%``) a share of the fleet.

    A bare number is a count of modules; a trailing ``%`` makes it a share. Sizes
    must grow; the last wave may stop short of the whole fleet (a partial rollout).
    """
    expected = "cumulative wave sizes, counts or percentages, growing: e.g. 1,5,25,100%"
    sizes: list[tuple[float, bool]] = []
    for raw in text.split(","):
        part = raw.strip()
        percent = part.endswith("%")
        try:
            value = float(part.rstrip("%"))
        except ValueError:
            raise ConfigError("--waves", text, expected) from None
        if not math.isfinite(value) or value <= 0 or (percent and value > 100):
            raise ConfigError("--waves", text, expected)
        if not percent and not value.is_integer():
            raise ConfigError("--waves", text, expected)
        sizes.append((value, percent))
    if not sizes:
        raise ConfigError("--waves", text, expected)
    return sizes


def plan_waves(module_ids: list[str], sizes: list[tuple[float, bool]]) -> list[list[str]]:
    """Split ``module_ids`` (in order) into waves of the cumulative ``sizes``.

    A percentage rounds up (1% of 12 is one module); a wave that would add no
    module is dropped.
    """
    waves: list[list[str]] = []
    reached = 0
    for value, percent in sizes:
        upto = math.ceil(len(module_ids) * value / 100) if percent else int(value)
        upto = min(upto, len(module_ids))
        if upto > reached:
            waves.append(module_ids[reached:upto])
            reached = upto
    return waves


@dataclass(frozen=True)
class FailureLimit:
    """``--max-failure``: at most N modules, or at most P% of those finished."""

    value: float
    percent: bool

    @classmethod
    def parse(cls, text: str) -> FailureLimit:
        expected = "a count of modules (e.g. 2) or a percentage of those finished (e.g. 10%)"
        percent = text.strip().endswith("%")
        try:
            value = float(text.strip().rstrip("%"))
        except ValueError:
            raise ConfigError("--max-failure", text, expected) from None
        if not math.isfinite(value) or value < 0 or (percent and value > 100):
            raise ConfigError("--max-failure", text, expected)
        return cls(value, percent)

    def exceeded(self, failures: int, finished: int) -> bool:
        """True once the failures are more than the limit allows."""
        if self.percent:
            return finished > 0 and failures * 100 > self.value * finished
        return failures > self.value

    def __str__(self) -> str:
        return f"{self.value:g}%" if self.percent else f"{self.value:g}"


@dataclass
class Member:
    """One module in the rollout: where it started and how far it got."""

    module_id: str
    wave: int
    previous: dict[str, str]  # {"name", "version"} it served before the rollout
    state: str = PENDING
    sequence: int | None = None  # of the desired state published to it (with the template)
    signature: str | None = None
    published_at: float | None = None  # time.time()
    baseline: str | None = None  # its last update step's "at" before the publish
    finished_at: float | None = None
    error: str | None = None
    revert: str | None = None  # REVERTING, REVERTED or NOT_CONFIRMED after an abort
    revert_doc: dict[str, Any] | None = None
    revert_at: float | None = None

    @property
    def touched(self) -> bool:
        return self.state != PENDING


@dataclass
class RolloutState:
    """What the state file holds."""

    selector: dict[str, str]
    name: str
    version: str
    sha256: str
    #: The desired state every module gets, without ``target``, ``sequence`` and
    #: ``signature`` (each member's own): built once, so every module gets the same bytes.
    template: dict[str, Any]
    waves: list[list[str]]
    members: dict[str, Member]
    max_failure: str
    min_done: int
    phase: str = ROLLING
    reason: str | None = None
    started_at: float = field(default_factory=time.time)
    crossed_at: float | None = None  # when the failure limit was crossed
    ended_at: float | None = None
    skipped: dict[str, str] = field(default_factory=dict)  # module id -> why

    def counts(self) -> dict[str, int]:
        """How many members are in each state."""
        counts: dict[str, int] = {}
        for member in self.members.values():
            counts[member.state] = counts.get(member.state, 0) + 1
        return counts

    def finished(self) -> int:
        return sum(m.state in OUTCOMES for m in self.members.values())

    def failures(self) -> int:
        return sum(m.state in FAILURES for m in self.members.values())

    def doc(self, member: Member) -> dict[str, Any]:
        """The desired state published to ``member``, byte for byte as it was."""
        doc = {**self.template, "target": {"module_id": member.module_id}}
        doc["sequence"] = member.sequence
        if member.signature is not None:
            doc["signature"] = member.signature
        return doc

    def save(self, path: Path) -> None:
        """Write the state atomically: a kill leaves the old file or the new, never half."""
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as out:
            out.write(orjson.dumps(asdict(self)))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)  # the rename itself survives a power cut
        finally:
            os.close(folder)

    @classmethod
    def load(cls, path: Path) -> RolloutState:
        try:
            doc = orjson.loads(path.read_bytes())
            members = {k: Member(**v) for k, v in doc.pop("members").items()}
            return cls(members=members, **doc)
        except FileNotFoundError:
            expected = "the state file of a rollout to resume"
            raise ConfigError("--state", str(path), expected) from None
        except (orjson.JSONDecodeError, TypeError, KeyError, AttributeError) as exc:
            raise ConfigError("--state", str(path), f"a rollout state file ({exc})") from None


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold ``path``'s lock file for the run: a second rollout on the same state is refused."""
    lock = path.with_name(f".{path.name}.lock")
    with open(lock, "w") as held:
        try:
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                "--state", str(path), "a state file no other rollout is using right now"
            ) from None
        yield
