"""The answer stage of camera readings: postprocess fields, and escalation of uncertain ones.

The engine hands each result's outputs here before encoding it. A model with
a ``postprocess`` gets its ``label``/``score``/``top`` or ``detections``; a
model with a ``cascade`` has its uncertain readings published to the
escalation topic within the budget (:mod:`edgeinfer.vision.cascade`), and the
result marked ``"escalated": true``. Runs on the serving thread, which owns
the budget.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from edgeinfer.manifest.vision import CascadeSpec
from edgeinfer.model.interpretation import Interpretation, interpret
from edgeinfer.model.loaded import LoadedModel
from edgeinfer.observability.metrics import Metrics
from edgeinfer.pipeline.decode import Reading
from edgeinfer.pipeline.message import Message, Outcome
from edgeinfer.pipeline.responder import Responder
from edgeinfer.runtimes.base import Value
from edgeinfer.topics import TopicTemplate
from edgeinfer.vision.cascade import Budget, escalation_id, escalation_payload
from edgeinfer.vision.images import guard_pillow
from edgeinfer.vision.plan import VisionPlan, uncertain
from edgeinfer.vision.preprocess import Preprocessor

log = logging.getLogger(__name__)


class VisionResults:
    """Postprocess and cascade for the engine's results."""

    def __init__(
        self,
        responder: Responder,
        metrics: Metrics,
        *,
        module_id: str,
        cascade: CascadeSpec | None,
        max_image_pixels: int,
    ) -> None:
        """``cascade``: the configuration's (``[cascade]``), over every manifest's."""
        self._responder = responder
        self._metrics = metrics
        self._module_id = module_id
        self._override = cascade
        self._max_pixels = max_image_pixels
        guard_pillow(max_image_pixels)
        # A plan for a model that declares no vision block, when [cascade] needs its scores.
        self._plain: tuple[LoadedModel, VisionPlan] | None = None
        # A budget per cascade block, kept while the module runs: an update that keeps
        # the block keeps what it spent, and a canary alternating between two versions
        # with two blocks does not start either afresh at each switch.
        self._budgets: dict[CascadeSpec, tuple[TopicTemplate, Budget]] = {}

    def images(self, active: LoadedModel) -> tuple[Preprocessor | None, int]:
        """What the decoder of ``active`` needs for image readings: its preprocessor, the limit."""
        return (active.vision.preprocessor if active.vision else None), self._max_pixels

    def finish(
        self, active: LoadedModel, message: Message, reading: Reading, outputs: dict[str, Value]
    ) -> tuple[Mapping[str, Value], dict[str, Any], Any]:
        """``(outputs shown, result fields, id)`` for one reading's result: its outputs
        interpreted, and escalated when the cascade is unsure of them."""
        spec = self._override or active.manifest.cascade
        plan = active.vision or (self._plan_for(active) if spec is not None else None)
        seen = interpret(active, outputs, reading.geometry, plan)
        fields = dict(seen.fields)
        rid = reading.id
        if reading.escalated:  # answered here for the module that escalated it, not further
            spec = None
        if spec is not None and uncertain(seen, spec.below, spec.margin):
            rid = self._escalate(spec, active, message, reading, seen, fields)
        elif spec is not None:
            self._budget(spec)[1].seen()
        return seen.shown, fields, rid

    def _plan_for(self, active: LoadedModel) -> VisionPlan:
        if self._plain is None or self._plain[0] is not active:
            rule = active.label_rule
            score_output = rule.score_output if rule is not None else None
            self._plain = (active, VisionPlan(active.model, active.manifest, score_output))
        return self._plain[1]

    def _budget(self, spec: CascadeSpec) -> tuple[TopicTemplate, Budget]:
        found = self._budgets.get(spec)
        if found is None:
            template = TopicTemplate.parse(spec.topic)  # validated with the manifest
            found = self._budgets[spec] = (template, Budget(spec.max_fraction, spec.max_per_s))
        return found

    def _escalate(
        self,
        spec: CascadeSpec,
        active: LoadedModel,
        message: Message,
        reading: Reading,
        seen: Interpretation,
        fields: dict[str, Any],
    ) -> Any:
        template, budget = self._budget(spec)
        budget.seen()
        if not budget.take():
            self._metrics.escalations.labels("over_budget").inc()
            return reading.id
        rid = reading.id if reading.id is not None else escalation_id(self._module_id)
        edge = seen.postprocess or {"scores": seen.scores}
        source = {
            "module_id": self._module_id,
            "model": active.identity.name,
            "version": active.identity.version,
            "result": edge,
        }
        try:
            topic = template.render(message.topic, self._module_id)
            payload = escalation_payload(message.payload, rid, reading.ts, message.topic, source)
            self._responder.escalate(topic, payload, self._counted(topic))
        except ValueError as exc:  # a topic or payload MQTT cannot carry
            self._metrics.escalations.labels("failed").inc()
            log.warning("cannot escalate the reading on %s: %s", message.topic, exc)
            return reading.id
        fields["escalated"] = True
        return rid

    def _counted(self, topic: str) -> Outcome:
        """Count an escalation once the broker took it (``sent``) or refused it (``failed``)."""

        def outcome(refused: str | None) -> None:
            if refused is None:
                self._metrics.escalations.labels("sent").inc()
                return
            self._metrics.escalations.labels("failed").inc()
            log.warning("the broker refused the escalation on %r: %s", topic[:200], refused)

        return outcome
