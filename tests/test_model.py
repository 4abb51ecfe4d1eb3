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
from model import Rules, decide, first_rule

from pyxdp import Action, Verdict
from pyxdp.entries import Entry, Port, parse_prefix
from pyxdp.errors import UsageError
from pyxdp.rules import parse_rule
from pyxdp.ruleset import RuleSetSpec

pytestmark = needs_root

EXAMPLES = int(os.environ.get("PYXDP_MODEL_EXAMPLES", "600"))
RULE_EXAMPLES = int(os.environ.get("PYXDP_RULE_EXAMPLES", "300"))
PORTS = [22, 53, 80, 443, 8080]
ENDS = [0, 22, 53, 80, 443, 1000, 2000, 8080, 65535]  # rule port range ends
SPORTS = ENDS + [21, 23, 999, 1001, 1999, 2001, 40000]  # and their neighbours
DSTS4 = ["192.0.2.1", "192.0.2.77", "198.51.100.9"]
DSTS6 = ["2001:db8:ffff::1", "2001:db8:ffff::77"]


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


POOL4 = ["10.0.0.1", "10.0.1.2", "10.1.0.3", "192.0.2.77"]  # a small space, so rules and packets meet
POOL6 = ["2001:db8::1", "2001:db8:1::2", "2001:db8:ffff::77"]


def v4_addr(draw: Any) -> str:
    if draw(st.booleans()):
        return draw(st.sampled_from(POOL4))
    return str(ipaddress.IPv4Address(0x0A000000 | draw(st.integers(0, 0xFFFF)) << 8 | draw(st.integers(0, 3))))


def v6_addr(draw: Any) -> str:
    if draw(st.booleans()):
        return draw(st.sampled_from(POOL6))
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
    dport = draw(st.sampled_from(SPORTS))
    sport = draw(st.one_of(st.sampled_from(SPORTS), st.integers(0, 65535)))
    if proto == P.TCP:
        return P.tcp(sport, dport)
    if proto == P.UDP:
        return P.udp(sport, dport)
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
        ip = P.ipv4(v4_addr(draw), draw(st.sampled_from(DSTS4)), proto, l4(draw, proto), options=opts, frag_off=frag,
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
        pkt = P.eth(P.ETH_IPV6, P.ipv6(v6_addr(draw), draw(st.sampled_from(DSTS6)), nxt, body, hop=hop), tags)
    if draw(st.integers(0, 4)) == 0:  # truncate
        pkt = pkt[: draw(st.integers(14, max(14, len(pkt))))]
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):  # mutate bytes
        if len(pkt) > 14:
            i = draw(st.integers(12, len(pkt) - 1))
            pkt = pkt[:i] + bytes([draw(st.integers(0, 255))]) + pkt[i + 1:]
    return pkt


def load(flt: Any, rules: Rules) -> None:
    if flt.rules() and not rules.ordered:
        flt.replace_rules([])
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


def _net(draw: Any, family: int) -> str:
    if family == 4:
        plen = draw(st.sampled_from([0, 8, 16, 24, 30, 32]))
        base = v4_addr(draw) if draw(st.booleans()) else draw(st.sampled_from(DSTS4))
    else:
        plen = draw(st.sampled_from([0, 32, 64, 100, 128]))
        base = v6_addr(draw) if draw(st.booleans()) else draw(st.sampled_from(DSTS6))
    return str(ipaddress.ip_network(f"{base}/{plen}", strict=False))


def _ports(draw: Any) -> str:
    lo = draw(st.sampled_from(ENDS))
    hi = lo if draw(st.booleans()) else draw(st.sampled_from([p for p in ENDS if p >= lo]))
    return f" port {lo}" if lo == hi else f" port {lo}:{hi}"


@st.composite
def ordered(draw: Any) -> Rules:
    """Entries (often none), sets, and up to 14 ordered rules over a small
    space of addresses and ports, so that rules overlap and shadow each other."""
    rules = draw(rule_sets()) if draw(st.integers(0, 3)) == 0 else Rules(
        policy=draw(st.sampled_from([Verdict.PASS, Verdict.DROP])))
    for name in ("a", "b"):
        rules.sets[name] = list(dict.fromkeys(
            parse_prefix(_net(draw, draw(st.sampled_from([4, 6])))) for _ in range(draw(st.integers(0, 4)))))
    for _ in range(draw(st.integers(0, 14))):
        words = [draw(st.sampled_from(["allow", "deny"]))]
        proto = draw(st.sampled_from(["", "", "tcp", "udp", "icmp", "icmpv6", "any"]))
        if proto:
            words.append(f"proto {proto}")
        for side in ("from", "to"):
            kind = draw(st.sampled_from(["", "", "any", "v4", "v6", "set"]))
            port = _ports(draw) if draw(st.integers(0, 2 if side == "from" else 1)) == 0 else ""
            if not kind and not port:
                continue
            addr = {"": "any", "any": "any", "set": "@" + draw(st.sampled_from(["a", "b"]))}.get(kind)
            words.append(f"{side} {addr or _net(draw, int(kind[1]))}{port}")
        try:
            rule = parse_rule(" ".join(words))
        except UsageError:
            continue  # e.g. ports with icmp, prefixes of two families
        if rule not in rules.ordered:
            rules.ordered.append(rule)
    return rules


@st.composite
def flows(draw: Any) -> bytes:
    """Well-formed TCP/UDP/ICMP packets between the pools' addresses (some
    later fragments): what rules are about."""
    proto = draw(st.sampled_from([P.TCP, P.TCP, P.UDP, P.UDP, P.ICMP, P.ICMPV6]))
    frag = draw(st.sampled_from([0, 0, 0, 0, 185]))
    if draw(st.booleans()):
        if proto == P.ICMPV6:
            proto = P.ICMP
        ip = P.ipv4(v4_addr(draw), draw(st.sampled_from(DSTS4 + POOL4)), proto, l4(draw, proto), frag_off=frag)
        return P.eth(P.ETH_IP, ip)
    if proto == P.ICMP:
        proto = P.ICMPV6
    return P.eth(P.ETH_IPV6, P.ipv6(v6_addr(draw), draw(st.sampled_from(DSTS6 + POOL6)), proto, l4(draw, proto)))


@settings(max_examples=RULE_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(rules=ordered(), pkts=st.lists(st.one_of(frames(), flows(), flows()), min_size=1, max_size=15))
def test_rules_match_model(bench: tuple[Any, Any], rules: Rules, pkts: list[bytes]) -> None:
    """Entries, then ordered rules over prefixes, sets and port ranges: the
    kernel's bit-vector classification gives the verdict, the reason and the
    rule number that a first-match linear scan gives."""
    flt, tester = bench
    load(flt, rules)
    flt.apply(RuleSetSpec(tuple(rules.ordered), rules.sets, None))
    for pkt in pkts:
        r = tester.run(pkt)
        want = decide(pkt, rules)
        assert (r.verdict, r.reason) == want, pkt.hex()
        assert (r.event.rule if r.event else 0) == first_rule(pkt, rules), pkt.hex()
