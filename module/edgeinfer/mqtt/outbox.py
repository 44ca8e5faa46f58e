"""Everything the module publishes, in one ordered queue that outlives connections.

paho keeps its own queue, but after a reconnect it sends new messages as soon
as the socket is up and resends the old ones only after the CONNACK: on a slow
link newer results overtook older ones. So the module never hands paho a
message while disconnected, and on disconnect takes back what paho still holds:

* a message goes to paho only while the connection is open (after CONNACK),
  and at most ``window`` QoS 1 messages are unacknowledged at once (the
  broker's Receive Maximum from CONNACK, or our own limit if lower);
* after a disconnect (before reconnecting), the unacknowledged ones go back to
  the front of the queue, in the order they were first published;
* on the next CONNACK, an answer to a QoS 1 reading of an earlier connection is
  dropped when the session survived (the broker redelivers that reading, and it
  is answered afresh, in order); everything else is sent again, in order.

Threads: paho is only called on the serving thread (``pump``, ``on_connect``,
``on_publish``, ``reclaim``). A message published there is handed to paho at
once; one published by another thread is queued and the serving loop woken to
send it. A lock guards the queue; outcome callbacks run on the serving thread,
outside it.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode

from edgeinfer.pipeline.message import Outcome
from edgeinfer.topics import MAX_TOPIC_BYTES

log = logging.getLogger(__name__)

MAX_PAYLOAD_BYTES = 268_435_455  # MQTT's limit


@dataclass(eq=False, slots=True)
class Outgoing:
    """One message on its way to the broker."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    on_done: Outcome | None
    token: object  # the transport's handle of the reading it answers, or None
    seq: int  # publish order


def check_publishable(topic: str, payload: bytes) -> None:
    """Raise ValueError for what MQTT cannot carry (before it is queued, not at send time)."""
    if not topic:
        raise ValueError("an empty topic")
    if "+" in topic or "#" in topic:
        raise ValueError(f"a wildcard in the topic {topic[:200]!r}")
    size = len(topic.encode())
    if size > MAX_TOPIC_BYTES:
        raise ValueError(f"a topic of {size} bytes: expected at most {MAX_TOPIC_BYTES}")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ValueError(f"a payload of {len(payload)} bytes: expected at most {MAX_PAYLOAD_BYTES}")


