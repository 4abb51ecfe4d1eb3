"""The kernel program against the plain-Python reference model (model.py):
random rule sets, random and mutated packets, zero mismatches allowed."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterator
from typing import Any

import packets as P
import pytest
from conftest import RUN, needs_root
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from model import Rules, decide

from pyxdp import Action, Verdict
from pyxdp.entries import Entry, Port, parse_prefix

pytestmark = needs_root

EXAMPLES = int(os.environ.get("PYXDP_MODEL_EXAMPLES", "600"))
PORTS = [22, 53, 80, 443, 8080]


@pytest.fixture(scope="module")
def bench() -> Iterator[tuple[Any, Any]]:
    import shutil

    from pyxdp import Filter

    path = f"/sys/fs/bpf/pyxdp-t{RUN}-model"
    try:
        with Filter.open(path, create=True) as flt, flt.tester() as tester:
            yield flt, tester
    finally:
        shutil.rmtree(path, ignore_errors=True)


def v4_addr(draw: Any) -> str:
    return str(ipaddress.IPv4Address(0x0A000000 | draw(st.integers(0, 0xFFFF)) << 8 | draw(st.integers(0, 3))))


def v6_addr(draw: Any) -> str:
    hi = draw(st.integers(0, 3))
    return str(ipaddress.IPv6Address((0x20010DB8 << 96) | (hi << 80) | (draw(st.integers(0, 3)) << 64)
                                     | draw(st.integers(0, 3))))


@st.composite
def rule_sets(draw: Any) -> Rules:
    rules = Rules(policy=draw(st.sampled_from([Verdict.PASS, Verdict.DROP])))
    for _ in range(draw(st.integers(0, 8))):
        if draw(st.booleans()):
            plen = draw(st.sampled_from([0, 8, 16, 20, 22, 24, 30, 32]))
            net = ipaddress.ip_network(f"{v4_addr(draw)}/{plen}", strict=False)
        else:
            plen = draw(st.sampled_from([0, 32, 48, 64, 80, 127, 128]))
            net = ipaddress.ip_network(f"{v6_addr(draw)}/{plen}", strict=False)
        rules.prefixes[parse_prefix(str(net))] = draw(st.sampled_from([Action.ALLOW, Action.DENY]))
    for _ in range(draw(st.integers(0, 4))):
        port = Port(draw(st.sampled_from(["tcp", "udp"])), draw(st.sampled_from(PORTS)))
        rules.ports[port] = draw(st.sampled_from([Action.ALLOW, Action.DENY]))
    return rules


def l4(draw: Any, proto: int) -> bytes:
    dport = draw(st.sampled_from(PORTS + [1, 65535]))
    if proto == P.TCP:
        return P.tcp(draw(st.integers(1, 65535)), dport)
    if proto == P.UDP:
        return P.udp(draw(st.integers(1, 65535)), dport)
    if proto in (P.ICMP, P.ICMPV6):
        return P.icmp(draw(st.sampled_from([0, 8, 128, 133, 134, 135, 136, 137, 200])))
    return draw(st.binary(max_size=8))


@st.composite
def frames(draw: Any) -> bytes:
    kind = draw(st.sampled_from(["v4", "v4", "v6", "v6", "arp", "other"]))
    tags = tuple((draw(st.sampled_from([P.VLAN_Q, P.VLAN_AD])), draw(st.integers(0, 4095)))
                 for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2, 4, 5]))))
    if kind == "arp":
        pkt = P.eth(P.ETH_ARP, P.arp(), tags)
    elif kind == "other":
        pkt = P.eth(draw(st.sampled_from([0x88CC, 0x8863, 0x0842])), draw(st.binary(max_size=40)), tags)
    elif kind == "v4":
        proto = draw(st.sampled_from([P.TCP, P.UDP, P.ICMP, P.ICMPV6, 47]))
        frag = draw(st.sampled_from([0, 0, 0, 1, 185]))
        opts = b"\x01" * (4 * draw(st.integers(0, 10)))
        ip = P.ipv4(v4_addr(draw), "192.0.2.1", proto, l4(draw, proto), options=opts, frag_off=frag,
                    more_frags=draw(st.booleans()))
        pkt = P.eth(P.ETH_IP, ip, tags)
    else:
        proto = draw(st.sampled_from([P.TCP, P.UDP, P.ICMPV6, P.ICMP, P.NONXT]))
        chain: list[tuple[int, bytes]] = []
        for _ in range(draw(st.sampled_from([0, 0, 1, 2, 3, 8, 9]))):
            t = draw(st.sampled_from([P.HOPOPTS, P.ROUTING, P.DSTOPTS, P.AH, P.FRAGMENT]))
            chain.append((t, b""))
        body = l4(draw, proto)
        nxt = proto
        for t, _ in reversed(chain):
            if t == P.FRAGMENT:
                hdr = P.ext_frag(nxt, draw(st.sampled_from([0, 0, 3])), more=draw(st.booleans()))
            elif t == P.AH:
                hdr = P.ext_ah(nxt, draw(st.integers(1, 4)))
            else:
                hdr = P.ext_opts(nxt, draw(st.integers(0, 2)))
            body = hdr + body
            nxt = t
        hop = draw(st.sampled_from([64, 255]))
        pkt = P.eth(P.ETH_IPV6, P.ipv6(v6_addr(draw), "2001:db8:ffff::1", nxt, body, hop=hop), tags)
    if draw(st.integers(0, 4)) == 0:  # truncate
        pkt = pkt[: draw(st.integers(14, max(14, len(pkt))))]
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):  # mutate bytes
        if len(pkt) > 14:
            i = draw(st.integers(12, len(pkt) - 1))
            pkt = pkt[:i] + bytes([draw(st.integers(0, 255))]) + pkt[i + 1:]
    return pkt


def load(flt: Any, rules: Rules) -> None:
    old = [s.target for s in flt.entries()]
    if old:
        flt.delete(old)
    entries = [Entry(t, a) for t, a in [*rules.prefixes.items(), *rules.ports.items()]]
    half = len(entries) // 2  # two calls: the second one meets entries already placed
    for part in (entries[:half], entries[half:]):
        if part:
            flt.add(part)
    flt.set_policy(rules.policy)


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(rules=rule_sets(), pkts=st.lists(frames(), min_size=1, max_size=15))
def test_kernel_matches_model(bench: tuple[Any, Any], rules: Rules, pkts: list[bytes]) -> None:
    flt, tester = bench
    load(flt, rules)
    for pkt in pkts:
        r = tester.run(pkt)
        assert (r.verdict, r.reason) == decide(pkt, rules), pkt.hex()
