"""What a fleet tool sees of its modules: their retained status, reported state and health.

One MQTT connection subscribed to every module's retained ``status``,
``reported`` and ``health`` topics keeps the latest document of each; a waiter
is woken on every change. ``edgeinfer fleet status`` takes one settled look;
``edgeinfer rollout`` keeps watching, and publishes the desired states over the
same connection (retained, QoS 1, waiting for the broker's acknowledgement).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import orjson
import paho.mqtt.client as paho

from edgeinfer.config import BrokerConfig
from edgeinfer.errors import EdgeInferError
from edgeinfer.tools.simulate import connect_client

#: Retained messages arrive right after the subscription: settled once none came for this long.
QUIET_S = 0.5


#: The retained topics a module keeps, by their last level.
PARTS = ("status", "reported", "health")


class FleetWatch:
    """The latest ``status``, ``reported`` and ``health`` of every module on the broker."""

    def __init__(self, broker: BrokerConfig) -> None:
        self._cond = threading.Condition()
        self._parts: dict[str, dict[str, dict[str, Any]]] = {}  # module id -> part -> doc
        self._changed = time.monotonic()
        self._client = connect_client(
            broker,
            on_message=self._on_message,
            subscribe=[f"edgeinfer/+/{part}" for part in PARTS],
        )
        with self._cond:  # the quiet time that settles runs from the subscription, not before
            self._changed = time.monotonic()

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        if len(parts) != 3 or parts[2] not in PARTS or not msg.payload:
            return
        try:
            doc = orjson.loads(msg.payload)
        except orjson.JSONDecodeError:
            return
        if not isinstance(doc, dict):
            return
        with self._cond:
            self._parts.setdefault(parts[1], {})[parts[2]] = doc
            self._changed = time.monotonic()
            self._cond.notify_all()

    def settle(self, timeout: float = 5.0) -> None:
        """Wait until the retained documents have arrived (none new for a moment)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while time.monotonic() < deadline and time.monotonic() - self._changed < QUIET_S:
                self._cond.wait(QUIET_S / 5)

    def reported(self, module_id: str) -> dict[str, Any]:
        with self._cond:
            return dict(self._parts.get(module_id, {}).get("reported") or {})

    def modules(self) -> list[dict[str, Any]]:
        """Every module seen, sorted by id, as ``fleet status --json`` lists it."""
        with self._cond:
            return [_module(mid, dict(parts)) for mid, parts in sorted(self._parts.items())]

    def wait(self, timeout: float) -> None:
        """Return on the next change, or after ``timeout``."""
        with self._cond:
            self._cond.wait(timeout)

    def publish_desired(self, module_id: str, doc: dict[str, Any], timeout: float = 60) -> None:
        """Publish ``doc`` retained on the module's desired topic and wait for the broker.

        A message published while the connection is down stays queued in paho and
        goes out after the reconnect: a short drop waits, it does not end the rollout.
        """
        info = self._client.publish(
            f"edgeinfer/{module_id}/desired", orjson.dumps(doc), qos=1, retain=True
        )
        deadline = time.monotonic() + timeout
        while not info.is_published() and time.monotonic() < deadline:
            try:
                info.wait_for_publish(1)
            except RuntimeError:  # not connected right now: paho resends it on reconnect
                time.sleep(0.2)
            except ValueError as exc:  # a topic or payload MQTT cannot carry
                raise EdgeInferError(f"cannot publish to {module_id}: {exc}") from exc
        if not info.is_published():
            raise EdgeInferError(
                f"the broker did not take the desired state of {module_id} within {timeout:g} s"
            )

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def _module(module_id: str, parts: dict[str, Any]) -> dict[str, Any]:
    reported = parts.get("reported") or {}
    status = parts.get("status") or {}
    return {
        "module_id": module_id,
        "online": status.get("state") == "online",
        "labels": reported.get("labels") or {},
        "model": reported.get("model"),
        "update": reported.get("update"),
        "rollout": reported.get("rollout"),
        "health": parts.get("health"),
        "hardware": reported.get("hardware"),
    }
