"""``edgeinfer rollout``: a model across a fleet in waves, stopping and reverting on failures.

The broker is all it needs. The modules are found from their retained reported
states (selected by label), split into waves, and sent signed desired states
wave by wave, each naming its module (``target``). A module is done when it
reports ``active`` on the new version (after its probation and any rollout
gates), ``failed`` or ``rolled_back``, or when ``--timeout`` passes. Once
``--min-done`` modules are done and more failed than ``--max-failure`` allows,
the rollout stops: no further module is touched, and every module it touched
gets a desired state that activates the version it served before (from its
store: the old document could not be re-sent, its sequence is spent), until
each reports that version active (or ``--timeout`` passes: "not confirmed").

Each step is written to the state file before it is taken, so a killed rollout
goes on with ``--resume``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeinfer.config import BrokerConfig
from edgeinfer.errors import ConfigError, EdgeInferError, UpdateError
from edgeinfer.tools.deploy import build_desired
from edgeinfer.tools.fleet.plan import (
    ABORTED,
    ACTIVE,
    DONE,
    INTERRUPTED,
    NOT_CONFIRMED,
    OUTCOMES,
    PENDING,
    PUBLISHED,
    REVERTED,
    REVERTING,
    ROLLING,
    TIMEOUT,
    FailureLimit,
    Member,
    RolloutState,
    exclusive,
    parse_waves,
    plan_waves,
)
from edgeinfer.tools.fleet.status import select
from edgeinfer.tools.fleet.view import live_view
from edgeinfer.tools.fleet.watch import FleetWatch
from edgeinfer.updates.rollouts.spec import RolloutSpec
from edgeinfer.updates.signing import load_private_key, sign


@dataclass(frozen=True)
class RolloutOptions:
    """What ``edgeinfer rollout`` was asked to do."""

    selector: dict[str, str]
    model: Path
    version: str
    waves: str
    max_failure: str
    min_done: int = 1
    sign_key: Path | None = None
    state_file: Path | None = None
    resume: bool = False
    dry_run: bool = False
    url: str | None = None
    timeout_s: float = 300.0
    module_rollout: dict[str, Any] | None = None  # a rollout block for each module's update

    def state_path(self, name: str) -> Path:
        return self.state_file or Path(f"rollout-{name}-{self.version}.json")


Show = Callable[[str], None]


def run_rollout(broker: BrokerConfig, options: RolloutOptions) -> int:
    """Run (or resume) the rollout; 0 when done, 1 when it stopped (and reverted)."""
    template = _template(options)
    name = template["model"]["name"]
    path = options.state_path(name)
    if not options.selector:
        raise ConfigError(
            "--selector", "", "at least one label=value (every module: a label all share)"
        )
    watch: FleetWatch | None = None  # one connection plans, publishes and follows
    with exclusive(path):
        try:
            if options.resume:
                state = RolloutState.load(path)
                if (state.name, state.version, state.sha256) != (
                    name,
                    options.version,
                    template["model"]["sha256"],
                ):
                    raise ConfigError(
                        "--resume",
                        str(path),
                        f"a rollout of {name} {options.version} with this model file "
                        f"(the state file is for {state.name} {state.version})",
                    )
            else:
                if path.exists() and RolloutState.load(path).phase == ROLLING:
                    raise ConfigError(
                        "--state", str(path), "no unfinished rollout there: pass --resume to go on"
                    )
                watch = _watch(broker)
                state = _plan(select(watch.modules(), options.selector), options, template)
            print(describe_plan(state), flush=True)
            if options.dry_run:
                return 0
            state.save(path)
            watch = watch or _watch(broker)
            with live_view(state, watch.reported) as (show, refresh):
                runner = Runner(state, path, watch, options, show, refresh)
                return runner.run(resumed=options.resume)
        finally:
            if watch is not None:
                watch.close()


def _watch(broker: BrokerConfig) -> FleetWatch:
    """A watch on every module's retained topics, with what the broker holds arrived."""
    try:
        watch = FleetWatch(broker)
    except (OSError, TimeoutError) as exc:
        raise EdgeInferError(f"cannot reach the broker {broker.url}: {exc}") from exc
    watch.settle()
    return watch


def _template(options: RolloutOptions) -> dict[str, Any]:
    """The document every module gets, less its target, sequence and signature."""
    doc = build_desired(options.model, options.version, url=options.url, sequence=0)
    del doc["sequence"]
    if options.module_rollout is not None:
        try:
            spec = RolloutSpec.parse(options.module_rollout)
        except UpdateError as exc:
            raise ConfigError("--module-rollout", options.module_rollout, str(exc)) from None
        if spec.mode == "ab" or spec.on_pass == "hold" or spec.on_fail == "pause":
            raise ConfigError(
                "--module-rollout",
                options.module_rollout,
                "a shadow or canary that ends on its own (on_pass promote, on_fail rollback): "
                "A/B, hold and pause wait for an operator, so no module would ever be done",
            )
        doc["rollout"] = options.module_rollout
    return doc