class Outbox:
    """The ordered queue of one client's outgoing messages."""

    def __init__(
        self, client: paho.Client, own_window: int, stale: Callable[[object], bool]
    ) -> None:
        self._client = client
        # Re-entrant: paho's publish() writes at once on the serving thread, and on a broken
        # socket calls on_disconnect from inside it, while pump() holds the lock.
        self._lock = threading.RLock()
        self._own_window = own_window
        self._window = own_window
        self._stale = stale
        self._queue: deque[Outgoing] = deque()
        self._inflight: dict[int, Outgoing] = {}
        self._open = False
        self._seq = 0
        self._qos0_queued = 0
        self._pumping = False  # inside paho's publish, called from pump()
        # Without a serving loop (unit tests), every caller counts as its thread.
        self._on_serving_thread: Callable[[], bool] = lambda: True
        self._wake: Callable[[], None] = lambda: None
        client.max_inflight_messages_set(0)  # no limit in paho: the window is kept here
        client.max_queued_messages_set(0)

    def attach(self, on_serving_thread: Callable[[], bool], wake: Callable[[], None]) -> None:
        """Hand messages to paho only on the serving thread; wake it for the others'."""
        self._on_serving_thread = on_serving_thread
        self._wake = wake

    @property
    def pending(self) -> int:
        """Messages queued or unacknowledged."""
        with self._lock:
            return len(self._queue) + len(self._inflight)

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        on_done: Outcome | None,
        token: object,
    ) -> None:
        """Queue a message; ``on_done`` gets the broker's verdict (any thread)."""
        check_publishable(topic, payload)
        with self._lock:
            self._seq += 1
            self._queue.append(Outgoing(topic, payload, qos, retain, on_done, token, self._seq))
            self._qos0_queued += qos == 0
        if self._on_serving_thread():
            self.pump()
        else:
            self._wake()

    def on_connect(self, receive_maximum: int | None) -> None:
        """A CONNACK: open, drop what the broker will redeliver, send in order."""
        with self._lock:
            self._window = min(self._own_window, receive_maximum or self._own_window)
            self._queue = deque(item for item in self._queue if not self._dropped(item))
            self._qos0_queued = sum(item.qos == 0 for item in self._queue)
            self._open = True
        self.pump()

    def on_disconnect(self) -> None:
        """The connection is gone: nothing more goes to paho."""
        with self._lock:
            self._open = False

    def reclaim(self) -> None:
        """Take back what paho was still sending (after the socket closed).

        Not in ``on_disconnect``: paho may be iterating its own queue when the
        socket breaks, and emptying it under that loop breaks paho.
        """
        with self._lock:
            self._client.drop_out_messages()
            taken = sorted(self._inflight.values(), key=lambda item: item.seq)
            self._inflight.clear()
            self._queue.extendleft(reversed(taken))
            self._qos0_queued = sum(item.qos == 0 for item in self._queue)

    def on_publish(self, mid: int, refused: str | None) -> None:
        """A PUBACK (or a QoS 0 message written): report it, send what fits now."""
        if self._pumping:
            # paho writes a QoS 0 message inside publish() and says so at once: pump()
            # reports those itself (and holds the lock). No PUBACK is read meanwhile.
            return
        with self._lock:
            item = self._inflight.pop(mid, None)
        if item is not None:
            _report(item, refused)
        self.pump()

    def pump(self) -> None:
        """Hand queued messages to paho while open and within the window (serving thread)."""
        finished: list[Outgoing] = []
        with self._lock:
            self._pumping = True
            try:
                self._pump(finished)
            finally:
                self._pumping = False
        for item in finished:
            _report(item, None)

    def _pump(self, finished: list[Outgoing]) -> None:
        """Under the lock, on the serving thread: QoS 0 messages sent go into ``finished``."""
        if not self._open and self._qos0_queued:
            # QoS 0 is not kept while disconnected: it counts as sent.
            finished.extend(item for item in self._queue if item.qos == 0)
            self._queue = deque(item for item in self._queue if item.qos > 0)
            self._qos0_queued = 0
        while self._open and self._queue:
            item = self._queue[0]
            if item.qos > 0 and len(self._inflight) >= self._window:
                break
            self._queue.popleft()
            if item.qos == 0:
                self._qos0_queued -= 1
            if self._dropped(item):
                continue
            info = self._client.publish(item.topic, item.payload, qos=item.qos, retain=item.retain)
            if item.qos == 0:
                finished.append(item)
            elif info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
                # The socket closed under us; reclaim() takes it back from paho.
                self._inflight[info.mid] = item
                break
            else:
                self._inflight[info.mid] = item

    def _dropped(self, item: Outgoing) -> bool:
        if item.token is not None and self._stale(item.token):
            log.debug("dropped an answer on %s: its reading will be redelivered", item.topic)
            return True
        return False


def _report(item: Outgoing, refused: str | None) -> None:
    if item.on_done is None:
        return
    try:
        item.on_done(refused)
    except Exception:  # a callback's bug must not stop the serving loop
        log.exception("the outcome callback of a message to %s failed", item.topic)


def refusal(reason: Any) -> str | None:
    """A PUBACK's reason as text when it is a refusal (MQTT 5, >= 0x80), else None."""
    if reason is None or not getattr(reason, "is_failure", False):
        return None
    return f"{reason} (0x{int(reason.value):02x})"


def log_refusal(topic: str) -> Outcome:
    """An outcome for the module's own messages (status, reported): a refusal is logged."""

    def outcome(refused: str | None) -> None:
        if refused is not None:
            log.error("the broker refused the message on %r: %s", topic, refused)

    return outcome
