"""Fault injection for the tests: a TCP proxy that delays, stalls and cuts; brokers with ACLs.

The proxy sits between the module and mosquitto. Every new connection can get
its broker-to-client bytes delayed (a slow CONNACK, as on a cellular link), all
traffic can be stalled (a dead link that does not close) or cut (RST), and it
can act as a strict broker that drops a client sending more unacknowledged
QoS 1 PUBLISH packets than a Receive Maximum allows.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from edgeinfer.tools.broker import LocalBroker, free_port

PUBLISH, PUBACK = 3, 4


class _Packets:
    """Splits an MQTT byte stream into (type, flags) of whole packets."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> Iterator[tuple[int, int]]:
        self._buf += data
        while True:
            if len(self._buf) < 2:
                return
            length, shift, i = 0, 0, 1
            while True:
                if i >= len(self._buf):
                    return
                byte = self._buf[i]
                length |= (byte & 0x7F) << shift
                shift += 7
                i += 1
                if not byte & 0x80:
                    break
            if len(self._buf) < i + length:
                return
            first = self._buf[0]
            self._buf = self._buf[i + length :]
            yield first >> 4, first & 0x0F


class TcpProxy:
    """127.0.0.1:<port> forwarded to 127.0.0.1:<target>, with faults on demand."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.port = free_port()
        self.first_reply_delay_s = 0.0  # broker -> client: the first bytes (CONNACK) wait this long
        self.max_inflight: int | None = None  # cut a client with more unacked QoS 1 PUBLISHes
        self.connections = 0
        self.violations = 0
        self._stalled = threading.Event()
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def stall(self) -> None:
        """Stop forwarding in both directions; the connections stay open."""
        self._stalled.set()

    def resume(self) -> None:
        self._stalled.clear()

    def cut(self) -> None:
        """Reset every open connection (new ones are accepted)."""
        with self._lock:
            sockets, self._open = self._open, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                # shutdown wakes the pump blocked in recv(); close alone would not.
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()

    def close(self) -> None:
        self._closing.set()
        self.cut()
        self._server.close()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._open += [client, upstream]
                self.connections += 1
            inflight = [0]
            threading.Thread(
                target=self._pump, args=(client, upstream, inflight, True), daemon=True
            ).start()
            threading.Thread(
                target=self._pump, args=(upstream, client, inflight, False), daemon=True
            ).start()

    def _pump(self, src: socket.socket, dst: socket.socket, inflight: list[int], up: bool) -> None:
        packets = _Packets()
        first = True
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if not up and first and self.first_reply_delay_s:
                    time.sleep(self.first_reply_delay_s)
                first = False
                while self._stalled.is_set() and not self._closing.is_set():
                    time.sleep(0.01)
                if self.max_inflight is not None and self._over_limit(packets, data, inflight, up):
                    self.violations += 1
                    break
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.close()

    def _over_limit(self, packets: _Packets, data: bytes, inflight: list[int], up: bool) -> bool:
        assert self.max_inflight is not None
        for kind, flags in packets.feed(data):
            if up and kind == PUBLISH and (flags >> 1) & 3:
                inflight[0] += 1
                if inflight[0] > self.max_inflight:
                    return True
            elif not up and kind == PUBACK:
                inflight[0] -= 1
        return False


def acl_broker(tmp: Path, acl: str) -> tuple[LocalBroker, Path]:
    """A mosquitto (not started) whose anonymous clients get the ``topic`` lines in ``acl``.

    Returns the broker and its ACL file: rewrite the file, then ``broker.reload()``.
    """
    path = tmp / f"acl-{free_port()}"
    path.write_text(acl)
    return LocalBroker(kind="mosquitto", listener_options=f"acl_file {path}"), path
