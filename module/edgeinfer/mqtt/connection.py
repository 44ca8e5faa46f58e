"""The paho-mqtt connection, owned and supervised.

Threads, and what each one owns:

[1] paho's network thread (``loop_start``) reads and writes the socket and runs
    every callback: ``on_message`` registers a reading with the ack tracker and
    hands it to the sink as a paho-free :class:`~edgeinfer.pipeline.message.Message`
    whose ``done`` acknowledges it; ``on_publish`` reports the broker's verdict
    on an answer.
[2] the supervisor thread makes each connection attempt and waits between them
    with jittered exponential backoff; paho's own reconnect is off because its
    backoff has no jitter, and a fleet reconnecting in lockstep after a broker
    restart is what jitter is for.
[3] any other thread may call ``publish``; paho queues the packet and [1]
    writes it.

The session is persistent (MQTT 5 ``clean_start=False`` with a session expiry,
or 3.1.1 ``clean_session=False``), so readings sent while the module is away
are delivered when it returns.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import random
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from edgeinfer.config import BrokerConfig
from edgeinfer.mqtt.acks import AckTracker, Ticket
from edgeinfer.mqtt.outbox import Outbox, refusal
from edgeinfer.mqtt.security import apply_security
from edgeinfer.pipeline.message import Message, Outcome

log = logging.getLogger(__name__)


def connect_properties(session_expiry_s: int, receive_maximum: int | None = None) -> Properties:
    """MQTT 5 CONNECT properties: how long the broker keeps our session, how many in flight."""
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = session_expiry_s
    if receive_maximum is not None:
        props.ReceiveMaximum = receive_maximum
    return props


class Backoff:
    """Exponential backoff with "equal jitter": half the step fixed, half random."""

    def __init__(self, minimum: float, maximum: float) -> None:
        self._min = minimum
        self._max = maximum

    def delay(self, attempt: int) -> float:
        step = min(self._max, self._min * (1 << min(attempt, 30)))
        return step / 2 + random.uniform(0, step / 2)


class MqttConnection:
    """A supervised, persistent-session MQTT client with manual, ordered acks."""

    def __init__(
        self,
        config: BrokerConfig,
        client_id: str,
        status_topic: str,
    ) -> None:
        self._config = config
        self._control: dict[str, Callable[[bytes], None]] = {}
        self._subscriptions: list[tuple[str, int]] = []
        self._sink: Callable[[Message], None] = _refuse
        self._status_topic = status_topic
        self._on_state: Callable[[bool], None] | None = None
        self._v5 = config.protocol == "5"
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5 if self._v5 else paho.MQTTv311,
            clean_session=None if self._v5 else False,
            reconnect_on_failure=False,
            manual_ack=True,
        )
        paho_log = logging.getLogger("edgeinfer.paho")
        paho_log.addFilter(self._watch_paho_log)
        self._client.enable_logger(paho_log)
        self._client.will_set(status_topic, orjson.dumps({"state": "offline"}), qos=1, retain=True)
        apply_security(self._client, config)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_publish = self._on_publish
        self._client.on_subscribe = self._on_subscribe
        self._client.on_socket_open = self._on_socket_open
        self._tracker = AckTracker(self._client.ack)
        # Many answers in flight at once (at most the broker's Receive Maximum).
        self._outbox = Outbox(self._client, max(20, config.receive_maximum), self._is_stale)
        # epoch -> True when that connection's unacked readings come again (the
        # session survived), decided at the next CONNACK; see Outbox.
        self._redelivered: dict[int, bool] = {}
        self._decided_below = 0
        self._session_present = False
        self._retained = "ignore"
        self._accepting = True
        self._connected = threading.Event()
        self._lost = threading.Event()
        self._answered = threading.Event()  # a CONNACK came, or the attempt ended
        self._stopping = threading.Event()
        self._backoff = Backoff(config.reconnect_min_s, config.reconnect_max_s)
        self._supervisor: threading.Thread | None = None
        self._connected_once_this_attempt = False
        self._paho_problem = ""  # paho's last ERROR log line on this attempt
        self.last_error = "not connected yet"
        self._pending_subscriptions: dict[int, str] = {}  # mid -> filter, until the SUBACK
        self.subscription_errors: dict[str, str] = {}  # filter -> why the broker refused it

    def _watch_paho_log(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        # After our own DISCONNECT, paho's thread loops once more on the closed
        # socket and logs "Client is not connected" at ERROR: noise, not news.
        if self._stopping.is_set() and "Client is not connected" in message:
            return False
        # A TLS 1.3 broker refuses a client certificate after the handshake, so
        # the only account of why is paho's "failed to receive on socket: ...".
        if record.levelno >= logging.ERROR:
            self._paho_problem = message
        return True

    # -- lifecycle -------------------------------------------------------------

    def start(
        self,
        inputs: list[tuple[str, int]],
        on_reading: Callable[[Message], None],
        control: dict[str, Callable[[bytes], None]] | None = None,
        on_state: Callable[[bool], None] | None = None,
        retained: str = "ignore",
    ) -> None:
        """Start connecting in the background; returns at once.

        Args:
            inputs: topic filters of readings and their QoS; each reading goes to
                ``on_reading`` (on the network thread: it must only enqueue).
            control: retained QoS 1 topics (the desired state) and their
                handlers; a handler only queues the payload, so the message is
                acknowledged at once.
            on_state: called with True on each connection, False when it is lost.
            retained: ``ignore``: retained readings (the copies a broker keeps) are
                never answered; ``once``: answered when the subscription is new,
                not again after each reconnect.
        """
        self._retained = retained
        self._control = dict(control or {})
        self._subscriptions = list(inputs) + [(t, 1) for t in self._control]
        self._sink = on_reading
        self._on_state = on_state
        self._supervisor = threading.Thread(
            target=self._supervise, name="mqtt-supervisor", daemon=True
        )
        self._supervisor.start()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def unacked(self) -> int:
        """Readings received on this connection and not yet acknowledged."""
        return self._tracker.unacked

    def wait_acked(self, timeout: float) -> bool:
        """Wait until every reading received is acknowledged; False at the timeout."""
        deadline = time.monotonic() + timeout
        while self._tracker.unacked and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._tracker.unacked

    def stop_intake(self) -> None:
        """Stop taking readings; those that arrive stay unacknowledged at the broker."""
        self._accepting = False

    def stop(self, timeout: float) -> None:
        """Publish ``offline``, disconnect cleanly and stop the threads."""
        self._stopping.set()
        if self.connected:
            delivered = threading.Event()
            self.publish(
                self._status_topic,
                orjson.dumps({"state": "offline"}),
                qos=1,
                retain=True,
                on_done=lambda refused: delivered.set(),
            )
            if not delivered.wait(min(timeout, 2.0)):
                log.warning("could not publish offline status before disconnecting")
            self._client.disconnect()
        self._lost.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout)
        logging.getLogger("edgeinfer.paho").removeFilter(self._watch_paho_log)

    def _supervise(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            self._lost.clear()
            try:
                self._connect()
            except (OSError, ValueError) as exc:
                self.last_error = f"cannot connect to {self._config.url}: {exc}"
                delay = self._backoff.delay(attempt)
                attempt += 1
                log.warning("%s; retrying in %.1f s", self.last_error, delay)
                self._stopping.wait(delay)
                continue
            self._client.loop_start()
            if not self._answered.wait(self._config.keepalive_s) and not self._lost.is_set():
                # Some brokers (amqtt, old mosquitto) neither answer nor close
                # on a CONNECT of a protocol version they do not speak.
                self.last_error = (
                    f"no CONNACK from {self._config.url} within {self._config.keepalive_s} s"
                    + (' (a broker that only speaks MQTT 3.1.1 ignores an MQTT 5 CONNECT: '
                       'try broker.protocol = "3.1.1")' if self._v5 else "")
                )  # fmt: skip
                log.error("%s", self.last_error)
                self._answered.set()  # so on_disconnect keeps this reason
                self._client.disconnect()
                self._lost.set()
            self._lost.wait()
            self._client.loop_stop()
            self._outbox.reclaim()
            if self._stopping.is_set():
                break
            attempt = 0 if self._connected_once_this_attempt else attempt + 1
            delay = self._backoff.delay(attempt)
            log.warning("connection lost (%s); reconnecting in %.1f s", self.last_error, delay)
            self._stopping.wait(delay)

    def _connect(self) -> None:
        self._connected_once_this_attempt = False
        self._answered.clear()
        self._paho_problem = ""
        kwargs: dict[str, Any] = {}
        if self._v5:
            props = connect_properties(self._config.session_expiry_s, self._config.receive_maximum)
            kwargs = {"clean_start": False, "properties": props}
        self._client.connect(
            self._config.host, self._config.port, self._config.keepalive_s, **kwargs
        )

    # -- paho callbacks (thread [1]) --------------------------------------------

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        # paho leaves Nagle on: a small answer would wait ~40 ms for the
        # previous packet's ack before leaving.
        with contextlib.suppress(OSError, AttributeError):  # not a TCP socket
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        self._answered.set()
        if reason.is_failure:
            self.last_error = f"broker {self._config.url} refused the connection: {reason}"
            log.error("%s", self.last_error)
            return
        self._connected_once_this_attempt = True
        self._session_present = bool(getattr(flags, "session_present", False))
        epoch = self._tracker.new_epoch()
        for old in range(self._decided_below, epoch):
            self._redelivered[old] = self._session_present
        self._decided_below = epoch
        for old in [e for e in self._redelivered if e < epoch - 1000]:
            del self._redelivered[old]
        self._outbox.on_connect(getattr(properties, "ReceiveMaximum", None))
        for flt, qos in self._subscriptions:
            if self._v5:
                _, mid = client.subscribe(flt, options=self._subscribe_options(flt, qos))
            else:
                _, mid = client.subscribe(flt, qos=qos)
            if mid is not None:
                self._pending_subscriptions[mid] = flt
        self.publish(
            self._status_topic,
            orjson.dumps({"state": "online"}),
            qos=1,
            retain=True,
            on_done=log_refusal(self._status_topic),
        )
        self._connected.set()
        log.info("connected to %s (session present: %s)", self._config.url, self._session_present)
        if self._on_state:
            self._on_state(True)

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        # End the epoch now, not at the next CONNACK: reconnect() clears paho's
        # packet queue, and an ack queued after that clear but before the new
        # epoch would carry an old packet id onto the new connection, where it
        # would acknowledge some other reading.
        self._tracker.new_epoch()
        self._outbox.on_disconnect()
        if not self._stopping.is_set() and was_connected:
            self.last_error = f"disconnected: {reason}"
        elif not self._stopping.is_set() and not self._answered.is_set():
            problem = f": {self._paho_problem}" if self._paho_problem else f" ({reason})"
            self.last_error = (
                f"the connection to {self._config.url} closed before the "
                f"broker accepted it{problem}"
            )
        self._answered.set()  # the attempt is over: the supervisor need not wait for a CONNACK
        self._lost.set()
        if was_connected and self._on_state:
            self._on_state(False)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        if not self._accepting:
            return  # left unacknowledged: the broker redelivers it next session
        ticket = self._tracker.register(msg.mid, msg.qos)
        handler = self._control.get(msg.topic)
        if handler is not None:
            handler(bytes(msg.payload))
            self._tracker.complete(ticket)
            return
        if msg.retain and not self._wants_retained():
            # A stored copy sent because we (re)subscribed, answered before.
            self._tracker.complete(ticket)
            return
        payload = msg.payload if isinstance(msg.payload, bytes) else bytes(msg.payload)
        self._sink(
            Message(
                msg.topic,
                payload,
                time.perf_counter(),
                functools.partial(self._tracker.complete, ticket),
                bool(msg.retain),
                ticket,
            )
        )

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason: Any, properties: Any
    ) -> None:
        self._outbox.on_publish(mid, refusal(reason))

    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, reasons: Any, properties: Any
    ) -> None:
        flt = self._pending_subscriptions.pop(mid, None)
        if flt is None:
            return
        refused = next((r for r in reasons if getattr(r, "is_failure", False)), None)
        if refused is None:
            self.subscription_errors.pop(flt, None)
            return
        why = f"{refused} (0x{int(refused.value):02x})"
        self.subscription_errors[flt] = why
        log.error("the broker refused the subscription to %r: %s", flt, why)

    # -- helpers -------------------------------------------------------------------

    def _subscribe_options(self, flt: str, qos: int) -> SubscribeOptions:
        if flt in self._control:
            return SubscribeOptions(qos=qos)
        # MQTT 5 retain handling: 2 sends no stored copies at all, 1 only when
        # the subscription is new (not when a persistent session resumes).
        handling = 2 if self._retained == "ignore" else 1
        return SubscribeOptions(qos=qos, retainHandling=handling)

    def _wants_retained(self) -> bool:
        """Whether a retained reading (a stored copy, never a live one) is answered."""
        # MQTT 5 lets the broker apply the rule; 3.1.1 resends stored copies on
        # every subscribe, and a resumed session means it was sent before.
        return self._retained == "once" and not (not self._v5 and self._session_present)

    def _is_stale(self, token: object) -> bool:
        """True for an answer to a QoS 1 reading the broker will redeliver (see Outbox)."""
        return (
            isinstance(token, Ticket)
            and token.qos > 0
            and self._redelivered.get(token.epoch, False)
        )

    # -- publishing (any thread) ------------------------------------------------

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        on_done: Outcome | None = None,
        token: object = None,
    ) -> None:
        """Queue a message; ``on_done`` gets None once the broker has it (PUBACK, or sent for
        QoS 0), or the broker's reason when it refuses it (MQTT 5 PUBACK >= 0x80).

        Messages published while disconnected are kept, in order, and sent after
        the reconnect (QoS 0 ones are dropped). Raises ValueError for a topic or
        payload MQTT cannot carry.
        """
        self._outbox.publish(topic, payload, qos, retain, on_done, token)


def log_refusal(topic: str) -> Outcome:
    """An outcome for the module's own messages (status, reported): a refusal is logged."""

    def outcome(refused: str | None) -> None:
        if refused is not None:
            log.error("the broker refused the message on %r: %s", topic, refused)

    return outcome


def _refuse(message: Message) -> None:
    raise RuntimeError("MqttConnection.start() was not called")
