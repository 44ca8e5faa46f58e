"""What the module subscribes to, how, and what the broker said about it.

Readings' filters and the control topics (the desired state) are subscribed
again on every CONNACK. With MQTT 5 the broker applies the retained-message
rule (retain handling 2: no stored copies at all, 1: only for a new
subscription); with 3.1.1 the module applies it. A SUBACK that refuses a filter
is logged and kept (``errors``) until a later SUBACK grants it: ``/readyz``
names it, and is not ready until every SUBACK of the connection has come.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.subscribeoptions import SubscribeOptions

log = logging.getLogger(__name__)


class Subscriptions:
    """The filters of one client and the broker's verdicts on them (serving thread)."""

    def __init__(self, v5: bool) -> None:
        self._v5 = v5
        self._filters: list[tuple[str, int]] = []
        self._control: set[str] = set()
        self.retained = "ignore"
        self._pending: dict[int, str] = {}  # mid -> filter, until the SUBACK
        self.errors: dict[str, str] = {}  # filter -> why the broker refused it
        self._leaving: dict[int, threading.Event] = {}  # UNSUBSCRIBE mid -> its UNSUBACK

    def set(self, inputs: list[tuple[str, int]], control: list[str], retained: str) -> None:
        """Readings' filters with their QoS, the control topics (QoS 1), the retained policy."""
        self._filters = list(inputs) + [(topic, 1) for topic in control]
        self._control = set(control)
        self.retained = retained

    def subscribe(self, client: paho.Client) -> None:
        """Subscribe to everything (on each CONNACK)."""
        self._pending = {}  # an earlier connection's SUBACKs will never come
        for flt, qos in self._filters:
            if self._v5:
                _, mid = client.subscribe(flt, options=self._options(flt, qos))
            else:
                _, mid = client.subscribe(flt, qos=qos)
            if mid is not None:
                self._pending[mid] = flt

    def unsubscribe(self, client: paho.Client, filters: list[str], done: threading.Event) -> None:
        """Unsubscribe ``filters`` for good (not again on a reconnect); ``done`` on UNSUBACK."""
        self._filters = [(flt, qos) for flt, qos in self._filters if flt not in filters]
        result, mid = client.unsubscribe(filters)
        if result == paho.MQTT_ERR_SUCCESS and mid is not None:
            self._leaving[mid] = done
        # Not connected: the session keeps the subscription (until it expires), and
        # ``done`` stays unset, so the caller does not end that session.

    def on_unsuback(
        self, client: paho.Client, userdata: Any, mid: int, reasons: Any, props: Any
    ) -> None:
        """paho's on_unsubscribe: ``done`` only when the broker removed every filter."""
        done = self._leaving.pop(mid, None)
        refused = [r for r in reasons or [] if getattr(r, "is_failure", False)]
        if refused:
            log.error("the broker refused to unsubscribe: %s", refused)
        elif done is not None:
            done.set()

    def on_suback(
        self, client: paho.Client, userdata: Any, mid: int, reasons: Any, props: Any
    ) -> None:
        """paho's on_subscribe: a refused filter is logged and kept in ``errors``."""
        flt = self._pending.pop(mid, None)
        if flt is None:
            return
        refused = next((r for r in reasons if getattr(r, "is_failure", False)), None)
        if refused is None:
            self.errors.pop(flt, None)
            return
        why = f"{refused} (0x{int(refused.value):02x})"
        self.errors[flt] = why
        log.error("the broker refused the subscription to %r: %s", flt, why)

    @property
    def awaited(self) -> list[str]:
        """Filters subscribed on this connection whose SUBACK has not come yet: until it
        does, the broker may drop a reading published to them (a new session)."""
        return list(self._pending.values())

    def wants_retained(self, session_present: bool) -> bool:
        """Whether a retained reading (a stored copy, never a live one) is answered."""
        # MQTT 5 lets the broker apply the rule; 3.1.1 resends stored copies on
        # every subscribe, and a resumed session means it was sent before.
        return self.retained == "once" and not (not self._v5 and session_present)

    def _options(self, flt: str, qos: int) -> SubscribeOptions:
        if flt in self._control:
            return SubscribeOptions(qos=qos)
        handling = 2 if self.retained == "ignore" else 1
        return SubscribeOptions(qos=qos, retainHandling=handling)
