"""What the pipeline takes in and hands out, free of any transport.

A :class:`Message` is one reading as the transport received it, with a
``done`` callback that the pipeline calls exactly once, when the reading's
answer (result or error report) is safe at the broker: that is where the
transport acknowledges it. The pipeline never looks at ``token``; the
transport uses it to recognise the answers of a message it handed out. A
message with a ``reply`` (a reading posted over HTTP) is answered through it
instead of being published.

A :class:`Publisher` sends answers. ``on_done`` is called once per message:
with None when the broker accepted it, or with the broker's reason when it
refused it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

#: Called once per published message: None when accepted, else why the broker refused it.
Outcome = Callable[[str | None], None]
#: Takes a reading's answer instead of the broker (``POST /predict``): the result or
#: error document, and the error code (None for a result).
Reply = Callable[[bytes, str | None], None]


@dataclass(eq=False, slots=True)
class Message:
    """One reading from the transport."""

    topic: str
    payload: bytes
    received: float  # time.perf_counter() at arrival
    done: Callable[[], None]
    retain: bool = False
    token: object = None
    reply: Reply | None = None  # set: the answer goes here, not to the broker


class Publisher(Protocol):
    """Where answers go (the MQTT connection, or a fake in unit tests)."""

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        on_done: Outcome | None = None,
        token: object = None,
    ) -> None:
        """Send one message; ``token`` is the ``Message.token`` of the reading it answers."""
        ...