def _plan(
    selected: list[dict[str, Any]], options: RolloutOptions, template: dict[str, Any]
) -> RolloutState:
    """Note what each selected module serves now, and split them into waves."""
    limit = FailureLimit.parse(options.max_failure)
    name = template["model"]["name"]
    chosen: list[str] = []
    members: dict[str, Member] = {}
    skipped: dict[str, str] = {}
    for module in selected:
        mid, model = module["module_id"], module["model"] or {}
        update = module["update"] or {}
        if not module["online"]:
            skipped[mid] = "offline"
        elif not model.get("version"):
            skipped[mid] = "serves no model"
        elif model.get("name") != name:
            skipped[mid] = f"serves another model ({model.get('name')})"
        elif model.get("version") == options.version and update.get("state") in ("active", "idle"):
            skipped[mid] = f"already serves {name} {options.version}"
        else:
            chosen.append(mid)
            at = update.get("at")
            previous = {"name": model["name"], "version": model["version"]}
            members[mid] = Member(mid, 0, previous, baseline=at if isinstance(at, str) else None)
    if not chosen:
        raise ConfigError(
            "--selector",
            options.selector,
            f"at least one online module to update (skipped: {skipped or 'none found'})",
        )
    waves = plan_waves(chosen, parse_waves(options.waves))
    for n, wave in enumerate(waves):
        for mid in wave:
            members[mid].wave = n
    return RolloutState(
        selector=options.selector,
        name=name,
        version=options.version,
        sha256=template["model"]["sha256"],
        template=template,
        waves=waves,
        members={mid: members[mid] for wave in waves for mid in wave},
        max_failure=str(limit),
        min_done=options.min_done,
        skipped=skipped,
    )


def describe_plan(state: RolloutState) -> str:
    """The waves, one line each, and what was left out."""
    lines = [
        f"rollout of {state.name} {state.version} to {len(state.members)} modules in "
        f"{len(state.waves)} waves (stop when more than {state.max_failure} fail, "
        f"once {state.min_done} are done):"
    ]
    for n, wave in enumerate(state.waves, 1):
        lines.append(f"  wave {n}: {len(wave)} modules: {', '.join(wave)}")
    for mid, why in sorted(state.skipped.items()):
        lines.append(f"  skipped {mid}: {why}")
    return "\n".join(lines)


