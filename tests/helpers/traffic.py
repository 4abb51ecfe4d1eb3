"""Datagrams across a namespace pair, counted as they arrive."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

from pyxdp import Verdict

from .env import NetPair
from .netio import netns


def sock(ns: str, family: int = 4, port: int | None = None) -> socket.socket:
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    with netns(ns):
        s = socket.socket(af, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE (root): no datagram lost in the socket
    if port is not None:
        s.bind(("0.0.0.0" if family == 4 else "::", port))
    s.setblocking(False)
    return s


def exchange(pair: NetPair, dst: str, sends: dict[int, int], *, src_ns: str | None = None,
             dst_ns: str | None = None, settled: Callable[[int], bool] | None = None) -> dict[int, int]:
    """Send ``sends[port]`` datagrams to ``dst`` (from namespace a to b unless
    told); return how many arrived per port. Receiving stops once
    ``settled(received)`` is true (e.g. the drop counters account for the
    rest) and nothing more arrives for 50 ms, or after 3 s."""
    family = 6 if ":" in dst else 4
    rx = {port: sock(dst_ns or pair.b, family, port) for port in sends}
    tx = sock(src_ns or pair.a, family)
    got = dict.fromkeys(sends, 0)
    want = sum(sends.values())
    try:
        for port, n in sends.items():
            for _ in range(n):
                tx.sendto(b"pyxdp-test", (dst, port))
        deadline = time.monotonic() + 3.0
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            new = 0
            for port, s in rx.items():
                while True:
                    try:
                        s.recv(2048)
                    except BlockingIOError:
                        break
                    got[port] += 1
                    new += 1
            now = time.monotonic()
            if new:
                quiet_since = now
            total = sum(got.values())
            if total == want or (settled is not None and settled(total) and now - quiet_since > 0.05):
                break
            time.sleep(0.005)
    finally:
        tx.close()
        for s in rx.values():
            s.close()
    return got


def dropped_all_but(flt: Any, before: int, want: int) -> Callable[[int], bool]:
    """settled(): the drop counters went up by ``want - received`` since ``before``."""
    return lambda received: flt.stats().total(Verdict.DROP) - before >= want - received
