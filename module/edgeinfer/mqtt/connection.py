"""The paho-mqtt connection, owned and supervised, on the serving loop's thread.

paho runs without a thread of its own: the connection is the transport of a
:class:`~edgeinfer.pipeline.loop.ServingLoop`, whose one thread reads and
writes the socket through paho's external-loop calls (``loop_read``,
``loop_write``, ``loop_misc``), runs every paho callback and the engine's
batches. ``on_message`` registers a reading with the ack tracker and hands it
to the engine as a paho-free :class:`~edgeinfer.pipeline.message.Message`
whose ``done`` acknowledges it; ``on_publish`` reports the broker's verdict on
an answer. Other threads only queue messages (:meth:`MqttConnection.publish`)
and wake the loop: paho is never called from two threads.

Connecting is supervised on the same thread: each attempt after a failure or a
lost connection waits with jittered exponential backoff (paho's own reconnect
is off because its backoff has no jitter, and a fleet reconnecting in lockstep
after a broker restart is what jitter is for), and an attempt the broker never
answers is given up after the keepalive. Opening the socket blocks the loop for
at most paho's connect timeout (5 s); readings queued meanwhile wait, and their
answers could not leave before the connection anyway.

The session is persistent (MQTT 5 ``clean_start=False`` with a session expiry,
or 3.1.1 ``clean_session=False``), so readings sent while the module is away
are delivered when it returns.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edgeinfer.config import BrokerConfig
from edgeinfer.mqtt.acks import AckTracker, Redeliveries, Ticket
from edgeinfer.mqtt.outbox import Outbox, log_refusal, refusal
from edgeinfer.mqtt.security import apply_security
from edgeinfer.mqtt.session import Backoff, connect_properties, end_session_properties
from edgeinfer.mqtt.subscriptions import Subscriptions
from edgeinfer.pipeline.loop import ServingLoop, Worker
from edgeinfer.pipeline.message import Message, Outcome

log = logging.getLogger(__name__)

#: At most this many reads of the socket in one turn of the serving loop.
READS_PER_TURN = 256


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
        self._sink: Callable[[Message], None] = _refuse
        self._status_topic = status_topic
        self._on_state: Callable[[bool], None] | None = None
        self._v5 = config.protocol == "5"
        self._subscriptions = Subscriptions(self._v5)
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
        self._client.on_subscribe = self._subscriptions.on_suback
        self._client.on_unsubscribe = self._subscriptions.on_unsuback
        self._client.on_socket_open = self._on_socket_open
        self._tracker = AckTracker(self._client.ack)
        # Many answers in flight at once (at most the broker's Receive Maximum).
        self._outbox = Outbox(self._client, max(20, config.receive_maximum), self._is_stale)
        # Which connections' unacked readings come again (see Redeliveries, Outbox).
        self._redeliveries = Redeliveries()
        self._session_present = False
        self._accepting = True
        self._end_session = False
        self._turned_away = 0  # readings that came after stop_intake: their session must stay
        self._connected = threading.Event()
        self._stopping = threading.Event()
        self._backoff = Backoff(config.reconnect_min_s, config.reconnect_max_s)
        self._worker: Worker | None = None
        self._loop: ServingLoop | None = None
        # The serving thread's view of the connection (only it reads or writes these):
        self._attempt = 0  # failed attempts in a row
        self._next_attempt = 0.0  # time.monotonic() of the next connection attempt
        self._connack_by: float | None = None  # while a CONNECT awaits its CONNACK
        self._lost = False  # paho closed the socket: reclaim and schedule a reconnect
        self._answered = False  # a CONNACK came, or the attempt ended
        self._connected_once_this_attempt = False
        self._paho_problem = ""  # paho's last ERROR log line on this attempt
        self.last_error = "not connected yet"

    def _watch_paho_log(self, record: logging.LogRecord) -> bool:
        # A TLS 1.3 broker refuses a client certificate after the handshake, so
        # the only account of why is paho's "failed to receive on socket: ...".
        if record.levelno >= logging.ERROR:
            self._paho_problem = record.getMessage()
        return True

    # -- lifecycle -------------------------------------------------------------

    def start(
        self,
        inputs: list[tuple[str, int]],
        worker: Worker,
        on_reading: Callable[[Message], None],
        control: dict[str, Callable[[bytes], None]] | None = None,
        on_state: Callable[[bool], None] | None = None,
        retained: str = "ignore",
    ) -> None:
        """Start the serving loop, which connects and serves; returns at once.

        Args:
            inputs: topic filters of readings and their QoS; each reading goes to
                ``on_reading`` (on the serving thread), whose ``worker`` runs
                between network events on the same thread.
            control: retained QoS 1 topics (the desired state) and their
                handlers; a handler only queues the payload, so the message is
                acknowledged at once.
            on_state: called with True on each connection, False when it is lost.
            retained: ``ignore``: retained readings (the copies a broker keeps) are
                never answered; ``once``: answered when the subscription is new,
                not again after each reconnect.
        """
        self._control = dict(control or {})
        self._subscriptions.set(inputs, list(self._control), retained)
        self._sink = on_reading
        self._on_state = on_state
        self._worker = worker
        self._loop = ServingLoop(worker, self, name="serving")
        self._outbox.attach(self._loop.on_loop_thread, self._loop.wake)
        self._loop.start()

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
        return self._tracker.wait_idle(timeout)

    def stop_intake(self) -> None:
        """Stop taking readings; those that arrive stay unacknowledged at the broker."""
        self._accepting = False

    def leave(self, filters: list[str], timeout: float) -> bool:
        """Unsubscribe ``filters``; True once the broker stopped dealing them to us (UNSUBACK).
        Readings that arrive meanwhile are still taken and answered."""
        done = threading.Event()
        if self._loop is not None:
            self._loop.call_soon(
                lambda: self._subscriptions.unsubscribe(self._client, filters, done)
            )
        return done.wait(timeout)

    def stop(self, timeout: float, end_session: bool = False) -> None:
        """Publish ``offline``, disconnect cleanly and stop the serving loop.

        With ``end_session`` the DISCONNECT tells the broker to drop the session
        (MQTT 5 session expiry 0): nothing is queued for a module that is gone.
        """
        self._end_session = end_session and self._v5
        deadline = time.monotonic() + timeout
        loop = self._loop
        if loop is None:
            return
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
        self._stopping.set()
        loop.call_soon(self._disconnect)
        if not loop.stop(max(0.5, deadline - time.monotonic())):
            log.warning("the serving loop did not stop within %.1f s", timeout)
        loop.close()
        logging.getLogger("edgeinfer.paho").removeFilter(self._watch_paho_log)

    def _disconnect(self) -> None:
        # Decided at the last moment, on the serving thread: a reading turned away after
        # stop_intake lives only in the session, so the session must outlive us.
        end = self._end_session and not self._turned_away and not self._tracker.unacked
        self._client.disconnect(properties=end_session_properties() if end else None)

    # -- the serving loop's transport (serving thread) ----------------------------

    def socket(self) -> Any:
        return self._client.socket()

    def wants_write(self) -> bool:
        return self._client.want_write()

    def buffered(self) -> bool:
        sock = self._client.socket()
        pending = getattr(sock, "pending", None)
        return bool(pending()) if pending is not None else False

    def read(self) -> None:
        """Read what the socket holds now, while the worker has room: the readings that
        arrived together are batched together (paho reads a few packets a call)."""
        client, worker = self._client, self._worker
        for _ in range(READS_PER_TURN):
            if client.loop_read() != paho.MQTT_ERR_SUCCESS:
                return
            if worker is not None and not worker.has_room:
                return
            sock = client.socket()
            if sock is None or not (self.buffered() or select.select([sock], [], [], 0)[0]):
                return

    def write(self) -> None:
        self._client.loop_write()

    def flush(self) -> None:
        self._outbox.pump()
        if self._client.want_write():
            self._client.loop_write()

    def tick(self, now: float) -> float | None:
        """Reconnect when it is time, give up an unanswered CONNECT, keep the keepalive."""
        if self._lost:
            self._after_loss()
        sock = self._client.socket()
        if sock is None:
            if self._stopping.is_set():
                return None
            if now < self._next_attempt:
                return self._next_attempt - now
            self._try_connect(now)
            return 0.0 if self._lost else None
        if self._connack_by is not None and not self._answered and now >= self._connack_by:
            self._give_up_connect()
            return 0.0
        self._client.loop_misc()
        self.flush()
        return None

    def _try_connect(self, now: float) -> None:
        self._connected_once_this_attempt = False
        self._answered = False
        self._paho_problem = ""
        kwargs: dict[str, Any] = {}
        if self._v5:
            props = connect_properties(self._config.session_expiry_s, self._config.receive_maximum)
            kwargs = {"clean_start": False, "properties": props}
        try:
            self._client.connect(
                self._config.host, self._config.port, self._config.keepalive_s, **kwargs
            )
        except (OSError, ValueError) as exc:
            self.last_error = f"cannot connect to {self._config.url}: {exc}"
            delay = self._backoff.delay(self._attempt)
            self._attempt += 1
            self._next_attempt = time.monotonic() + delay
            log.warning("%s; retrying in %.1f s", self.last_error, delay)
            return
        self._connack_by = now + self._config.keepalive_s

    def _give_up_connect(self) -> None:
        # Some brokers (amqtt, old mosquitto) neither answer nor close on a
        # CONNECT of a protocol version they do not speak.
        self.last_error = (
            f"no CONNACK from {self._config.url} within {self._config.keepalive_s} s"
            + (
                " (a broker that only speaks MQTT 3.1.1 ignores an MQTT 5 CONNECT: "
                'try broker.protocol = "3.1.1")'
                if self._v5
                else ""
            )
        )
        log.error("%s", self.last_error)
        self._answered = True  # so on_disconnect keeps this reason
        self._client.disconnect()
        if self._client.socket() is not None:  # DISCONNECT not written yet: close anyway
            self._client.loop_write()
        self._lost = True

    def _after_loss(self) -> None:
        """The socket is gone: take back what paho held, and schedule the next attempt."""
        self._lost = False
        self._connack_by = None
        self._outbox.reclaim()
        if self._stopping.is_set():
            return
        self._attempt = 0 if self._connected_once_this_attempt else self._attempt + 1
        delay = self._backoff.delay(self._attempt)
        self._next_attempt = time.monotonic() + delay
        log.warning("connection lost (%s); reconnecting in %.1f s", self.last_error, delay)

    # -- paho callbacks (serving thread) ------------------------------------------

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        # paho leaves Nagle on: a small answer would wait ~40 ms for the
        # previous packet's ack before leaving.
        with contextlib.suppress(OSError, AttributeError):  # not a TCP socket
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        self._answered = True
        self._connack_by = None
        if reason.is_failure:
            self.last_error = f"broker {self._config.url} refused the connection: {reason}"
            log.error("%s", self.last_error)
            return
        self._connected_once_this_attempt = True
        self._session_present = bool(getattr(flags, "session_present", False))
        epoch = self._tracker.new_epoch()
        self._redeliveries.decide(epoch, self._session_present)
        self._outbox.on_connect(getattr(properties, "ReceiveMaximum", None))
        self._subscriptions.subscribe(client)
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
        elif not self._stopping.is_set() and not self._answered:
            problem = f": {self._paho_problem}" if self._paho_problem else f" ({reason})"
            self.last_error = (
                f"the connection to {self._config.url} closed before the "
                f"broker accepted it{problem}"
            )
        self._answered = True  # the attempt is over: no CONNACK to wait for
        self._lost = True  # the serving loop reclaims and reconnects after this callback
        if was_connected and self._on_state:
            self._on_state(False)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        if not self._accepting:
            self._turned_away += 1
            return  # left unacknowledged: the broker redelivers it next session
        ticket = self._tracker.register(msg.mid, msg.qos)
        handler = self._control.get(msg.topic)
        if handler is not None:
            handler(bytes(msg.payload))
            self._tracker.complete(ticket)
            return
        if msg.retain and not self._subscriptions.wants_retained(self._session_present):
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

    @property
    def subscription_errors(self) -> dict[str, str]:
        """Filters the broker refused, and why."""
        return self._subscriptions.errors

    @property
    def subscribing(self) -> list[str]:
        """Filters whose SUBACK has not come yet on this connection."""
        return self._subscriptions.awaited

    def _is_stale(self, token: object) -> bool:
        """True for an answer to a QoS 1 reading the broker will redeliver (see Outbox)."""
        return isinstance(token, Ticket) and token.qos > 0 and self._redeliveries.of(token.epoch)

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


def _refuse(message: Message) -> None:
    raise RuntimeError("MqttConnection.start() was not called")
