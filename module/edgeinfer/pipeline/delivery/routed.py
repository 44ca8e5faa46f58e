"""Answering a batch with two versions loaded: the active model and a rollout's candidate.

Used by the engine while a :class:`~.routing.Route` is set. Every reading is
answered exactly once, by the version its stream is routed to (canary, A/B) or
by the active model (shadow); its result names that version. The active
model's results are handed on first; mirrored runs (the candidate on a shadow
share, the active model on the candidate's readings) come after, within the
mirror budget, and only feed the comparison and the shadow topic.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson

from edgeinfer.errors import ReadingError
from edgeinfer.model.interpretation import interpret
from edgeinfer.model.loaded import LoadedModel
from edgeinfer.pipeline.decode import Reading
from edgeinfer.pipeline.delivery.routing import FAILED_LABEL, SHADOW, MirrorBudget, Route
from edgeinfer.pipeline.encode import encode_result
from edgeinfer.pipeline.message import Message
from edgeinfer.pipeline.runner import Answer, Runner, RunStats
from edgeinfer.runtimes.base import Value

#: (model, message, reading, outputs, now): publish one reading's result.
PublishResult = Callable[[LoadedModel, Message, Reading, dict[str, Value], float], None]
#: (model, readings, stats): a model run's outcome, for the observers.
Observe = Callable[[LoadedModel, int, RunStats], None]


class RoutedAnswers:
    """Splits batches between the active model and the candidate (the serving thread)."""

    def __init__(
        self,
        route: Route,
        runner: Runner,
        publish: PublishResult,
        error: Callable[[Message, ReadingError], None],
        shadow: Callable[[str, bytes], None],
        observe: Observe,
    ) -> None:
        self.route = route
        self._runner = runner  # for the candidate (its own batch limit)
        self._publish = publish
        self._error = error
        self._shadow = shadow
        self._observe = observe
        self._budget = MirrorBudget(route.budget)
        self._credit = 0.0  # shadow: the share of readings mirrored, spread evenly

    def answer(
        self,
        active: LoadedModel,
        runner: Runner,
        decoded: list[tuple[Message, Reading]],
        backlog: bool,
        answered: set[int],
    ) -> None:
        """Answer ``decoded`` (each reading once, noted in ``answered``, results in arrival
        order whichever version answered), then mirror what the budget allows."""
        route = self.route
        mine = [route.to_candidate(_key(route, *d)) for d in decoded]
        theirs = [d for d, m in zip(decoded, mine, strict=True) if not m]
        ours = [d for d, m in zip(decoded, mine, strict=True) if m]
        answers_a, seconds_a = self._run(active, runner, theirs, "active")
        answers_c, seconds_c = self._run(route.candidate, self._runner, ours, "candidate")
        now = time.perf_counter()
        from_a, from_c = iter(answers_a), iter(answers_c)
        for (message, reading), m in zip(decoded, mine, strict=True):
            model, answer = (route.candidate, next(from_c)) if m else (active, next(from_a))
            answered.add(id(message))
            if isinstance(answer, ReadingError):
                self._error(message, answer)
            else:
                self._publish(model, message, reading, answer, now)
        if route.mode == SHADOW:
            mirror = self._shadow_share(theirs, answers_a)
            mirrored = self._mirror(active, route.candidate, self._runner, mirror, backlog)
        else:
            mirror = list(zip(ours, answers_c, strict=True))
            mirrored = self._mirror(active, active, runner, mirror, backlog)
        self._budget.spent(seconds_a + seconds_c, mirrored)

    def _run(
        self,
        model: LoadedModel,
        runner: Runner,
        decoded: list[tuple[Message, Reading]],
        role: str,
    ) -> tuple[list[Answer], float]:
        if not decoded:
            return [], 0.0
        answers, stats = runner.answer(model, [r for _, r in decoded])
        self.route.comparison.ran(role, len(decoded), stats.seconds, stats.failed, stats.non_finite)
        self._observe(model, len(decoded), stats)
        return answers, stats.seconds

    def _shadow_share(
        self, decoded: list[tuple[Message, Reading]], answers: list[Answer]
    ) -> list[tuple[tuple[Message, Reading], Answer]]:
        share = []
        for item, answer in zip(decoded, answers, strict=True):
            self._credit += self.route.percent / 100
            if self._credit >= 1.0:
                self._credit -= 1.0
                share.append((item, answer))
        return share

    def _mirror(
        self,
        active: LoadedModel,
        model: LoadedModel,
        runner: Runner,
        mirror: list[tuple[tuple[Message, Reading], Answer]],
        backlog: bool,
    ) -> float:
        """Run ``model`` on readings the other version answered; seconds spent.

        Shadow: ``model`` is the candidate, and its results go to the shadow
        topic. Canary and A/B: ``model`` is the active model, for comparison only.
        A reading only one version failed on counts as a disagreement.
        """
        shadow = model is not active
        if not mirror:
            return 0.0
        comparison = self.route.comparison
        if comparison.waiting:  # enough to judge: the rollout decides before any more
            return 0.0
        if not self._budget.allows(backlog):
            comparison.skip(len(mirror))
            return 0.0
        # Compare no more than the rollout judges on.
        room = comparison.verdict_at - comparison.compared
        if comparison.verdict_at and not comparison.judged and room < len(mirror):
            mirror = mirror[:room]
        readings = [reading for (_, reading), _ in mirror]
        answers, stats = runner.answer(model, readings)
        role = "candidate" if shadow else "active"
        comparison.ran(role, len(readings), stats.seconds, stats.failed, stats.non_finite, True)
        if shadow:
            self._observe(model, len(readings), stats)
        now = time.perf_counter()
        for ((message, reading), answered), again in zip(mirror, answers, strict=True):
            if shadow and not isinstance(again, ReadingError):
                self._publish_shadow(model, message, reading, again, now)
            candidate, active_answer = (again, answered) if shadow else (answered, again)
            if isinstance(active_answer, ReadingError):
                continue  # nothing to compare with
            a = interpret(active, active_answer).top1()
            c = (
                (FAILED_LABEL, 0.0)
                if isinstance(candidate, ReadingError)
                else interpret(self.route.candidate, candidate).top1() or (FAILED_LABEL, 0.0)
            )
            if a is not None:
                comparison.compare(a, c)
        return stats.seconds

    def _publish_shadow(
        self,
        model: LoadedModel,
        message: Message,
        reading: Reading,
        outputs: dict[str, Value],
        now: float,
    ) -> None:
        seen = interpret(model, outputs, reading.geometry)  # as its answer would read
        payload = encode_result(
            message.topic,
            model.identity,
            seen.shown,
            reading.id,
            reading.ts,
            (now - message.received) * 1000,
            seen.fields,
        )
        self._shadow(message.topic, payload)


def _key(route: Route, message: Message, reading: Reading) -> str:
    """A reading's stream: its topic, or the payload field ``sticky_by`` names.

    Read here, never required: a reading without the field (or not JSON) is
    routed by its topic, and the active model's decoder is not changed.
    """
    if route.sticky_by == "topic" or message.payload.lstrip()[:1] != b"{":
        return message.topic
    try:
        doc = orjson.loads(message.payload)
    except orjson.JSONDecodeError:
        return message.topic
    value = doc.get(route.sticky_by) if isinstance(doc, dict) else None
    return message.topic if value is None else str(value)
