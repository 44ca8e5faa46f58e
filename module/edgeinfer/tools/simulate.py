"""Replay the shipped sensor recordings as MQTT readings at a fixed rate.

Whole 10-second windows a reading (:func:`simulate`), or one sample a message
at the recordings' own rate, interleaved across devices, as real sensors
publish (:func:`simulate_samples`, ``edgeinfer simulate --per-sample``).
"""

from __future__ import annotations

import itertools
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
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
    payloads = [w.tolist() for w in load_recordings().windows]

    def readings(n: int) -> Iterator[tuple[str, bytes]]:
        i = first_id + n
        body = {"id": i, "ts": time.time(), "features": payloads[recording_index(i, len(payloads))]}
        yield topic.format(device=f"sim{i % devices + 1}"), orjson.dumps(body)

    ticks = itertools.count() if count == 0 else range(count)
    return _paced(url, protocol, qos, rate, ticks, readings, flush_s=10)


def device_samples(device: int, devices: int, count: int) -> np.ndarray:
    """The first ``count`` samples device ``device`` (0-based) replays in per-sample mode.

    Device ``d`` replays recordings ``recording_index(d)``, ``recording_index(d +
    devices)``, ... back to back, so every recording is played and devices differ.
    """
    windows = load_recordings().windows
    per = windows.shape[1]
    needed = -(-count // per)
    order = [recording_index(device + k * devices, len(windows)) for k in range(needed)]
    return np.concatenate([windows[i] for i in order])[:count]


def simulate_samples(
    url: str | BrokerConfig,
    rate: float,
    count: int,
    topic: str = "sensors/{device}/imu",
    devices: int = 1,
    qos: int = 1,
    protocol: str = "5",
    first: int = 0,
) -> int:
    """Replay the recordings one sample (6 values) per message, ``rate`` samples/s per device.

    At each tick every device publishes its next sample, so the streams are
    interleaved as real sensors' would be. Sample ``n`` of a device has ``id``
    ``n`` and ``ts`` the publish time. ``count``: samples per device (0: forever,
    cycling through the recordings); ``first``: the sample to start from (a replay
    that goes on where another stopped). Returns how many messages were sent.
    """
    windows = load_recordings().windows
    per = windows.shape[1]
    topics = [topic.format(device=f"sim{d + 1}") for d in range(devices)]

    def samples(n: int) -> Iterator[tuple[str, bytes]]:
        k, i = divmod(n, per)
        for d, name in enumerate(topics):  # the same recordings as device_samples(d)
            row = windows[recording_index(d + k * devices, len(windows))][i]
            yield name, orjson.dumps({"id": n, "ts": time.time(), "features": row.tolist()})

    ticks = itertools.count(first) if count == 0 else range(first, first + count)
    return _paced(url, protocol, qos, rate, ticks, samples, flush_s=30)


def _paced(
    url: str | BrokerConfig,
    protocol: str,
    qos: int,
    rate: float,
    ticks: Iterable[int],
    messages: Callable[[int], Iterable[tuple[str, bytes]]],
    flush_s: float,
) -> int:
    """Publish ``messages(n)`` for each tick ``n``, ``rate`` ticks a second (0: unpaced),
    until the ticks end or Ctrl-C; then wait up to ``flush_s`` for the last QoS 1
    message to be acknowledged. Returns how many messages were sent."""
    client = connect_client(url, client_id="", protocol=protocol)
    period = 1.0 / rate if rate > 0 else 0.0
    start = time.perf_counter()
    sent = 0
    last: paho.MQTTMessageInfo | None = None
    try:
        for tick, n in enumerate(ticks):
            if period:
                delay = start + tick * period - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            for name, body in messages(n):
                last = client.publish(name, body, qos=qos)
                sent += 1
    except KeyboardInterrupt:
        pass
    finally:
        if last is not None and qos > 0:
            last.wait_for_publish(timeout=flush_s)
        client.disconnect()
        client.loop_stop()
    return sent


#: The pacing loop, for the camera simulator (:mod:`edgeinfer.tools.camera`).
paced = _paced
