"""The outbox: order across reconnects, the broker's Receive Maximum, refusals (no broker)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from paho.mqtt.enums import MQTTErrorCode

from edgeinfer.mqtt.acks import Ticket
from edgeinfer.mqtt.outbox import Outbox, check_publishable


class Info:
    def __init__(self, mid: int, rc: MQTTErrorCode) -> None:
        self.mid = mid
        self.rc = rc


class FakeClient:
    """What the outbox uses of paho: publish, drop_out_messages and the out-message lock."""

    def __init__(self) -> None:
        self._out_message_mutex = threading.RLock()
        self.wire: list[str] = []  # payloads, in the order they were handed to "the socket"
        self.held: dict[int, bytes] = {}
        self.mid = 0

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> Info:
        self.mid += 1
        self.wire.append(payload.decode())
        if qos:
            self.held[self.mid] = payload
        return Info(self.mid, MQTTErrorCode.MQTT_ERR_SUCCESS)

    def drop_out_messages(self) -> list[Any]:
        dropped = list(self.held)
        self.held.clear()
        return dropped

    def max_inflight_messages_set(self, n: int) -> None:
        pass

    def max_queued_messages_set(self, n: int) -> None:
        pass

    def ack(self, mid: int) -> None:
        self.held.pop(mid, None)


def outbox(window: int = 100, stale: Any = lambda token: False) -> tuple[Outbox, FakeClient]:
    client = FakeClient()
    return Outbox(client, window, stale), client  # type: ignore[arg-type]


def test_nothing_is_handed_to_paho_before_the_connack() -> None:
    box, client = outbox()
    box.publish("t", b"1", 1, False, None, None)
    assert client.wire == []
    box.on_connect(None)
    box.publish("t", b"2", 1, False, None, None)
    assert client.wire == ["1", "2"]


def test_after_a_reconnect_unacknowledged_messages_go_again_before_newer_ones() -> None:
    box, client = outbox()
    box.on_connect(None)
    for n in "123":
        box.publish("t", n.encode(), 1, False, None, None)
    box.on_publish(1, None)  # "1" acknowledged
    box.on_disconnect()
    box.publish("t", b"4", 1, False, None, None)  # while disconnected: kept back
    box.reclaim()
    assert client.wire == ["1", "2", "3"]
    box.on_connect(None)
    box.publish("t", b"5", 1, False, None, None)
    assert client.wire[3:] == ["2", "3", "4", "5"]


def test_answers_to_readings_the_broker_will_redeliver_are_dropped_others_are_sent() -> None:
    old, fresh = Ticket(1, 1, epoch=1), Ticket(2, 1, epoch=3)
    qos0 = Ticket(0, 0, epoch=1)
    box, client = outbox(stale=lambda t: t.epoch == 1 and t.qos > 0)
    box.on_disconnect()
    for payload, token in ((b"old", old), (b"status", None), (b"qos0-reading", qos0)):
        box.publish("t", payload, 1, False, None, token)
    box.on_connect(None)
    box.publish("t", b"fresh", 1, False, None, fresh)
    assert client.wire == ["status", "qos0-reading", "fresh"]


def test_no_more_than_the_window_is_unacknowledged_at_once() -> None:
    box, client = outbox(window=100)
    box.on_connect(receive_maximum=3)
    for n in range(10):
        box.publish("t", str(n).encode(), 1, False, None, None)
    assert client.wire == ["0", "1", "2"]
    box.on_publish(2, None)
    assert client.wire == ["0", "1", "2", "3"]
    assert box.pending == 9


def test_the_broker_verdict_reaches_the_callback() -> None:
    box, _ = outbox()
    box.on_connect(None)
    verdicts: list[str | None] = []
    box.publish("a", b"x", 1, False, verdicts.append, None)
    box.publish("b", b"y", 1, False, verdicts.append, None)
    box.on_publish(2, "Not authorized (0x87)")
    box.on_publish(1, None)
    assert verdicts == ["Not authorized (0x87)", None]


@pytest.mark.parametrize(
    ("topic", "error"),
    [("", "an empty topic"), ("a/#", "a wildcard"), ("x" * 65_536, "a topic of 65536 bytes")],
)
def test_what_mqtt_cannot_carry_is_refused_before_it_is_queued(topic: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        check_publishable(topic, b"")


def test_a_refused_subscription_is_logged_and_kept_until_granted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """mosquitto 2.0 grants what its ACL will not deliver, so this is checked in-process."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.reasoncodes import ReasonCode

    from edgeinfer.config import BrokerConfig
    from edgeinfer.mqtt.connection import MqttConnection

    conn = MqttConnection(BrokerConfig(), "c", "edgeinfer/c/status")
    subs = conn._subscriptions
    subs._pending[5] = "site/#"
    conn._client.on_subscribe(
        conn._client, None, 5, [ReasonCode(PacketTypes.SUBACK, identifier=0x87)], None
    )
    assert conn.subscription_errors == {"site/#": "Not authorized (0x87)"}
    assert "the broker refused the subscription to 'site/#': Not authorized (0x87)" in caplog.text
    subs._pending[6] = "site/#"
    conn._client.on_subscribe(
        conn._client, None, 6, [ReasonCode(PacketTypes.SUBACK, identifier=1)], None
    )
    assert conn.subscription_errors == {}


def test_a_link_lost_inside_publish_does_not_hang_the_outbox() -> None:
    """paho's publish() writes at once on the serving thread; when the socket breaks there,
    paho calls on_disconnect from inside it, and the outbox (mid-pump) must not wait on
    itself. It hung the serving loop: the module never reconnected."""
    box, client = outbox()
    publish = client.publish
    broken = threading.Event()

    def breaks(topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> Info:
        info = publish(topic, payload, qos, retain)
        if payload == b"2" and not broken.is_set():
            broken.set()
            box.on_disconnect()  # what paho's _loop_rc_handle does on a write error
            return Info(info.mid, MQTTErrorCode.MQTT_ERR_NO_CONN)
        return info

    client.publish = breaks  # type: ignore[method-assign]
    box.on_connect(None)
    done = threading.Event()

    def send() -> None:
        for n in range(1, 5):
            box.publish("t", str(n).encode(), 1, False, None, None)
        done.set()

    threading.Thread(target=send, daemon=True).start()
    assert done.wait(2), "the outbox waited on itself"
    assert client.wire == ["1", "2"]  # nothing more goes to paho once the link is gone
    box.reclaim()
    box.on_connect(None)
    assert client.wire == ["1", "2", "1", "2", "3", "4"]  # in order after the reconnect
