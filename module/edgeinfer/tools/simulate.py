"""Replay the shipped sensor recordings as MQTT readings at a fixed rate."""

from __future__ import annotations

import itertools
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edgeinfer.config import BrokerConfig
from edgeinfer.mqtt.security import apply_security
from edgeinfer.mqtt.session import connect_properties
from edgeinfer.tools.recordings import load_recordings


def connect_client(
    url: str | BrokerConfig,
    client_id: str = "",
    on_message: Callable[..., None] | None = None,
    subscribe: list[str] | None = None,
    timeout: float = 10.0,
    session_expiry_s: int = 0,
    reconnect_delay_s: float = 0.1,
    protocol: str = "5",
) -> paho.Client:
    """A started paho client (TCP_NODELAY), subscribed before this returns.

    With ``session_expiry_s`` (and a ``client_id``) the session outlives a
    disconnect, so QoS 1 messages sent meanwhile are delivered on reconnect.
    ``protocol`` is ``"5"`` or ``"3.1.1"``.
    """
    broker = url if isinstance(url, BrokerConfig) else BrokerConfig(url=url)
    url = broker.url
    v5 = protocol == "5"
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
        clean_session=None if v5 else not session_expiry_s,
    )
    # paho's stub says int, but the delays are slept as floats.
    client.reconnect_delay_set(reconnect_delay_s, max(1.0, reconnect_delay_s))  # type: ignore[arg-type]
    client.max_inflight_messages_set(1000)
    ready = threading.Event()

    def on_connect(c: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        sock = c.socket()
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for flt in subscribe or []:
            c.subscribe(flt, qos=1)
        if not subscribe:
            ready.set()

    def on_subscribe(c: paho.Client, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        ready.set()

    apply_security(client, broker)
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    if on_message is not None:
        client.on_message = on_message
    if v5:
        props = connect_properties(session_expiry_s) if session_expiry_s else None
        client.connect(
            broker.host, broker.port, 30, clean_start=not session_expiry_s, properties=props
        )
    else:
        client.connect(broker.host, broker.port, 30)
    client.loop_start()
    if not ready.wait(timeout):
        client.loop_stop()
        raise TimeoutError(f"could not connect and subscribe to {url} within {timeout} s")
    return client


def recording_index(reading_id: int, total: int) -> int:
    """Which recording reading ``reading_id`` replays: a stride through all of them.

    The recordings are stored grouped by activity; a stride coprime with
    their count visits every one while mixing activities from the start.
    """
    stride = next(s for s in (7, 11, 13, 17, 1) if total % s)
    return (reading_id * stride) % total


def simulate(
    url: str | BrokerConfig,
    rate: float,
    count: int,
    topic: str = "sensors/{device}/imu",
    devices: int = 1,
    qos: int = 1,
    first_id: int = 0,
    protocol: str = "5",
) -> int:
    """Publish ``count`` readings (0: forever) at ``rate`` per second; returns how many were sent.

    Each reading is one 10-second recording window with ``id`` (``first_id``
    onwards) and ``ts`` (epoch seconds at publish time); ``recording_index(id)``
    names the recording, and so the true activity.
    """
    rec = load_recordings()
    payloads = [w.tolist() for w in rec.windows]
    client = connect_client(url, client_id="", protocol=protocol)
    period = 1.0 / rate if rate > 0 else 0.0
    start = time.perf_counter()
    sent = 0
    last: paho.MQTTMessageInfo | None = None
    try:
        for n in itertools.count() if count == 0 else range(count):
            if period:
                delay = start + n * period - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            i = first_id + n
            idx = recording_index(i, len(payloads))
            body = orjson.dumps({"id": i, "ts": time.time(), "features": payloads[idx]})
            last = client.publish(topic.format(device=f"sim{i % devices + 1}"), body, qos=qos)
            sent += 1
    except KeyboardInterrupt:
        pass
    finally:
        if last is not None and qos > 0:
            last.wait_for_publish(timeout=10)
        client.disconnect()
        client.loop_stop()
    return sent
