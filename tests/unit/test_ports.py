"""The suite's ports: none the kernel hands out on its own, none shared between workers."""

from __future__ import annotations

from pathlib import Path

from edgeinfer.tools import broker
from tests import ports


def test_the_suite_picks_ports_the_kernel_never_hands_out_and_no_two_workers_share() -> None:
    low, _ = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    blocks = [
        set(range(ports.FIRST + i * ports.BLOCK, ports.FIRST + (i + 1) * ports.BLOCK))
        for i in range(8)
    ]
    assert max(max(block) for block in blocks) < low, "a block reaches the ephemeral range"
    assert all(a.isdisjoint(b) for i, a in enumerate(blocks) for b in blocks[i + 1 :])
    port = broker.free_port()  # the package's, as the suite installed it
    assert port in blocks[ports._worker() % 8], port
