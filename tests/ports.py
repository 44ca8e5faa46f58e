"""Ports for the suite's brokers and modules that no other test worker or socket can take.

``edgeinfer.tools.broker.free_port`` asks the kernel for an ephemeral port and lets it
go: the kernel may hand that same port to the next socket that connects anywhere, and
with several pytest-xdist workers opening connections all the time, a module started a
second later found its HTTP port taken ("Address already in use"). Ports below the
kernel's ephemeral range are never handed out on their own, and each worker takes its
own block of them, walked in order: no two workers, and no outgoing connection, can
collide with a port the suite picked.
"""

from __future__ import annotations

import itertools
import os
import socket
import sys
from collections.abc import Iterator

#: Below Linux's default ephemeral range (32768-60999), above the usual services.
FIRST, BLOCK = 20000, 1500


def _worker() -> int:
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")  # "gw3"; unset without xdist
    return int(name[2:]) if name[2:].isdigit() else 0


def _ports() -> Iterator[int]:
    start = FIRST + (_worker() % 8) * BLOCK
    return itertools.cycle(range(start, start + BLOCK))


_next = _ports()


def free_port() -> int:
    """A port of this worker's block that nothing listens on now."""
    for _ in range(BLOCK):
        port = next(_next)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port left in this worker's block of {BLOCK} from {FIRST}")


def install() -> None:
    """Put :func:`free_port` in place of the package's in every module already imported,
    and in the package's own module for those imported later."""
    from edgeinfer.tools import broker

    original = broker.free_port
    for module in list(sys.modules.values()):
        if getattr(module, "free_port", None) is original:
            module.free_port = free_port  # type: ignore[attr-defined]
