"""One answer per reading: publish it, and acknowledge the reading once the broker has it.

The engine thread calls :meth:`Responder.result` or :meth:`Responder.error`
exactly once per message. The publisher reports the broker's verdict on the
transport's thread; only then is ``message.done()`` called (the transport's
acknowledgement), so a crash at any moment loses no reading.
"""

from __future__ import annotations

import logging
import time

from edgeinfer.errors import ReadingError
from edgeinfer.observability.metrics import Metrics
from edgeinfer.pipeline.encode import encode_error
from edgeinfer.pipeline.message import Message, Outcome, Publisher

log = logging.getLogger(__name__)


class Responder:
    """Publishes results and error reports for the engine."""

    def __init__(
        self, publisher: Publisher, metrics: Metrics, errors_topic: str, output_qos: int = 1
    ) -> None:
        self._publisher = publisher
        self._metrics = metrics
        self._errors_topic = errors_topic
        self._output_qos = output_qos

    def result(self, message: Message, topic: str, payload: bytes, rid: object = None) -> None:
        """Publish ``payload`` as the result of ``message`` (whose id is ``rid``) on ``topic``.

        A result the transport will not take (a topic or payload MQTT cannot
        carry) becomes this reading's error report, never its batch-mates'.
        """
        try:
            self._publisher.publish(
                topic,
                payload,
                qos=self._output_qos,
                on_done=self._outcome(message, answered=True),
                token=message.token,
            )
        except ValueError as exc:
            self.error(
                message,
                ReadingError("publish_failed", f"cannot publish to {topic[:200]!r}: {exc}", rid),
            )

    def error(self, message: Message, error: ReadingError) -> None:
        """Report ``message`` on the errors topic as rejected for ``error``."""
        self._metrics.reading_errors.labels(error.code).inc()
        log.warning("rejected reading on %s: %s", message.topic, error)
        payload = encode_error(message.topic, error.code, error.reason, error.rid)
        self._publisher.publish(
            self._errors_topic,
            payload,
            qos=1,
            on_done=self._outcome(message, answered=False),
            token=message.token,
        )

    def _outcome(self, message: Message, answered: bool) -> Outcome:
        # Capture the ack and the arrival time, not the message: an answer can
        # wait long for its PUBACK (a backlog after a restart), and holding
        # the reading's payload that long multiplies memory by its size.
        done = message.done
        received = message.received
        metrics = self._metrics

        def outcome(refused: str | None) -> None:
            if answered:
                metrics.results_published.inc()
            metrics.end_to_end_seconds.observe(time.perf_counter() - received)
            done()

        return outcome
