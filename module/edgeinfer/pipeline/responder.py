"""One answer per reading: publish it, and acknowledge the reading once the broker has it.

The engine calls :meth:`Responder.result` or :meth:`Responder.error`
exactly once per message. The publisher reports the broker's verdict on the
transport's thread; only then is ``message.done()`` called (the transport's
acknowledgement), so a crash at any moment loses no reading.

When the broker refuses an answer (MQTT 5 PUBACK >= 0x80, e.g. 0x87 "Not
authorized" from an ACL), the reading is never acknowledged silently:

* a refused result is logged (naming the topic and the reason), counted in
  ``edgeinfer_publish_refused_total``, and the reading is answered on the
  errors topic instead (``publish_refused``); that report's PUBACK
  acknowledges it;
* a refused error report is retried with backoff (1 s doubling to 30 s) and
  the reading stays unacknowledged meanwhile: acknowledgements are in order,
  so the broker holds the readings after it rather than lose any, and
  :attr:`Responder.refusing` says so (``/readyz`` shows it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from edgeinfer.errors import ReadingError
from edgeinfer.observability.metrics import Metrics
from edgeinfer.pipeline.encode import encode_error
from edgeinfer.pipeline.message import Message, Outcome, Publisher

log = logging.getLogger(__name__)

RETRY_MIN_S = 1.0
RETRY_MAX_S = 30.0


@dataclass(frozen=True, slots=True)
class _Pending:
    """What an answer's outcome needs of its reading (never the payload: it may wait long)."""

    topic: str  # the reading's topic
    rid: object
    done: Callable[[], None]
    received: float
    token: object


class Responder:
    """Publishes results and error reports for the engine."""

    def __init__(
        self, publisher: Publisher, metrics: Metrics, errors_topic: str, output_qos: int = 1
    ) -> None:
        self._publisher = publisher
        self._metrics = metrics
        self._errors_topic = errors_topic
        self._output_qos = output_qos
        self._lock = threading.Lock()
        self._retrying: dict[int, str] = {}  # id(pending) -> why, while a report is retried
        self._closed = False

    @property
    def refusing(self) -> str | None:
        """Why readings wait unacknowledged (the broker refuses their answers), or None."""
        with self._lock:
            if not self._retrying:
                return None
            reason = next(iter(self._retrying.values()))
            return f"the broker refuses answers ({len(self._retrying)} readings waiting): {reason}"

    def close(self) -> None:
        """Stop retrying (shutdown): readings still waiting stay unacknowledged at the broker."""
        self._closed = True

    def result(self, message: Message, topic: str, payload: bytes, rid: object = None) -> None:
        """Publish ``payload`` as the result of ``message`` (whose id is ``rid``) on ``topic``.

        A result the transport will not take (a topic or payload MQTT cannot
        carry) becomes this reading's error report, never its batch-mates'.
        """
        if message.reply is not None:
            message.reply(payload, None)
            message.done()
            return
        pending = _pending(message, rid)
        try:
            self._publisher.publish(
                topic,
                payload,
                qos=self._output_qos,
                on_done=self._on_result(pending, topic),
                token=message.token,
            )
        except ValueError as exc:
            reason = f"cannot publish to {topic[:200]!r}: {exc}"
            self.error(message, ReadingError("publish_failed", reason, rid))

    def shadow(self, topic: str, payload: bytes) -> None:
        """Publish a shadow result (QoS 0): no reading waits for it, none is acknowledged by it."""
        try:
            self._publisher.publish(topic, payload, qos=0)
        except ValueError as exc:  # a topic MQTT cannot carry: the shadow copy is skipped
            log.debug("shadow result not published on %r: %s", topic[:200], exc)

    def escalate(self, topic: str, payload: bytes, on_done: Outcome | None = None) -> None:
        """Publish an escalated reading (QoS 1); the reading's own answer does not wait for it.

        Raises ValueError when MQTT cannot carry ``topic`` or ``payload``.
        """
        self._publisher.publish(topic, payload, qos=1, on_done=on_done)

    def error(self, message: Message, error: ReadingError) -> None:
        """Report ``message`` on the errors topic as refused for ``error``."""
        self._metrics.reading_errors.labels(error.code).inc()
        log.warning("rejected reading on %s: %s", message.topic, error)
        if message.reply is not None:
            message.reply(
                encode_error(message.topic, error.code, error.reason, error.rid), error.code
            )
            message.done()
            return
        self._report(_pending(message, error.rid), error.code, error.reason, attempt=0)

    # -- outcomes (the transport's thread) ------------------------------------------

    def _on_result(self, pending: _Pending, topic: str) -> Outcome:
        def outcome(refused: str | None) -> None:
            if refused is None:
                self._metrics.results_published.inc()
                self._finish(pending)
                return
            self._metrics.publish_refused.labels(refused).inc()
            log.warning(
                "the broker refused the result on %r (reading on %s): %s; "
                "reporting it on the errors topic instead",
                topic[:200],
                pending.topic,
                refused,
            )
            reason = f"the broker refused the result on {topic[:200]!r}: {refused}"
            self._report(pending, "publish_refused", reason, attempt=0)

        return outcome

    def _report(self, pending: _Pending, code: str, reason: str, attempt: int) -> None:
        payload = encode_error(pending.topic, code, reason, pending.rid)

        def outcome(refused: str | None) -> None:
            if refused is None:
                with self._lock:
                    self._retrying.pop(id(pending), None)
                self._finish(pending)
                return
            self._metrics.publish_refused.labels(refused).inc()
            delay = min(RETRY_MAX_S, RETRY_MIN_S * 2**attempt)
            why = f"{self._errors_topic!r}: {refused}"
            with self._lock:
                self._retrying[id(pending)] = why
            log.error(
                "the broker refused the error report on %s; the reading on %s stays "
                "unacknowledged, retrying in %.0f s",
                why,
                pending.topic,
                delay,
            )
            retry = threading.Timer(delay, self._retry, (pending, code, reason, attempt + 1))
            retry.daemon = True
            retry.start()

        self._publisher.publish(
            self._errors_topic, payload, qos=1, on_done=outcome, token=pending.token
        )

    def _retry(self, pending: _Pending, code: str, reason: str, attempt: int) -> None:
        if not self._closed:
            self._report(pending, code, reason, attempt)

    def _finish(self, pending: _Pending) -> None:
        self._metrics.end_to_end_seconds.observe(time.perf_counter() - pending.received)
        pending.done()


def _pending(message: Message, rid: object) -> _Pending:
    return _Pending(message.topic, rid, message.done, message.received, message.token)
