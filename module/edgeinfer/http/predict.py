"""``POST /predict``: one reading in over HTTP, its result document out.

The reading goes through the same engine as those from the broker (the same
decoder, batches, rollout routes and error codes); only its answer comes back
to the caller instead of being published. A model that answers windows of a
stream is refused: a window's samples come from many readings of one stream,
which a single request is not.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import orjson

from edgeinfer.model.loaded import LoadedModel
from edgeinfer.pipeline.encode import encode_error
from edgeinfer.pipeline.engine import WINDOWED_POSTED
from edgeinfer.pipeline.message import Message

#: The topic a posted reading has unless the request names one (``?topic=``).
DEFAULT_TOPIC = "predict"
#: The longest a request waits for its answer.
ANSWER_TIMEOUT_S = 30.0
#: HTTP status of each error code (docs/reference.md, "Error reports"); others are 400.
STATUS_OF = {
    "windowed_model": 409,
    "oversize": 413,
    "inference_failed": 422,
    "publish_failed": 500,
    "internal_error": 500,
}

Submit = Callable[[Message], None]


class Predictor:
    """Answers posted readings through the engine; callable from any HTTP thread."""

    def __init__(
        self,
        submit: Submit,
        active: Callable[[], LoadedModel],
        timeout_s: float = ANSWER_TIMEOUT_S,
    ) -> None:
        self._submit = submit
        self._active = active
        self._timeout = timeout_s
        self._closed = False

    def close(self) -> None:
        """Take no more readings (shutdown: what is queued is being drained)."""
        self._closed = True

    def __call__(self, body: bytes, topic: str | None) -> tuple[int, bytes]:
        """Answer one reading: (HTTP status, result or error document)."""
        topic = topic or DEFAULT_TOPIC
        bad = _bad_topic(topic)
        if bad is not None:
            return 400, encode_error(topic[:200], "bad_topic", bad, None)
        if self._active().streams is not None:
            return 409, encode_error(topic, "windowed_model", WINDOWED_POSTED, None)
        if self._closed:
            reason = "the module is shutting down: expected another module, or a retry later"
            return 503, orjson.dumps({"topic": topic, "error": "shutting_down", "reason": reason})
        answered = threading.Event()
        answer: list[tuple[int, bytes]] = []

        def reply(payload: bytes, code: str | None) -> None:
            answer.append((200 if code is None else STATUS_OF.get(code, 400), payload))
            answered.set()

        self._submit(Message(topic, body, time.perf_counter(), _nothing, reply=reply))
        if not answered.wait(self._timeout):
            reason = f"no answer within {self._timeout:g} s (the module is overloaded)"
            return 504, orjson.dumps({"topic": topic, "error": "timeout", "reason": reason})
        return answer[0]


def _bad_topic(topic: str) -> str | None:
    if any(c in topic for c in "+#\0") or not topic or len(topic.encode()) > 1024:
        return f"topic {topic[:200]!r}: expected 1-1024 bytes of an MQTT topic name (no + # or NUL)"
    return None


def _nothing() -> None:
    """A posted reading has no broker to acknowledge it to."""
