"""Verdicts of the kernel program on crafted packets, through
BPF_PROG_TEST_RUN (no interface involved): the parser's cases, then the
decision table: one ordered rule list with ufw's meaning (the first rule that
matches decides), sets of prefixes with timeouts, and where set elements are
stored (hash probes or the trie)."""

from __future__ import annotations

import struct
import time
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
from helpers import packets as P
from helpers.env import needs_root
from helpers.model import Firewall, MRule, decide

from pyxdp import Element, Reason, RuleSetSpec, Verdict, parse_prefix, parse_rule
from pyxdp import layout as L
from pyxdp.model.prefix import Prefix
from pyxdp.store import sets as S
from pyxdp.store.clock import monotonic_ns

pytestmark = needs_root



@pytest.fixture(params=["general", "fast"])
def tester(flt: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """Every verdict here from the general program and from the one with the
    fast paths (xdp_filter_fast: a leading ban list probed inline, port-only
    rules by the port's vectors, taken when the rule set has that form)."""
    shape = 0 if request.param == "general" else L.Shape.BAN_FIRST | L.Shape.PORT_RULES
    with flt.tester(shape) as t:
        yield t


PASS_POLICY = (Verdict.PASS, Reason.POLICY, 0)
DROP_POLICY = (Verdict.DROP, Reason.POLICY, 0)


def allowed(n: int) -> tuple[Verdict, Reason, int]:
    return Verdict.PASS, Reason.RULE_ALLOW, n


def denied(n: int) -> tuple[Verdict, Reason, int]:
    return Verdict.DROP, Reason.RULE_DENY, n


def run(tester: Any, pkt: bytes) -> tuple[Verdict, Reason, int]:
    r = tester.run(pkt)
    return r.verdict, r.reason, r.event.rule if r.event else 0


def check(tester: Any, pkt: bytes, verdict: Verdict, reason: Reason, rule: int = 0) -> None:
    """The packet's verdict, reason and deciding rule number (0: none)."""
    assert run(tester, pkt) == (verdict, reason, rule), pkt.hex()


def model_of(flt: Any) -> Firewall:
    """The model of what ``flt`` holds now: its rules, its sets' live elements
    with their expiry, its policy."""
    now = monotonic_ns()
    sets = {s.name: {e.prefix: None if e.expires_in is None else now + int(e.expires_in * 1e9)
                     for e in flt.set_members(s.name)} for s in flt.sets()}
    return Firewall([MRule.from_rule(r.rule) for r in flt.rules()], sets, flt.policy)


def agree(tester: Any, fw: Firewall, pkts: Iterable[bytes]) -> int:
    """Every packet gets the model's decision; returns how many were denied by a rule."""
    n = 0
    for pkt in pkts:
        want = decide(pkt, fw, monotonic_ns())
        assert run(tester, pkt) == tuple(want), pkt.hex()
        n += want.reason == Reason.RULE_DENY
    return n


def prefixes(*texts: str) -> list[Prefix]:
    return [parse_prefix(t) for t in texts]


# ---- sets as the maps hold them ---------------------------------------------------


def set_info(flt: Any, name: str) -> tuple[int, S.SetInfo]:
    """(id, SetInfo) of a set, read from the 'sets' map."""
    sid = S.lookup_name(flt.state, name)
    raw = flt.state.map("sets").lookup(L.U32.pack(sid))
    assert raw is not None
    return sid, S.SetInfo.decode(raw)


def hashed(flt: Any, name: str, fam: int) -> set[int]:
    """The lengths of one family the datapath probes in the hash for set ``name``."""
    _sid, si = set_info(flt, name)
    return {s - 1 for s in (si.lens4 if fam == 4 else si.lens6) if s}


def in_trie(flt: Any, name: str, fam: int) -> set[Prefix]:
    """The elements of set ``name`` that have a copy in the family's LPM trie."""
    sid, _si = set_info(flt, name)
    kst = L.RKEY4 if fam == 4 else L.RKEY6
    out = set()
    for k in flt.state.map(f"trie{fam}"):
        plen, tag, addr = kst.unpack(k)
        if tag == sid:
            out.add(Prefix(fam, addr, plen - 32))
    return out


def in_hash(flt: Any, name: str, fam: int) -> set[Prefix]:
    sid, _si = set_info(flt, name)
    kst = L.RKEY4 if fam == 4 else L.RKEY6
    out = set()
    for k in flt.state.map(f"elem{fam}"):
        plen, tag, addr = kst.unpack(k)
        if tag == sid:
            out.add(Prefix(fam, addr, plen - 32))
    return out


def age(flt: Any, name: str, prefix: str) -> None:
    """Make an element expired one second ago, as if its TTL had run out (no waiting)."""
    p = parse_prefix(prefix)
    sid, _si = set_info(flt, name)
    key = (L.RKEY4 if p.family == 4 else L.RKEY6).pack(32 + p.plen, sid, p.addr)
    m = flt.state.map(f"elem{p.family}")
    raw = m.lookup(key)
    assert raw is not None, prefix
    _exp, hits, born, until = L.ELEM.unpack(raw)
    m.update(key, L.ELEM.pack(monotonic_ns() - 10**9, hits, born, until))


def check_placement(flt: Any, name: str) -> None:
    """Every element is in the hash; exactly those of unprobed lengths have a
    trie copy; the trie flag says whether the trie holds any of them."""
    _sid, si = set_info(flt, name)
    for fam in (4, 6):
        els = {e.prefix for e in flt.set_members(name) if e.prefix.family == fam}
        probed = hashed(flt, name, fam)
        assert len(probed) <= L.HASHED_MAX
        assert in_hash(flt, name, fam) == els
        assert in_trie(flt, name, fam) == {p for p in els if p.plen not in probed}
        assert si.trie(fam) == any(p.plen not in probed for p in els)


# ---- the parser ------------------------------------------------------------------------


def test_empty_filter_passes_everything(tester: Any) -> None:
    check(tester, P.udp4("192.0.2.1"), *PASS_POLICY)
    check(tester, P.tcp6("2001:db8::1", 22), *PASS_POLICY)
    check(tester, P.eth(0x88CC, b"\0" * 40), *PASS_POLICY)


def test_vlan_and_stacked_vlan(flt: Any, tester: Any) -> None:
    flt.deny("from 192.0.2.0/24")
    inner = P.ipv4("192.0.2.1", "10.0.0.1", P.UDP, P.udp(1, 53))
    for tags in [((P.VLAN_Q, 10),), ((P.VLAN_AD, 100), (P.VLAN_Q, 10)), ((P.VLAN_Q, 1),) * 4]:
        check(tester, P.eth(P.ETH_IP, inner, tags), *denied(1))
    check(tester, P.eth(P.ETH_IP, inner, ((P.VLAN_Q, 1),) * 5), Verdict.DROP, Reason.TOO_DEEP)
    truncated = P.eth(P.ETH_IP, b"", ((P.VLAN_Q, 1),))[:16]
    check(tester, truncated, Verdict.DROP, Reason.MALFORMED)
    check(tester, P.eth(P.ETH_ARP, P.arp(), ((P.VLAN_Q, 7),)), Verdict.PASS, Reason.ARP)


def test_ipv4_options_use_ihl(flt: Any, tester: Any) -> None:
    flt.deny("53/udp")
    opts = b"\x01" * 40  # 40 bytes of NOP options: IHL 15
    check(tester, P.eth(P.ETH_IP, P.ipv4("192.0.2.1", "10.0.0.1", P.UDP, P.udp(1, 53), options=opts)), *denied(1))
    # were the options ignored, the "port" would be read from option bytes
    check(tester, P.eth(P.ETH_IP, P.ipv4("192.0.2.1", "10.0.0.1", P.UDP, P.udp(1, 54), options=opts)),
          *PASS_POLICY)
    check(tester, P.eth(P.ETH_IP, P.ipv4("192.0.2.1", "10.0.0.1", P.UDP, P.udp(1, 53), ihl=4)),
          Verdict.DROP, Reason.MALFORMED)
    check(tester, P.eth(P.ETH_IP, P.ipv4("192.0.2.1", "10.0.0.1", P.UDP, P.udp(1, 53), version=6)),
          Verdict.DROP, Reason.MALFORMED)
    # IHL says 60 bytes of header, the frame ends before
    check(tester, P.eth(P.ETH_IP, P.ipv4("192.0.2.1", "10.0.0.1", P.UDP, b"", ihl=15)),
          Verdict.DROP, Reason.MALFORMED)


def test_ipv6_extension_headers(flt: Any, tester: Any) -> None:
    flt.deny("53/udp")
    chain = P.ext_opts(P.ROUTING) + P.ext_opts(P.AH, 1) + P.ext_ah(P.UDP, 4)
    pkt = P.eth(P.ETH_IPV6, P.ipv6("2001:db8::1", "2001:db8::2", P.HOPOPTS, chain + P.udp(1, 53)))
    check(tester, pkt, *denied(1))
    deep = b"".join(P.ext_opts(P.DSTOPTS) for _ in range(8)) + P.udp(1, 53)  # a ninth header follows
    check(tester, P.eth(P.ETH_IPV6, P.ipv6("2001:db8::1", "2001:db8::2", P.DSTOPTS, deep)),
          Verdict.DROP, Reason.TOO_DEEP)
    eight = b"".join(P.ext_opts(P.DSTOPTS) for _ in range(7)) + P.ext_opts(P.UDP) + P.udp(1, 53)
    check(tester, P.eth(P.ETH_IPV6, P.ipv6("2001:db8::1", "2001:db8::2", P.DSTOPTS, eight)), *denied(1))
    cut = P.eth(P.ETH_IPV6, P.ipv6("2001:db8::1", "2001:db8::2", P.HOPOPTS, P.ext_opts(P.UDP, 2)[:12]))
    check(tester, cut, Verdict.DROP, Reason.MALFORMED)
    none = P.eth(P.ETH_IPV6, P.ipv6("2001:db8::1", "2001:db8::2", P.NONXT, b""))
    check(tester, none, *PASS_POLICY)


def test_l4_header_too_far_in(flt: Any, tester: Any) -> None:
    flt.deny("53/udp")
    # one 2,048-byte hop-by-hop header: the UDP header starts past byte 1,024
    far = P.eth(P.ETH_IPV6, P.ipv6("2001:db8::1", "2001:db8::2", P.HOPOPTS, P.ext_opts(P.UDP, 255) + P.udp(1, 53)))
    check(tester, far, Verdict.DROP, Reason.TOO_DEEP)
    near = P.eth(P.ETH_IPV6, P.ipv6("2001:db8::1", "2001:db8::2", P.HOPOPTS, P.ext_opts(P.UDP, 100) + P.udp(1, 53)))
    check(tester, near, *denied(1))
    assert decide(far, Firewall()).reason == Reason.TOO_DEEP


def test_later_fragments_match_addresses_never_ports(flt: Any, tester: Any) -> None:
    flt.deny("53")  # 1: tcp and udp
    flt.deny("proto udp from 203.0.113.0/24")  # 2: protocol and address: later fragments carry both
    flt.allow("from 192.0.2.0/24")  # 3
    flt.set_add("frag", ["2001:db8:bad::/48"])
    flt.deny("from @frag")  # 4
    first = P.eth(P.ETH_IP, P.ipv4("192.0.2.1", "10.0.0.1", P.UDP, P.udp(1, 53), more_frags=True))
    later = P.eth(P.ETH_IP, P.ipv4("192.0.2.1", "10.0.0.1", P.UDP, P.udp(1, 53), frag_off=3))
    check(tester, first, *denied(1))
    check(tester, later, *allowed(3))  # the bytes that look like port 53 are payload: rule 1 cannot match
    other = P.eth(P.ETH_IP, P.ipv4("198.51.100.1", "10.0.0.1", P.UDP, P.udp(1, 53), frag_off=3))
    check(tester, other, Verdict.PASS, Reason.FRAGMENT)
    bad = P.eth(P.ETH_IP, P.ipv4("203.0.113.9", "10.0.0.1", P.UDP, P.udp(1, 53), frag_off=3))
    check(tester, bad, *denied(2))
    bad_tcp = P.eth(P.ETH_IP, P.ipv4("203.0.113.9", "10.0.0.1", P.TCP, P.tcp(1, 80), frag_off=3))
    check(tester, bad_tcp, Verdict.PASS, Reason.FRAGMENT)
    f6_first = P.ext_frag(P.UDP, 0, more=True) + P.udp(1, 53)
    f6_later = P.ext_frag(P.UDP, 5) + P.udp(1, 53)
    check(tester, P.eth(P.ETH_IPV6, P.ipv6("2001:db8::1", "2001:db8::2", P.FRAGMENT, f6_first)), *denied(1))
    check(tester, P.eth(P.ETH_IPV6, P.ipv6("2001:db8::1", "2001:db8::2", P.FRAGMENT, f6_later)),
          Verdict.PASS, Reason.FRAGMENT)
    check(tester, P.eth(P.ETH_IPV6, P.ipv6("2001:db8:bad::1", "2001:db8::2", P.FRAGMENT, f6_later)), *denied(4))
    flt.set_policy(Verdict.DROP)
    check(tester, other, Verdict.DROP, Reason.FRAGMENT)
    check(tester, P.eth(P.ETH_IP, P.ipv4("198.51.100.1", "10.0.0.1", P.UDP, P.udp(1, 80), frag_off=9)),
          Verdict.DROP, Reason.FRAGMENT)
    check(tester, P.eth(P.ETH_IP, P.ipv4("198.51.100.1", "10.0.0.1", P.UDP, P.udp(1, 80), more_frags=True)),
          *DROP_POLICY)  # a first fragment is not 'fragment': its headers are there


@pytest.mark.parametrize("cut", [13, 14, 20, 33, 34 + 7, 34 + 19])
def test_truncated_headers(flt: Any, tester: Any, cut: int) -> None:
    pkt = P.tcp4("192.0.2.1", 22)[:cut]
    want = decide(pkt, Firewall())
    assert want.reason == Reason.MALFORMED
    check(tester, pkt, *want)


def test_arp_and_nd_survive_drop_policy(flt: Any, tester: Any) -> None:
    flt.set_policy(Verdict.DROP)
    check(tester, P.eth(P.ETH_ARP, P.arp()), Verdict.PASS, Reason.ARP)
    for icmp_type in (133, 134, 135, 136, 137):
        nd = P.eth(P.ETH_IPV6, P.ipv6("fe80::1", "ff02::1", P.ICMPV6, P.icmp(icmp_type), hop=255))
        check(tester, nd, Verdict.PASS, Reason.ND)
        # with a hop limit below 255 it was routed: not neighbour discovery, no exemption
        routed = P.eth(P.ETH_IPV6, P.ipv6("2001:db8::1", "ff02::1", P.ICMPV6, P.icmp(icmp_type), hop=64))
        check(tester, routed, *DROP_POLICY)
    for other in (128, 132, 138):
        check(tester, P.eth(P.ETH_IPV6, P.ipv6("fe80::1", "ff02::1", P.ICMPV6, P.icmp(other), hop=255)),
              *DROP_POLICY)
    check(tester, P.udp4("192.0.2.1"), *DROP_POLICY)
    # an IPv4 packet claiming protocol 58 is not neighbour discovery
    fake = P.eth(P.ETH_IP, P.ipv4("192.0.2.1", "10.0.0.1", P.ICMPV6, P.icmp(135)))
    check(tester, fake, *DROP_POLICY)
    check(tester, P.eth(0x88CC, b"\0" * 40), *DROP_POLICY)  # not IP: the policy


def test_nd_passes_even_when_a_rule_denies_its_source(flt: Any, tester: Any) -> None:
    flt.set_add("lan", ["fe80::/10", "2001:db8::/32", "10.0.0.0/8"])
    flt.deny("from @lan")  # 1
    flt.deny("proto icmpv6")  # 2
    flt.deny("from any")  # 3
    flt.set_policy(Verdict.DROP)
    for src in ("fe80::1", "2001:db8::7"):
        for icmp_type in (133, 134, 135, 136, 137):
            nd = P.eth(P.ETH_IPV6, P.ipv6(src, "ff02::1", P.ICMPV6, P.icmp(icmp_type), hop=255))
            check(tester, nd, Verdict.PASS, Reason.ND)
        routed = P.eth(P.ETH_IPV6, P.ipv6(src, "ff02::1", P.ICMPV6, P.icmp(135), hop=64))
        check(tester, routed, *denied(1))
        echo = P.eth(P.ETH_IPV6, P.ipv6(src, "ff02::1", P.ICMPV6, P.icmp(128), hop=255))
        check(tester, echo, *denied(1))
    check(tester, P.eth(P.ETH_IPV6, P.ipv6("2001:db9::1", "ff02::1", P.ICMPV6, P.icmp(128))), *denied(2))
    check(tester, P.eth(P.ETH_IPV6, P.ipv6("2001:db9::1", "ff02::1", P.ICMPV6, P.icmp(135), hop=255)),
          Verdict.PASS, Reason.ND)
    check(tester, P.eth(P.ETH_ARP, P.arp()), Verdict.PASS, Reason.ARP)
    check(tester, P.udp4("10.1.1.1"), *denied(1))
    check(tester, P.udp4("11.1.1.1"), *denied(3))


# ---- ordered rules: ufw's meaning ----------------------------------------------------------


def test_first_matching_rule_decides_as_in_ufw(flt: Any, tester: Any) -> None:
    assert flt.add_rule("allow proto tcp from 192.0.2.0/24 to any port 22") == 1
    assert flt.add_rule("deny proto tcp to any port 22") == 2
    office, other = "192.0.2.77", "198.51.100.3"
    check(tester, P.tcp4(office, 22), *allowed(1))  # the office gets in ...
    check(tester, P.tcp4(other, 22), *denied(2))  # ... everyone else is blocked
    check(tester, P.tcp6("2001:db8::3", 22), *denied(2))  # 'any' is both families
    check(tester, P.udp4(other, 22), *PASS_POLICY)  # proto tcp: udp/22 is not covered
    check(tester, P.tcp4(other, 23), *PASS_POLICY)
    check(tester, P.tcp4(other, 80, sport=22), *PASS_POLICY)  # 'to any port': the destination port
    # the reverse order blocks the office too
    flt.replace_rules(["deny proto tcp to any port 22", "allow proto tcp from 192.0.2.0/24 to any port 22"])
    check(tester, P.tcp4(office, 22), *denied(1))
    check(tester, P.tcp4(other, 22), *denied(1))
    # a broad allow after a port deny does not open the port (ufw would refuse it too)
    flt.replace_rules(["deny proto tcp to any port 22", "allow from 192.0.2.0/24"])
    check(tester, P.tcp4(office, 22), *denied(1))
    check(tester, P.tcp4(office, 80), *allowed(2))
    check(tester, P.udp4(office, 22), *allowed(2))
    # insert puts a rule before rule N; delete renumbers
    assert flt.deny("from 192.0.2.77", position=1) == 1
    check(tester, P.tcp4(office, 80), *denied(1))
    check(tester, P.tcp4("192.0.2.78", 80), *allowed(3))
    check(tester, P.tcp4("192.0.2.78", 22), *denied(2))
    assert flt.delete_rules(["deny proto tcp to any port 22"]) == 1
    check(tester, P.tcp4("192.0.2.78", 22), *allowed(2))
    check(tester, P.tcp4(office, 22), *denied(1))
    flt.delete_rules([1])
    check(tester, P.tcp4(office, 22), *allowed(1))
    assert [str(r.rule) for r in flt.rules()] == ["allow from 192.0.2.0/24"]
    flt.replace_rules([])
    check(tester, P.tcp4(office, 22), *PASS_POLICY)


def test_the_policy_comes_after_every_rule(flt: Any, tester: Any) -> None:
    flt.allow("22/tcp")
    flt.set_policy(Verdict.DROP)
    check(tester, P.tcp4("192.0.2.1", 22), *allowed(1))
    check(tester, P.tcp4("192.0.2.1", 23), *DROP_POLICY)
    check(tester, P.udp6("2001:db8::1", 22), *DROP_POLICY)
    flt.set_policy(Verdict.PASS)
    check(tester, P.tcp4("192.0.2.1", 23), *PASS_POLICY)


def test_short_port_form_is_tcp_and_udp(flt: Any, tester: Any) -> None:
    assert str(parse_rule("deny 22")) == "deny to any port 22"
    flt.deny("22")  # 1
    flt.allow("53/udp")  # 2
    flt.deny("53/tcp")  # 3
    for pkt in (P.tcp4("192.0.2.1", 22), P.udp4("192.0.2.1", 22), P.tcp6("2001:db8::1", 22),
                P.udp6("2001:db8::1", 22)):
        check(tester, pkt, *denied(1))
    check(tester, P.eth(P.ETH_IP, P.ipv4("192.0.2.1", "10.0.0.1", P.ICMP, P.icmp(8))), *PASS_POLICY)
    check(tester, P.eth(P.ETH_IPV6, P.ipv6("2001:db8::1", "2001:db8::2", P.ICMPV6, P.icmp(128))), *PASS_POLICY)
    # an ICMP header whose type/code bytes read as 0/22 is not port 22
    check(tester, P.eth(P.ETH_IP, P.ipv4("192.0.2.1", "10.0.0.1", P.ICMP, P.icmp(0, 22))), *PASS_POLICY)
    check(tester, P.eth(P.ETH_IP, P.ipv4("192.0.2.1", "10.0.0.1", 47, P.udp(1, 22))), *PASS_POLICY)  # GRE
    check(tester, P.tcp4("192.0.2.1", 23), *PASS_POLICY)
    check(tester, P.udp4("192.0.2.1", 53), *allowed(2))
    check(tester, P.tcp4("192.0.2.1", 53), *denied(3))
    check(tester, P.udp6("2001:db8::1", 53), *allowed(2))


def test_port_ranges_and_lists(flt: Any, tester: Any) -> None:
    flt.replace_rules([
        "allow 1000:2000/tcp",  # 1
        "deny 80,443,8000:8080/tcp",  # 2
        "deny proto udp from any port 53",  # 3: a source port
        "allow in from any port 1024:65535 to any port 9000,9001 proto udp",  # 4: 'in', proto last
        "deny proto udp to any port 65535",  # 5
        "allow proto tcp to any port 0",  # 6
        "deny proto any from any port 0:10 to any port 7:7",  # 7
    ])
    flt.set_policy(Verdict.DROP)
    tcp = {999: DROP_POLICY, 1000: allowed(1), 1500: allowed(1), 2000: allowed(1), 2001: DROP_POLICY,
           79: DROP_POLICY, 80: denied(2), 81: DROP_POLICY, 442: DROP_POLICY, 443: denied(2), 444: DROP_POLICY,
           7999: DROP_POLICY, 8000: denied(2), 8040: denied(2), 8080: denied(2), 8081: DROP_POLICY,
           0: allowed(6), 65535: DROP_POLICY}
    for port, want in tcp.items():
        check(tester, P.tcp4("192.0.2.1", port), *want)
        check(tester, P.tcp6("2001:db8::1", port), *want)
    check(tester, P.udp4("192.0.2.1", 1500), *DROP_POLICY)  # /tcp: not udp
    check(tester, P.udp4("192.0.2.1", 9000, sport=53), *denied(3))
    check(tester, P.udp4("192.0.2.1", 9001, sport=1024), *allowed(4))
    check(tester, P.udp6("2001:db8::1", 9000, sport=65535), *allowed(4))
    check(tester, P.udp4("192.0.2.1", 9000, sport=1023), *DROP_POLICY)
    check(tester, P.udp4("192.0.2.1", 9002, sport=1024), *DROP_POLICY)
    check(tester, P.tcp4("192.0.2.1", 9000, sport=1024), *DROP_POLICY)
    check(tester, P.udp4("192.0.2.1", 65535), *denied(5))
    check(tester, P.udp4("192.0.2.1", 65534), *DROP_POLICY)
    check(tester, P.udp4("192.0.2.1", 7, sport=10), *denied(7))
    check(tester, P.tcp4("192.0.2.1", 7, sport=0), *denied(7))
    check(tester, P.tcp4("192.0.2.1", 7, sport=11), *DROP_POLICY)
    check(tester, P.tcp4("192.0.2.1", 8, sport=0), *DROP_POLICY)
    assert agree(tester, model_of(flt), [P.tcp4("192.0.2.1", p, sport=s) for p in (0, 7, 80, 1000, 65535)
                                         for s in (0, 10, 53, 1024)]) > 0


def test_prefixes_match_their_family_any_matches_both(flt: Any, tester: Any) -> None:
    flt.replace_rules([
        "deny from 0.0.0.0/0 to 198.51.100.0/24",  # 1: IPv4 only
        "allow from ::/0 to 2001:db8:ffff::1",  # 2: IPv6 only
        "deny from 10.0.0.0/8 on pxnope0",  # 3: an interface nothing is attached to: never matches
        "allow proto icmp from 10.0.0.0/8",  # 4
        "deny from any",  # 5: both families
    ])
    check(tester, P.udp4("203.0.113.1", dst="198.51.100.1"), *denied(1))
    check(tester, P.udp4("203.0.113.1", dst="198.51.101.1"), *denied(5))
    check(tester, P.udp6("2001:db8::1", dst="2001:db8:ffff::1"), *allowed(2))
    check(tester, P.udp6("2001:db8::1", dst="2001:db8:ffff::2"), *denied(5))
    check(tester, P.udp4("10.1.1.1", dst="203.0.113.1"), *denied(5))
    check(tester, P.eth(P.ETH_IP, P.ipv4("10.1.1.1", "192.0.2.1", P.ICMP, P.icmp(8))), *allowed(4))
    check(tester, P.eth(P.ETH_IP, P.ipv4("11.1.1.1", "192.0.2.1", P.ICMP, P.icmp(8))), *denied(5))
    check(tester, P.eth(P.ETH_ARP, P.arp()), Verdict.PASS, Reason.ARP)
    check(tester, P.eth(0x88CC, b"\0" * 40), *PASS_POLICY)  # 'from any' is about IP packets


def test_ban_inserts_a_deny_rule_before_the_operators_rules(flt: Any, tester: Any) -> None:
    flt.allow("from 203.0.113.0/24")
    res = flt.ban(["203.0.113.7", "2001:db8::bad"])
    assert res.rule == 1 and res.added == 2
    assert [str(r.rule) for r in flt.rules()] == ["deny from @banned", "allow from 203.0.113.0/24"]
    check(tester, P.udp4("203.0.113.7"), *denied(1))
    check(tester, P.udp4("203.0.113.8"), *allowed(2))
    check(tester, P.tcp6("2001:db8::bad", 22), *denied(1))
    assert flt.ban(["203.0.113.9"]).rule == 0  # the rule is there: not added twice
    check(tester, P.udp4("203.0.113.9"), *denied(1))
    res2 = flt.unban(["203.0.113.7", "192.0.2.1"])
    assert res2.removed == 1 and [str(p) for p in res2.missing] == ["192.0.2.1/32"]
    check(tester, P.udp4("203.0.113.7"), *allowed(2))


# ---- sets --------------------------------------------------------------------------------


def test_set_membership_is_some_element_holding_the_address(flt: Any, tester: Any) -> None:
    flt.set_add("mix", ["10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.1.2.3", "192.0.2.128/25",
                        "198.51.100.7/32", "2001:db8::/32", "2001:db8:1::/48", "2001:db8:1:2::/64",
                        "2001:db8:1:2::3/128", "fd00::/8", "2001:db8:ff00::/40"])
    flt.set_add("dst", ["198.51.100.0/24", "2001:db8:ffff::/48"])
    flt.deny("proto tcp from @mix to @dst port 22")  # 1
    flt.allow("from @mix")  # 2
    flt.deny("to @dst")  # 3
    flt.set_policy(Verdict.DROP)
    fw = model_of(flt)
    assert set(fw.sets["mix"]) == set(prefixes("10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.1.2.3",
                                               "192.0.2.128/25", "198.51.100.7", "2001:db8::/32",
                                               "2001:db8:1::/48", "2001:db8:1:2::/64", "2001:db8:1:2::3",
                                               "fd00::/8", "2001:db8:ff00::/40"))
    srcs4 = ["10.0.0.1", "10.1.2.3", "10.1.2.4", "10.1.3.1", "10.255.255.255", "9.255.255.255", "11.0.0.0",
             "192.0.2.127", "192.0.2.128", "192.0.2.255", "198.51.100.7", "198.51.100.6", "203.0.113.1"]
    srcs6 = ["2001:db8::1", "2001:db8:1:2::3", "2001:db8:1:2::4", "2001:db9::1", "fd12::1", "fe80::1",
             "2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", "2001:db8:ff00::1", "2001:db8:feff::1"]
    pkts = [P.tcp4(s, port, dst=d) for s in srcs4 for port in (22, 80) for d in ("198.51.100.1", "192.0.2.1")]
    pkts += [P.tcp6(s, port, dst=d) for s in srcs6 for port in (22, 80) for d in ("2001:db8:ffff::1", "::1")]
    assert agree(tester, fw, pkts) > 10
    check(tester, P.tcp4("10.1.2.3", 22, dst="198.51.100.9"), *denied(1))
    check(tester, P.tcp4("10.1.2.3", 80, dst="198.51.100.9"), *allowed(2))
    check(tester, P.tcp4("11.1.2.3", 80, dst="198.51.100.9"), *denied(3))
    check(tester, P.tcp6("2001:db8:1:2::3", 22, dst="2001:db8:ffff::9"), *denied(1))
    check(tester, P.tcp6("2001:db9::1", 22, dst="2001:db8::9"), *DROP_POLICY)
    # nested prefixes: removing one leaves the address in the set while another holds it
    flt.set_remove("mix", ["10.1.0.0/16", "10.1.2.0/24"])
    check(tester, P.tcp4("10.1.2.9", 80, dst="192.0.2.1"), *allowed(2))
    flt.set_remove("mix", ["10.0.0.0/8"])
    check(tester, P.tcp4("10.1.2.9", 80, dst="192.0.2.1"), *DROP_POLICY)
    check(tester, P.tcp4("10.1.2.3", 80, dst="192.0.2.1"), *allowed(2))
    flt.set_remove("mix", ["2001:db8::/32", "2001:db8:1:2::3"])
    check(tester, P.tcp6("2001:db8:1:2::3", 80, dst="::1"), *allowed(2))  # still in 2001:db8:1:2::/64
    check(tester, P.tcp6("2001:db8:2::1", 80, dst="::1"), *DROP_POLICY)
    assert agree(tester, model_of(flt), pkts) > 0
    assert flt.set_flush("dst") == 2
    check(tester, P.tcp4("11.1.2.3", 80, dst="198.51.100.9"), *DROP_POLICY)
    assert agree(tester, model_of(flt), pkts) == 0  # every deny rule needs @dst, now empty


def test_set_remove_is_all_or_nothing(flt: Any, tester: Any) -> None:
    from pyxdp.errors import UsageError

    flt.set_add("s", ["192.0.2.0/24", "198.51.100.0/24"])
    flt.deny("from @s")
    with pytest.raises(UsageError, match="203.0.113.0/24 is not in the set"):
        flt.set_remove("s", ["192.0.2.0/24", "203.0.113.0/24"])
    check(tester, P.udp4("192.0.2.1"), *denied(1))
    res = flt.set_remove("s", ["192.0.2.0/24", "203.0.113.0/24"], missing_ok=True)
    assert res.removed == 1 and res.missing == (parse_prefix("203.0.113.0/24"),)
    check(tester, P.udp4("192.0.2.1"), *PASS_POLICY)
    check(tester, P.udp4("198.51.100.1"), *denied(1))
    assert [str(e.prefix) for e in flt.set_members("s")] == ["198.51.100.0/24"]


def test_set_elements_expire_and_refresh(flt: Any, tester: Any) -> None:
    """One real wait: elements with a 1 s TTL stop matching, in the hash and
    in the trie (where the lookup then falls back to a shorter element);
    re-added ones got their new timeout; the sweeper then frees them."""
    perm = ["11.0.0.0/8", "12.0.0.0/8", "13.0.0.0/8", "14.1.0.0/16", "14.2.0.0/16", "14.3.0.0/16",
            "15.0.1.0/24", "15.0.2.0/24", "15.0.3.0/24", "16.0.0.1", "16.0.0.2", "16.0.0.3", "100.64.0.0/10"]
    flt.set_add("t", perm)
    refresh = ["198.51.100.0/24", "203.0.113.0/24"]
    assert flt.set_add("t", refresh, ttl=1).added == 2
    res = flt.set_add("t", refresh[:1])  # permanent now
    assert (res.added, res.refreshed) == (0, 1)
    assert flt.set_add("t", refresh[1:], ttl=60).refreshed == 1
    flt.deny("from @t")
    short = ["100.64.0.0/20", "172.16.0.0/12", "15.0.9.0/24", "2001:db8:dead::/48"]
    t0 = time.monotonic()
    assert flt.set_add("t", short, ttl=1).added == 4
    probes = ["100.64.0.5", "100.64.20.1", "172.16.0.1", "15.0.9.1", "198.51.100.1", "203.0.113.1", "11.2.3.4",
              "16.0.0.2"]
    for src in probes:
        check(tester, P.udp4(src), *denied(1))
    check(tester, P.udp6("2001:db8:dead::1"), *denied(1))
    ttls = {str(e.prefix): e.expires_in for e in flt.set_members("t")}
    assert time.monotonic() - t0 < 0.8, "too slow to see the elements before they expire"
    assert ttls["198.51.100.0/24"] is None and 55 < (ttls["203.0.113.0/24"] or 0) <= 60
    assert 0 < (ttls["172.16.0.0/12"] or 0) <= 1
    assert hashed(flt, "t", 4) == {8, 16, 24, 32}
    assert {str(p) for p in in_trie(flt, "t", 4)} == {"100.64.0.0/10", "100.64.0.0/20", "172.16.0.0/12"}
    check_placement(flt, "t")
    time.sleep(max(0.0, t0 + 1.2 - time.monotonic()))
    check(tester, P.udp4("100.64.0.5"), *denied(1))  # the /20 expired: the trie falls back to the /10
    check(tester, P.udp4("172.16.0.1"), *PASS_POLICY)  # expired, in the trie
    check(tester, P.udp4("15.0.9.1"), *PASS_POLICY)  # expired, in the hash
    check(tester, P.udp6("2001:db8:dead::1"), *PASS_POLICY)
    for src in ("198.51.100.1", "203.0.113.1", "11.2.3.4", "16.0.0.2", "100.64.20.1"):
        check(tester, P.udp4(src), *denied(1))
    listed = {str(e.prefix) for e in flt.set_members("t")}
    assert listed == {str(p) for p in prefixes(*perm, *refresh)}
    # re-adding an expired element makes it live again, whether or not the sweeper came by
    assert flt.set_add("t", ["172.16.0.0/12"]).added == 1
    check(tester, P.udp4("172.16.0.1"), *denied(1))
    # the sweeper (a BPF timer, every second) removes the expired ones from memory; the
    # elements' expiry times differ by the time set_add took between them, so one walk may
    # take the IPv4 ones and the next the IPv6 one: wait for both
    gone = set(prefixes("100.64.0.0/20", "15.0.9.0/24"))
    deadline = time.monotonic() + 4
    while (gone & in_hash(flt, "t", 4) or in_hash(flt, "t", 6)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not gone & in_hash(flt, "t", 4)
    assert parse_prefix("100.64.0.0/20") not in in_trie(flt, "t", 4)
    assert not in_hash(flt, "t", 6)
    assert [(s.n4, s.n6) for s in flt.sets() if s.name == "t"] == [(len(perm) + 3, 0)]
    check(tester, P.udp4("100.64.0.5"), *denied(1))


@pytest.mark.parametrize("short_hashed", [True, False], ids=["short-hashed", "long-hashed"])
def test_expired_elements_stop_matching_in_hash_and_trie(flt: Any, tester: Any, short_hashed: bool) -> None:
    """Expiry written in the past (no waiting), longest element first, with
    the four shortest lengths in the hash and the rest in the trie, or the
    other way round: each lookup falls back to what still holds the address."""
    nets4 = ["172.0.0.0/8", "172.0.0.0/10", "172.16.0.0/12", "172.16.0.0/14", "172.16.0.0/16", "172.16.0.0/18",
             "172.16.0.0/20", "172.16.0.0/22"]
    nets6 = [f"2001:db8::/{n}" for n in (32, 40, 48, 56, 64, 96, 120, 128)]
    order = (lambda x: x) if short_hashed else (lambda x: x[::-1])
    # eight lengths per family, four slots: the four lengths with a second element elsewhere get them
    others = [parse_prefix(p).truncate(parse_prefix(p).plen) for p in
              [f"10.0.0.0/{p.plen}" for p in prefixes(*order(nets4)[:4])]
              + [f"fd00::/{p.plen}" for p in prefixes(*order(nets6)[:4])]]
    flt.set_add("x", nets4 + nets6 + others)
    flt.deny("from @x")
    for fam, nets in ((4, nets4), (6, nets6)):
        lens = [parse_prefix(p).plen for p in order(nets)]
        assert hashed(flt, "x", fam) == set(lens[:4])
        assert {p.plen for p in in_trie(flt, "x", fam)} == set(lens[4:])
    check_placement(flt, "x")
    fw = model_of(flt)
    srcs = [P.udp4(s) for s in ("172.16.0.1", "172.16.2.1", "172.16.8.1", "172.16.32.1", "172.16.128.1",
                                "172.17.0.1", "172.20.0.1", "172.31.0.1", "172.32.0.1", "172.64.0.1", "172.200.0.1",
                                "173.0.0.1")]
    srcs += [P.udp6(s) for s in ("2001:db8::", "2001:db8::1", "2001:db8::100", "2001:db8::1:0:0", "2001:db8:0:1::",
                                 "2001:db8:0:100::", "2001:db8:1::", "2001:db8:100::", "2001:db9::")]
    now = monotonic_ns()
    for net in nets4[::-1] + nets6[::-1]:  # age them one by one, longest first
        age(flt, "x", net)
        fw.sets["x"][parse_prefix(net)] = now
        agree(tester, fw, srcs)
        assert net not in {str(e.prefix) for e in flt.set_members("x")}
    check(tester, P.udp4("172.16.0.1"), *PASS_POLICY)
    check(tester, P.udp6("2001:db8::1"), *PASS_POLICY)


def test_placement_moves_lengths_between_hash_and_trie(flt: Any, tester: Any) -> None:
    """A set with more lengths than hash slots: every length matches
    wherever it is stored (/0, /32, /128 included); removing elements lets
    trie lengths move back into the hash, and the trie empties."""
    v4 = ["10.0.0.0/8", "10.0.0.0/12", "10.32.0.0/12", "10.64.0.0/16", "10.64.1.0/24", "10.64.2.0/24",
          "10.64.3.0/24", "10.64.2.128/28", "10.64.2.64/30", "10.64.2.7", "10.64.2.9", "10.64.2.11", "10.64.2.13",
          "192.0.2.0/25", "192.0.2.200/31"]
    v6 = ["2001:db8::/32", "2001:db8::/40", "2001:db8::/48", "2001:db8::/56", "2001:db8::/64", "2001:db8::/96",
          "2001:db8::/120", "2001:db8::1/128", "2001:db8::3/128", "2001:db8:1::/48", "2001:db8:2::/48"]
    flt.set_add("p", v4 + v6)
    flt.deny("proto udp from @p")  # 1
    flt.allow("to @p")  # 2
    flt.set_policy(Verdict.DROP)
    assert len(hashed(flt, "p", 4)) == 4 and len(hashed(flt, "p", 6)) == 4
    assert in_trie(flt, "p", 4) and in_trie(flt, "p", 6)
    check_placement(flt, "p")
    srcs4 = ["10.64.2.7", "10.64.2.8", "10.64.2.200", "10.64.2.65", "10.64.2.129", "10.64.3.1", "10.64.4.1",
             "10.65.0.1", "10.31.0.1", "10.32.0.1", "10.48.0.1", "10.200.0.1", "11.0.0.1", "192.0.2.1",
             "192.0.2.129", "192.0.2.201", "192.0.2.202", "0.0.0.0", "255.255.255.255"]
    srcs6 = ["2001:db8::1", "2001:db8::2", "2001:db8::3", "2001:db8::100", "2001:db8:0:0:1::", "2001:db8:0:1::",
             "2001:db8:0:100::", "2001:db8:1::", "2001:db8:2::1", "2001:db8:3::1", "2001:db8:100::",
             "2001:db9::", "fe80::1", "::"]

    def probe() -> list[bytes]:
        return ([P.udp4(s, dst="203.0.113.1") for s in srcs4] + [P.tcp4("203.0.113.1", 80, dst=s) for s in srcs4]
                + [P.udp6(s, dst="2001:db9::1") for s in srcs6] + [P.tcp6("2001:db9::1", 80, dst=s) for s in srcs6])

    assert agree(tester, model_of(flt), probe()) > 20
    # /0 elements: everything of that family is in the set
    flt.set_add("p", ["0.0.0.0/0", "::/0"])
    check_placement(flt, "p")
    assert 0 not in hashed(flt, "p", 4) and 0 not in hashed(flt, "p", 6)
    check(tester, P.udp4("203.0.113.9"), *denied(1))
    check(tester, P.udp6("fe80::1"), *denied(1))
    assert agree(tester, model_of(flt), probe()) == len(probe()) // 2
    # remove down to four lengths per family: the trie lengths move into the hash, the trie empties
    keep4 = {"10.0.0.0/8", "10.64.1.0/24", "10.64.2.7/32", "10.64.2.64/30"}
    keep6 = {"2001:db8::/32", "2001:db8::/96", "2001:db8::1/128", "2001:db8:1::/48"}
    drop = [e.prefix for e in flt.set_members("p") if str(e.prefix) not in keep4 | keep6]
    flt.set_remove("p", drop)
    assert hashed(flt, "p", 4) == {8, 24, 32, 30} and hashed(flt, "p", 6) == {32, 96, 128, 48}
    assert not in_trie(flt, "p", 4) and not in_trie(flt, "p", 6)
    _sid, si = set_info(flt, "p")
    assert not si.trie4 and not si.trie6
    check_placement(flt, "p")
    assert agree(tester, model_of(flt), probe()) > 5
    # and back: new lengths beyond the free slots go to the trie again
    flt.set_add("p", ["10.64.2.128/28", "2001:db8::/120", "0.0.0.0/0"])
    assert in_trie(flt, "p", 4) == set(prefixes("10.64.2.128/28", "0.0.0.0/0"))
    assert in_trie(flt, "p", 6) == set(prefixes("2001:db8::/120"))
    check_placement(flt, "p")
    assert agree(tester, model_of(flt), probe()) > 5


def test_populous_trie_length_swaps_into_the_hash(flt: Any, tester: Any) -> None:
    flt.set_add("r", ["10.0.0.0/8", "10.0.0.0/12", "10.0.0.0/16", "10.0.0.0/20"])  # the four hash slots
    flt.allow("from @r")
    flt.set_policy(Verdict.DROP)
    assert hashed(flt, "r", 4) == {8, 12, 16, 20} and not set_info(flt, "r")[1].trie4
    flt.set_add("r", ["10.0.0.0/24"])  # one /24: no slot free, it goes to the trie
    assert hashed(flt, "r", 4) == {8, 12, 16, 20} and in_trie(flt, "r", 4) == set(prefixes("10.0.0.0/24"))
    flt.set_add("r", ["10.0.1.0/24", "10.0.2.0/24"])  # 3 > 2 * 1: the /24s take the slot of a single length
    assert 24 in hashed(flt, "r", 4) and len(hashed(flt, "r", 4)) == 4
    moved = {8, 12, 16, 20} - hashed(flt, "r", 4)
    assert len(moved) == 1 and {p.plen for p in in_trie(flt, "r", 4)} == moved
    check_placement(flt, "r")
    for src in ("10.0.1.1", "10.0.16.1", "10.16.0.1", "10.200.0.1", "11.0.0.1"):
        check(tester, P.udp4(src), *(allowed(1) if src.startswith("10.") else DROP_POLICY))
    flt.set_remove("r", prefixes("10.0.0.0/24", "10.0.1.0/24", "10.0.2.0/24"))
    assert hashed(flt, "r", 4) == {8, 12, 16, 20} and not in_trie(flt, "r", 4)
    assert not set_info(flt, "r")[1].trie4
    check(tester, P.udp4("10.0.1.1"), *allowed(1))


def test_rare_lengths_stay_in_the_trie_of_a_large_set(flt: Any, tester: Any) -> None:
    flt.set_add("big", [f"10.{i >> 8}.{i & 255}.0/24" for i in range(2000)])
    for n in (25, 28, 29, 30, 31):
        flt.set_add("big", [f"192.168.{i}.0/{n}" for i in range(10)])
    flt.deny("from @big")
    # five lengths of 10 elements each do not earn a probe each against 2,000 /24s
    assert hashed(flt, "big", 4) == {24}
    assert len(in_trie(flt, "big", 4)) == 50
    assert S.plan_hashed([0] * 24 + [2000, 10, 0, 0, 10, 10, 10, 10, 0], {24}) == {24}
    for src in ("10.3.200.1", "10.7.208.1", "10.7.209.1", "192.168.3.1", "192.168.3.200", "192.168.11.1",
                "8.8.8.8"):
        check(tester, P.udp4(src), *decide(P.udp4(src), model_of(flt)))
    # without the /24s the five small lengths compete for four slots: one stays in the trie
    flt.set_remove("big", [f"10.{i >> 8}.{i & 255}.0/24" for i in range(2000)])
    probed = hashed(flt, "big", 4)
    assert len(probed) == 4 and probed < {25, 28, 29, 30, 31}
    assert {p.plen for p in in_trie(flt, "big", 4)} == {25, 28, 29, 30, 31} - probed
    check_placement(flt, "big")
    check(tester, P.udp4("192.168.3.1"), *denied(1))
    check(tester, P.udp4("10.3.200.1"), *PASS_POLICY)


def test_apply_places_the_most_populous_lengths(flt: Any, tester: Any) -> None:
    counts = {8: 1, 16: 5, 20: 2, 24: 7, 28: 3, 32: 6}  # length -> elements; the first octet tells the length
    els = [Element(Prefix(4, (((20 + n) << 24) | (i << (32 - n))).to_bytes(4, "big"), n), None)
           for n, c in counts.items() for i in range(c)]
    flt.apply(RuleSetSpec((parse_rule("deny from @a"),), {"a": els}, Verdict.PASS))
    assert hashed(flt, "a", 4) == {24, 32, 16, 28}
    assert {p.plen for p in in_trie(flt, "a", 4)} == {8, 20}
    check_placement(flt, "a")
    fw = model_of(flt)
    srcs = [str(e.prefix).split("/")[0] for e in els] + ["10.8.1.1", "10.20.17.1", "10.24.3.1", "11.0.0.1"]
    assert agree(tester, fw, [P.udp4(s) for s in srcs]) >= len(els)


def test_hits_count_on_rules_and_elements_and_the_tester_counts_none(flt: Any, tester: Any) -> None:
    flt.set_add("h", ["192.0.2.0/24", "2001:db8::/32", "198.51.100.7"])
    flt.deny("from @h")  # 1
    flt.deny("53/udp")  # 2
    for _ in range(3):
        check(tester, P.udp4("192.0.2.1"), *denied(1))
    check(tester, P.udp4("10.9.9.9", 53), *denied(2))
    assert [(r.packets, r.bytes) for r in flt.rules()] == [(0, 0), (0, 0)]
    assert {str(e.prefix): e.hits for e in flt.set_members("h")} == {
        "192.0.2.0/24": 0, "198.51.100.7/32": 0, "2001:db8::/32": 0}
    assert flt.stats().lines == ()  # the tester has its own counters
    with flt.program() as prog:
        for _ in range(3):
            assert prog.test_run(P.udp4("192.0.2.1")).retval == L.XDP_DROP
        prog.test_run(P.udp6("2001:db8::5"))
        prog.test_run(P.udp4("10.9.9.9", 53))
        prog.test_run(P.udp4("10.9.9.9", 54))
    assert [(r.packets, r.bytes) for r in flt.rules()] == [(4, 3 * 60 + len(P.udp6("2001:db8::5"))), (1, 60)]
    assert {str(e.prefix): e.hits for e in flt.set_members("h")} == {
        "192.0.2.0/24": 3, "198.51.100.7/32": 0, "2001:db8::/32": 1}
    st = flt.stats()
    assert st.get(Verdict.DROP, Reason.RULE_DENY).packets == 5
    assert st.get(Verdict.PASS, Reason.POLICY).packets == 1
    assert st.get(Verdict.DROP, Reason.RULE_DENY).bytes == 4 * 60 + len(P.udp6("2001:db8::5"))


def test_set_capacity_full_changes_nothing(pin_dir: str) -> None:
    from pyxdp import Filter
    from pyxdp.errors import MapFull

    with Filter.open(pin_dir, create=True, capacity=10) as f, f.tester() as t:
        f.set_add("c", [f"10.0.0.{i}" for i in range(5)] + ["10.0.1.0/31", "10.0.2.0/30", "10.0.3.0/29"])
        f.deny("from @c")
        f.set_add("c", ["192.168.0.0/24", "192.168.1.0/24"])  # a fifth length: the trie
        assert len(f.set_members("c")) == 10 and in_trie(f, "c", 4) == set(prefixes("192.168.0.0/24",
                                                                                     "192.168.1.0/24"))
        with pytest.raises(MapFull, match="full"):
            f.set_add("c", ["172.16.0.0/24"])
        with pytest.raises(MapFull, match="full"):
            f.set_add("c", ["10.0.0.1", "172.16.0.0/24"])  # all or nothing
        assert len(f.set_members("c")) == 10
        check(t, P.udp4("172.16.0.1"), *PASS_POLICY)
        f.set_add("c", [f"10.0.0.{i}" for i in range(5)], ttl=600)  # refreshing what is there fits
        f.set_add("c", ["2001:db8::/32"])  # the other family has its own room
        f.set_remove("c", ["192.168.0.0/24", "10.0.0.1"])
        f.set_add("c", ["172.16.0.0/24"])
        check_placement(f, "c")
        check(t, P.udp4("192.168.0.9"), *PASS_POLICY)  # removed stays removed
        check(t, P.udp4("192.168.1.9"), *denied(1))
        check(t, P.udp4("10.0.0.1"), *PASS_POLICY)
        check(t, P.udp4("10.0.0.2"), *denied(1))
        check(t, P.udp4("10.0.3.5"), *denied(1))
        check(t, P.udp4("172.16.0.200"), *denied(1))
        check(t, P.udp6("2001:db8::1"), *denied(1))
        assert agree(t, model_of(f), [P.udp4(f"10.0.{i}.{j}") for i in range(4) for j in range(8)]) > 0


def test_bulk_set_add_uses_batches(flt: Any, tester: Any) -> None:
    nets = [f"10.{i >> 8}.{i & 255}.0/24" for i in range(20000)]
    t0 = time.monotonic()
    assert flt.set_add("bulk", nets).added == 20000
    res = flt.set_add("bulk", nets[:300], ttl=3600)  # re-adding refreshes and keeps the count right
    assert (res.added, res.refreshed) == (0, 300)
    assert time.monotonic() - t0 < 20
    assert [(s.n4, s.n6) for s in flt.sets()] == [(20000, 0)]
    assert len(in_hash(flt, "bulk", 4)) == 20000
    flt.deny("from @bulk")
    check(tester, P.udp4("10.77.32.9"), *denied(1))
    check(tester, P.udp4("10.78.32.9"), *PASS_POLICY)  # 10.78.32 is entry 20000: not added
    check(tester, P.udp4("11.0.0.1"), *PASS_POLICY)
    raw = flt.state.map("counts").lookup(L.U32.pack(set_info(flt, "bulk")[0]))
    assert raw is not None and struct.unpack_from("=Q", raw, 24 * 8)[0] == 20000


def test_sweeper_frees_an_early_expiry_despite_a_later_ttl(flt: Any, tester: Any) -> None:
    """An element with a 1 s TTL, then another with 60 s: the first is gone
    from kernel memory (and from the set's counts) about a second later, not
    after the second one's 60 s."""
    flt.set_add("s", ["192.0.2.0/24"], ttl=1)
    flt.set_add("s", ["198.51.100.0/24"], ttl=60)
    flt.deny("from @s")
    early = parse_prefix("192.0.2.0/24")
    deadline = time.monotonic() + 3.5
    while early in in_hash(flt, "s", 4) and time.monotonic() < deadline:
        time.sleep(0.1)
    check(tester, P.udp4("192.0.2.1"), *PASS_POLICY)
    check(tester, P.udp4("198.51.100.1"), *denied(1))
    assert in_hash(flt, "s", 4) == {parse_prefix("198.51.100.0/24")}
    assert [(s.n4, s.n6) for s in flt.sets()] == [(1, 0)]


def test_trie_guard_spares_non_members_and_never_hides_members(flt: Any, tester: Any) -> None:
    """A set whose rare lengths sit in the trie (1,100 /24s are hashed; the
    others hold under 1/16 of the elements) has a guard with one bit per
    first-16-bits of an address, set for the ranges its trie elements cover
    (a /9 sets 128 of them), so a non-member in an uncovered /16 skips the
    trie. Members under every trie length still match, also after elements
    are removed (bits are cleared only on a rebuild)."""
    many = [f"10.{i}.{j}.0/24" for i in range(5) for j in range(220)]
    rare = ["172.16.0.0/12", "100.64.0.0/10", "198.18.0.0/15", "192.0.2.0/28", "203.0.113.64/26",
            "100.0.0.0/9", "2001:db8:7::/48", "2001:db8:8:1::/64", "2001:db8:9::/56", "2001:db8:a::/60",
            "2001:db8:b::/52"]
    flt.set_add("g", many + rare)
    flt.add_rule("deny from @g")
    assert hashed(flt, "g", 4) == {24}
    assert {str(p) for p in in_trie(flt, "g", 4)} == {r for r in rare if ":" not in r}
    sid = flt.sets()[0].id

    def bit(fam: int, hi: int) -> bool:
        raw = flt.state.map("tguard")[L.U32.pack(sid * 2 + (fam == 6))]
        return bool(raw[hi >> 3] >> (hi & 7) & 1)

    for addr, hi in (("172.31.255.1", 0xAC1F), ("100.127.0.1", 0x647F), ("198.19.4.4", 0xC613),
                     ("192.0.2.15", 0xC000), ("203.0.113.100", 0xCB00), ("100.1.2.3", 0x6401)):
        assert bit(4, hi), addr
        check(tester, P.udp4(addr), *denied(1))
    for addr, hi in (("192.0.3.1", 0xC000), ("203.0.114.1", 0xCB00)):  # covered /16, not a member
        assert bit(4, hi)
        check(tester, P.udp4(addr), Verdict.PASS, Reason.POLICY)
    for addr, hi in (("8.8.8.8", 0x0808), ("100.128.0.1", 0x6480), ("172.32.0.1", 0xAC20)):  # uncovered
        assert not bit(4, hi), addr
        check(tester, P.udp4(addr), Verdict.PASS, Reason.POLICY)
    check(tester, P.udp4("10.3.7.7"), *denied(1))  # the hashed /24s are not behind the guard
    assert not bit(4, 0x0A03)
    if in_trie(flt, "g", 6):
        assert bit(6, 0x2001) and not bit(6, 0xFD00)
    check(tester, P.udp6("2001:db8:7::9"), *denied(1))
    check(tester, P.udp6("2001:db8:8:1::1"), *denied(1))
    check(tester, P.udp6("2001:db8:c::1"), Verdict.PASS, Reason.POLICY)
    flt.set_remove("g", ["172.16.0.0/12"])
    check(tester, P.udp4("172.31.255.1"), Verdict.PASS, Reason.POLICY)
    check(tester, P.udp4("100.127.0.1"), *denied(1))
