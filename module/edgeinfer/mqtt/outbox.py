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

Thread-safety: the state is guarded by paho's own out-message lock (an RLock).
paho calls ``on_publish`` holding it, so using one lock for both keeps a
single lock order and no thread can deadlock the network thread.
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
        # paho calls on_publish under this lock; everything here runs under it too.
        self._lock: threading.RLock = client._out_message_mutex
        self._own_window = own_window
        self._window = own_window
        self._stale = stale
        self._queue: deque[Outgoing] = deque()
        self._inflight: dict[int, Outgoing] = {}
        self._open = False
        self._seq = 0
        client.max_inflight_messages_set(0)  # no limit in paho: the window is kept here
        client.max_queued_messages_set(0)

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
        done_now = False
        with self._lock:
            if qos == 0 and not self._open:
                done_now = True  # QoS 0 is not kept while disconnected
            else:
                self._seq += 1
                self._queue.append(Outgoing(topic, payload, qos, retain, on_done, token, self._seq))
                self._pump()
        if done_now and on_done is not None:
            on_done(None)

    def on_connect(self, receive_maximum: int | None) -> None:
        """A CONNACK (network thread): open, drop what the broker will redeliver, send in order."""
        with self._lock:
            self._window = min(self._own_window, receive_maximum or self._own_window)
            kept = deque(item for item in self._queue if not self._dropped(item))
            self._queue = kept
            self._open = True
            self._pump()

    def on_disconnect(self) -> None:
        """The connection is gone (network thread): nothing more goes to paho."""
        with self._lock:
            self._open = False

    def reclaim(self) -> None:
        """Take back what paho was still sending (before reconnecting, paho's thread stopped).

        Not in ``on_disconnect``: paho may be iterating its own queue when the
        socket breaks, and emptying it under that loop crashes paho's thread.
        """
        with self._lock:
            self._client.drop_out_messages()
            taken = sorted(self._inflight.values(), key=lambda item: item.seq)
            self._inflight.clear()
            self._queue.extendleft(reversed(taken))

    def on_publish(self, mid: int, refused: str | None) -> None:
        """A PUBACK (network thread, paho's lock held): report it, send what fits now."""
        with self._lock:
            item = self._inflight.pop(mid, None)
            if item is not None and item.on_done is not None:
                try:
                    item.on_done(refused)
                except Exception:  # a callback's bug must not kill paho's thread
                    log.exception("the outcome callback of a message to %s failed", item.topic)
            self._pump()

    def _dropped(self, item: Outgoing) -> bool:
        if item.token is not None and self._stale(item.token):
            log.debug("dropped an answer on %s: its reading will be redelivered", item.topic)
            return True
        return False

    def _pump(self) -> None:
        """Hand queued messages to paho while open and within the window (lock held)."""
        sent_qos0: list[Outgoing] = []
        while self._open and self._queue:
            item = self._queue[0]
            if item.qos > 0 and len(self._inflight) >= self._window:
                break
            self._queue.popleft()
            if self._dropped(item):
                continue
            info = self._client.publish(item.topic, item.payload, qos=item.qos, retain=item.retain)
            if item.qos == 0:
                sent_qos0.append(item)
            elif info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
                # The socket closed under us; on_disconnect takes it back from paho.
                self._inflight[info.mid] = item
                break
            else:
                self._inflight[info.mid] = item
        for item in sent_qos0:
            if item.on_done is not None:
                item.on_done(None)


def refusal(reason: Any) -> str | None:
    """A PUBACK's reason as text when it is a refusal (MQTT 5, >= 0x80), else None."""
    if reason is None or not getattr(reason, "is_failure", False):
        return None
    return f"{reason} (0x{int(reason.value):02x})"
