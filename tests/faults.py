"""Fault injection for the tests: a TCP proxy that delays, stalls and cuts; brokers with ACLs.

The proxy sits between the module and mosquitto. Every new connection can get
its broker-to-client bytes delayed (a slow CONNACK, as on a cellular link), all
traffic can be stalled (a dead link that does not close) or cut (RST), and it
can act as a strict broker that drops a client sending more unacknowledged
QoS 1 PUBLISH packets than a Receive Maximum allows. With ``watch_pubacks`` it
forwards the client's packets one whole packet at a time, counts its PUBACKs and
can lose the next N of them (:meth:`TcpProxy.lose_pubacks`): the readings they
acknowledge stay the broker's, which redelivers them after a cut or a restart.

:func:`corrupt_journal` damages a stream journal as a failing disk would.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from edgeinfer.tools.broker import LocalBroker, free_port

PUBLISH, PUBACK = 3, 4


class _Packets:
    """Splits an MQTT byte stream into whole packets."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> Iterator[tuple[int, int]]:
        """(type, flags) of each packet ``data`` completes."""
        for kind, flags, _ in self.split(data):
            yield kind, flags

    def split(self, data: bytes) -> Iterator[tuple[int, int, bytes]]:
        """(type, flags, the packet's bytes) of each packet ``data`` completes."""
        self._buf += data
        buf, at = self._buf, 0
        try:
            while len(buf) - at >= 2:
                length, shift, i = 0, 0, at + 1
                while True:
                    if i >= len(buf):
                        return
                    byte = buf[i]
                    length |= (byte & 0x7F) << shift
                    shift += 7
                    i += 1
                    if not byte & 0x80:
                        break
                if len(buf) < i + length:
                    return
                first = buf[at]
                packet = bytes(buf[at : i + length])
                at = i + length
                yield first >> 4, first & 0x0F, packet
        finally:
            del buf[:at]  # one copy a read, not one a packet


class TcpProxy:
    """127.0.0.1:<port> forwarded to 127.0.0.1:<target>, with faults on demand."""

    def __init__(self, target_port: int, watch_pubacks: bool = False) -> None:
        self.target = target_port
        #: forward the client's packets whole, counting (and losing, on demand) its PUBACKs
        self.watch_pubacks = watch_pubacks
        self.pubacks = 0  # the client's PUBACKs forwarded to the broker
        self.lost: list[int] = []  # packet ids of the PUBACKs lost
        self._to_lose = 0
        self.port = free_port()
        self.first_reply_delay_s = 0.0  # broker -> client: the first bytes (CONNACK) wait this long
        self.request_delay_s = 0.0  # client -> broker: every read waits this long (a slow link)
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

    def lose_pubacks(self, count: int) -> None:
        """Lose the client's next ``count`` PUBACKs (``watch_pubacks``): the broker never
        hears that those readings were taken, and redelivers them on the next connection."""
        assert self.watch_pubacks, "TcpProxy(..., watch_pubacks=True) sees packets"
        with self._lock:
            self._to_lose = count

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
        whole = _Packets()  # for watch_pubacks: its own cut of the same bytes
        first = True
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if not up and first and self.first_reply_delay_s:
                    time.sleep(self.first_reply_delay_s)
                if up and self.request_delay_s:
                    time.sleep(self.request_delay_s)
                first = False
                while self._stalled.is_set() and not self._closing.is_set():
                    time.sleep(0.01)
                if self.max_inflight is not None and self._over_limit(packets, data, inflight, up):
                    self.violations += 1
                    break
                if up and self.watch_pubacks:
                    data = self._filter(whole, data)
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.close()

    def _filter(self, packets: _Packets, data: bytes) -> bytes:
        """Whole packets only, without the PUBACKs to lose."""
        out = []
        for kind, _, packet in packets.split(data):
            if kind == PUBACK:
                # type, remaining length (2 or more: one byte for it here), the packet id
                pid = int.from_bytes(packet[2:4], "big")
                with self._lock:
                    lose = self._to_lose > 0
                    if lose:
                        self._to_lose -= 1
                        self.lost.append(pid)
                    else:
                        self.pubacks += 1
                if lose:
                    continue
            out.append(packet)
        return b"".join(out)

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


#: How :func:`corrupt_journal` damages a journal.
JOURNAL_DAMAGE = ("random_bytes", "truncated", "zeroed_header")


def corrupt_journal(path: Path, how: str, seed: int = 0) -> bytes:
    """Damage the SQLite file ``path`` as a failing SD card would; returns what it holds now.

    ``random_bytes``: 64 KiB of noise in place of the file (it need not exist);
    ``truncated``: the file cut short mid-page (a real journal: at 55 %, an odd size);
    ``zeroed_header``: its first page (4096 bytes, the header and the schema) zeroed.
    """
    if how == "random_bytes":
        data = random.Random(seed).randbytes(65536)
    elif how == "truncated":
        whole = path.read_bytes()
        assert len(whole) > 3 * 4096, f"{path}: {len(whole)} bytes is no journal to cut short"
        data = whole[: int(len(whole) * 0.55) | 1]
    elif how == "zeroed_header":
        whole = path.read_bytes()
        data = bytes(4096) + whole[4096:]
    else:
        raise ValueError(f"how = {how!r}: expected one of {JOURNAL_DAMAGE}")
    for suffix in ("-wal", "-shm"):  # a checkpointed journal has none; a stale one must go
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{path}{suffix}")
    path.write_bytes(data)
    return data