class Runner:
    """Waves, outcomes and the abort, over one FleetWatch."""

    def __init__(
        self,
        state: RolloutState,
        path: Path,
        watch: FleetWatch,
        options: RolloutOptions,
        show: Show,
        refresh: Callable[[], None] = lambda: None,
    ) -> None:
        self.state, self.path, self.watch = state, path, watch
        self.options, self.show, self.refresh = options, show, refresh
        self.limit = FailureLimit.parse(state.max_failure)  # the plan's, also on --resume
        self._key = load_private_key(options.sign_key) if options.sign_key else None
        # Timeouts run from when this process took a member over: a resumed rollout
        # does not time out modules for the time it was not running.
        self._since: dict[str, float] = {}

    def run(self, resumed: bool = False) -> int:
        state = self.state
        if resumed:
            now = time.time()
            for member in state.members.values():
                self._since[member.module_id] = now
                if member.state == PUBLISHED:
                    self._follow(member)  # an outcome reached while no rollout ran
        if state.phase == ROLLING:
            for n, wave in enumerate(state.waves):
                if not self._wave(n, wave):
                    break
            else:
                state.phase = DONE
                state.ended_at = time.time()
                state.save(self.path)
        if state.phase == ABORTED:
            self._revert()
        self.refresh()
        self.show(self.summary())
        return 0 if state.phase == DONE else 1

    def _wave(self, n: int, wave: list[str]) -> bool:
        """Publish to the wave's modules and wait for them; False once the rollout stops."""
        members = [self.state.members[mid] for mid in wave]
        fresh = [m for m in members if m.state == PENDING]
        for member in fresh:  # recorded first, all at once: a resume publishes them again
            doc = self.state.doc(member) | {"sequence": int(time.time() * 1000)}
            member.sequence = doc["sequence"]
            member.signature = sign(doc, self._key) if self._key is not None else None
            member.baseline = _at(self.watch.reported(member.module_id)) or member.baseline
            member.state = PUBLISHED
            member.published_at = self._since[member.module_id] = time.time()
        if fresh:
            self.state.save(self.path)
        for member in members:
            if member.state == PUBLISHED:
                self.watch.publish_desired(member.module_id, self.state.doc(member))
        self.show(f"wave {n + 1}/{len(self.state.waves)}: {len(wave)} modules published")
        while True:
            for member in members:
                if member.state == PUBLISHED:
                    self._follow(member)
            if self._over_limit():
                return False
            if all(m.state in OUTCOMES for m in members):
                return True
            self.refresh()
            self.watch.wait(0.5)

    def _follow(self, member: Member) -> None:
        """Take the module's outcome from its reported state, or time it out."""
        doc = self.watch.reported(member.module_id)
        update = doc.get("update") or {}
        target = update.get("target") or {}
        fresh = update.get("at") != member.baseline
        ours = (target.get("name"), target.get("version")) == (self.state.name, self.state.version)
        outcome = None
        if fresh and ours:
            served = (doc.get("model") or {}).get("version")
            if update.get("state") == "active" and served == self.state.version:
                outcome = ACTIVE
            elif update.get("state") in ("failed", "rolled_back"):
                outcome = str(update["state"])
                member.error = update.get("error")
        since = self._since.get(member.module_id, member.published_at or 0)
        if outcome is None and time.time() - since > self.options.timeout_s:
            outcome = TIMEOUT
            member.error = f"no final state within {self.options.timeout_s:g} s"
        if outcome is not None:
            member.state = outcome
            member.finished_at = time.time()
            self.state.save(self.path)
            self.show(self._line(member))

    def _over_limit(self) -> bool:
        state = self.state
        finished, failures = state.finished(), state.failures()
        if finished < state.min_done or not self.limit.exceeded(failures, finished):
            return False
        state.phase = ABORTED
        state.crossed_at = time.time()
        state.reason = (
            f"{failures} of {finished} finished modules failed: more than --max-failure "
            f"{state.max_failure}"
        )
        for member in state.members.values():
            if member.state == PUBLISHED:
                member.state = INTERRUPTED
        state.save(self.path)
        self.show(f"stopping: {state.reason}; reverting every module this rollout touched")
        return True

    def _revert(self) -> None:
        """Activate each touched module's previous version and wait for it to say so."""
        touched = [m for m in self.state.members.values() if m.touched]
        for member in touched:
            if member.revert is None:
                previous = member.previous
                sequence = max(int(time.time() * 1000), (member.sequence or 0) + 1)
                member.revert_doc = build_desired(
                    None,
                    previous["version"],
                    previous["name"],
                    sign_key=self.options.sign_key,
                    module_id=member.module_id,
                    sequence=sequence,
                )
                member.revert = REVERTING
                member.revert_at = time.time()
        self.state.save(self.path)
        for member in touched:
            self._since[member.module_id] = time.time()
            if member.revert == REVERTING and member.revert_doc is not None:
                self.watch.publish_desired(member.module_id, member.revert_doc)
        while any(m.revert == REVERTING for m in touched):
            for member in touched:
                if member.revert == REVERTING:
                    self._follow_revert(member)
            self.refresh()
            self.watch.wait(0.5)
        self.state.ended_at = time.time()
        self.state.save(self.path)

    def _follow_revert(self, member: Member) -> None:
        """Reverted once it serves its previous version, settled: a module that never
        left it reports nothing new for a document naming what it serves."""
        doc = self.watch.reported(member.module_id)
        update = doc.get("update") or {}
        served = (doc.get("model") or {}).get("version")
        if served == member.previous["version"] and update.get("state") in ("active", "idle"):
            member.revert = REVERTED
        elif time.time() - self._since[member.module_id] > self.options.timeout_s:
            member.revert = NOT_CONFIRMED
        else:
            return
        self.state.save(self.path)
        self.show(f"  {member.module_id}: back on {member.previous['version']}: {member.revert}")

    def _line(self, member: Member) -> str:
        took = (member.finished_at or 0) - (member.published_at or 0)
        text = f"  {member.module_id} (wave {member.wave + 1}): {member.state} in {took:.1f} s"
        return text + (f": {member.error}" if member.error else "")

    def summary(self) -> str:
        """The final counts, and the times the closing figures are taken from."""
        state = self.state
        counts = ", ".join(f"{n} {s}" for s, n in sorted(state.counts().items()))
        took = (state.ended_at or time.time()) - state.started_at
        if state.phase == DONE:
            return f"rollout of {state.name} {state.version} done in {took:.1f} s: {counts}"
        reverted = [m for m in state.members.values() if m.revert is not None]
        back = sum(m.revert == REVERTED for m in reverted)
        since = (state.ended_at or time.time()) - (state.crossed_at or state.started_at)
        return (
            f"rollout of {state.name} {state.version} stopped: {state.reason}. {counts}; "
            f"{back} of {len(reverted)} touched modules back on their previous version "
            f"{since:.1f} s after the limit was crossed"
            + ("" if back == len(reverted) else " (the others: not confirmed, see --state)")
        )


def _at(doc: dict[str, Any]) -> str | None:
    """When the module's latest update step happened, as it reported it (an opaque token)."""
    update = doc.get("update") or {}
    at = update.get("at")
    return at if isinstance(at, str) else None
