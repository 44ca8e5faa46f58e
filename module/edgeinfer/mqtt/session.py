"""How the module starts an MQTT session, and how long it waits before trying again."""

from __future__ import annotations

import random

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


def connect_properties(session_expiry_s: int, receive_maximum: int | None = None) -> Properties:
    """MQTT 5 CONNECT properties: how long the broker keeps our session, how many in flight."""
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = session_expiry_s
    if receive_maximum is not None:
        props.ReceiveMaximum = receive_maximum
    return props


def end_session_properties() -> Properties:
    """MQTT 5 DISCONNECT properties that end the session now (session expiry 0)."""
    props = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 0
    return props


class Backoff:
    """Exponential backoff with "equal jitter": half the step fixed, half random."""

    def __init__(self, minimum: float, maximum: float) -> None:
        self._min = minimum
        self._max = maximum

    def delay(self, attempt: int) -> float:
        step = min(self._max, self._min * (1 << min(attempt, 30)))
        return step / 2 + random.uniform(0, step / 2)
