"""A DHCP client keeps its lease under 'policy drop': the server's answer
(UDP 67 -> 68, from the server's own address to a broadcast, or 547 -> 546
for DHCPv6) passes as a reply while the host has sent from its client port
(README, connection state); without the host's request it is for the
rules, as anything else."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from helpers.env import NetPair, needs_root, sh
from helpers.netio import netns

from pyxdp import Filter, Reason, Verdict

pytestmark = needs_root


@pytest.fixture
def dropping(pin_dir: str, netpair: NetPair) -> Iterator[tuple[Any, NetPair]]:
    with Filter.open(pin_dir, create=True) as flt:
        flt.attach(netpair.vb, netns=netpair.b)
        flt.set_policy(Verdict.DROP)
        yield flt, netpair


def _udp(ns: str, family: int, port: int | None = None, dev: str | None = None) -> socket.socket:
    with netns(ns):
        s = socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == 4:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    if dev is not None:  # the limited broadcast (255.255.255.255) leaves through this device, as DHCP's does
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, dev.encode())
    if port is not None:
        s.bind(("0.0.0.0" if family == 4 else "::", port))
    return s


def _got(s: socket.socket, seconds: float = 1.0) -> bytes | None:
    s.settimeout(seconds)
    try:
        return s.recv(2048)
    except OSError:
        return None


def test_dhcp_replies_pass_after_the_hosts_request(dropping: tuple[Any, NetPair]) -> None:
    flt, pair = dropping
    client = _udp(pair.b, 4, 68, pair.vb)
    server = _udp(pair.a, 4, 67, pair.va)
    try:
        # no request yet: a 'reply' is for the rules (none), so the drop policy
        server.sendto(b"offer before any request", ("255.255.255.255", 68))
        assert _got(client, 0.5) is None
        # the host's DISCOVER/REQUEST: from port 68 to the broadcast address, port 67
        client.sendto(b"discover", ("255.255.255.255", 67))
        assert _got(server, 2) == b"discover"
        # the answer comes from the server's own address, to a broadcast and to the host's address
        server.sendto(b"ack to broadcast", ("255.255.255.255", 68))
        assert _got(client) == b"ack to broadcast"
        server.sendto(b"ack to the address", ("10.77.0.2", 68))
        assert _got(client) == b"ack to the address"
        # another source port, or another destination port, is not a DHCP answer
        other = _udp(pair.a, 4, 6767)
        with other:
            other.sendto(b"not from 67", ("10.77.0.2", 68))
            assert _got(client, 0.5) is None
    finally:
        client.close()
        server.close()
    assert flt.stats().get(Verdict.PASS, Reason.ESTABLISHED).packets >= 2


def test_dhcpv6_replies_pass_after_the_hosts_solicit(dropping: tuple[Any, NetPair]) -> None:
    flt, pair = dropping
    client = _udp(pair.b, 6, 546)
    server = _udp(pair.a, 6, 547)
    try:
        server.sendto(b"advertise before any solicit", ("fd77::2", 546))
        assert _got(client, 0.5) is None
        # a SOLICIT goes to a multicast address (ff02::1:2); what matters here: the host sent from port 546
        client.sendto(b"solicit", ("fd77::1", 547))
        assert _got(server, 2) == b"solicit"
        time.sleep(0.05)
        # the answer from another of the server's addresses than the one asked
        sh("ip", "-n", pair.a, "addr", "add", "fd77::99/64", "dev", pair.va, "nodad")
        with netns(pair.a):
            alt = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        with alt:
            alt.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            alt.bind(("fd77::99", 547))
            alt.sendto(b"reply", ("fd77::2", 546))
            assert _got(client) == b"reply"
    finally:
        client.close()
        server.close()
