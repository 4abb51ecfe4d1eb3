"""The kernel program against the plain-Python reference model (model.py).

Hypothesis writes firewalls as users type them (``deny from X``, ``allow
22/tcp``, ``deny 53``, ``allow proto tcp from X to any port P``, ranges,
lists, ``@SET`` on either side) together with what each command means to the
model, fills sets with IPv4 and IPv6 prefixes of many lengths (some with
timeouts, some already expired), installs it all in one switch, changes a
set or two the way ``set add``/``set remove`` do, and then runs many random,
targeted and mutated packets: every verdict, reason and deciding rule number
must be the model's.

A config switch within 5 s of the previous one waits an RCU grace period, so
each example makes one switch (``apply``) and runs many packets."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from socket import AF_INET, AF_INET6, inet_ntop, inet_pton
from typing import Any

import pytest
from helpers import packets as P
from helpers.env import RUN, needs_root
from helpers.model import ACK, FIN, PROTO_NUMBERS, RST, SYN, Firewall, MRule, Side, decide, live, outbound
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pyxdp import Action, Element, RuleSetSpec, Verdict
from pyxdp import layout as L
from pyxdp.model import fastpath
from pyxdp.model.prefix import Prefix
from pyxdp.model.rules import parse_rule_words
from pyxdp.store import sets as S
from pyxdp.store.clock import monotonic_ns

pytestmark = needs_root

RULE_EXAMPLES = int(os.environ.get("PYXDP_RULE_EXAMPLES", "150"))
PACKET_EXAMPLES = int(os.environ.get("PYXDP_MODEL_EXAMPLES", "100"))
SETS = ("a", "b", "c")
TTL = 3600  # elements with a timeout outlive the example; "expired" ones are aged in the map
ENDS = [0, 22, 53, 80, 443, 1000, 2000, 8080, 65535]  # rule port range ends
PORTS = ENDS + [1, 21, 23, 52, 54, 999, 1001, 1999, 2001, 8079, 8081, 40000, 65534]  # and their neighbours
V4_BASES = [0x0A000000, 0x0A000100, 0x0A010000, 0x0A800000, 0xC0000200, 0xC6336400, 0xCB007100]
V6_BASES = [0x20010DB8 << 96, (0x20010DB8 << 96) | 1 << 64, (0x20010DB8 << 96) | 1 << 80,
            (0x20010DB8 << 96) | 0x8000 << 80, 0xFD << 120, 0xFE80 << 112]
V4_LENS = [0, 1, 7, 8, 12, 15, 16, 20, 23, 24, 25, 28, 30, 31, 32]
V6_LENS = [0, 1, 16, 32, 33, 48, 56, 63, 64, 80, 96, 120, 127, 128]
MAXLEN = {4: 32, 6: 128}


FAST = L.Shape.BAN_FIRST | L.Shape.PORT_RULES  # the fast program: right on any rule set (model/fastpath.py)


@pytest.fixture(scope="module")
def bench() -> Iterator[tuple[Any, Any, Any]]:
    """The state, a tester of the general program and one of the program
    with the fast paths: every packet runs through both."""
    from pyxdp import Filter

    path = f"/sys/fs/bpf/pyxdp-t{RUN}-model"
    try:
        with Filter.open(path, create=True) as flt, flt.tester() as tester, flt.tester(FAST) as fast:
            yield flt, tester, fast
    finally:
        shutil.rmtree(path, ignore_errors=True)


# ---- addresses -------------------------------------------------------------------------


def _text(fam: int, value: int) -> str:
    return inet_ntop(AF_INET if fam == 4 else AF_INET6, value.to_bytes(MAXLEN[fam] // 8, "big"))


def _prefix(fam: int, value: int, plen: int) -> Prefix:
    bits = MAXLEN[fam]
    value &= ((1 << bits) - 1) ^ ((1 << (bits - plen)) - 1)
    return Prefix(fam, value.to_bytes(bits // 8, "big"), plen)


def pool_addr(draw: Any, fam: int) -> int:
    """An address near one of a few bases, so that prefixes and packets meet."""
    base = draw(st.sampled_from(V4_BASES if fam == 4 else V6_BASES))
    low = draw(st.sampled_from([0, 1, 2, 3, 7, 64, 128, 255, 256, 257, 4096, 65535]))
    return base | low


def near(draw: Any, p: Prefix) -> int:
    """An address inside ``p``, at its edges, or just outside it (the last
    network bit flipped)."""
    bits = MAXLEN[p.family]
    host = bits - p.plen
    value = int.from_bytes(p.addr, "big")
    how = draw(st.sampled_from(["in", "first", "last", "out", "out"]))
    if how == "first":
        return value
    if how == "last":
        return value | ((1 << host) - 1)
    rest = draw(st.integers(0, (1 << host) - 1)) if host else 0
    if how == "out" and p.plen:
        value ^= 1 << host
    return value | rest


@dataclass
class Scenario:
    """A firewall as commands (what the user types) and as the model reads
    them; set elements to age after installing; set changes made after."""

    texts: list[str] = field(default_factory=list)
    rules: list[MRule] = field(default_factory=list)
    sets: dict[str, dict[Prefix, str]] = field(default_factory=dict)  # prefix -> "perm" | "ttl" | "expired"
    policy: Verdict = Verdict.PASS
    via: str = "apply"  # or "commands": set flush/add, then the rule list and the policy as two switches
    adds: list[tuple[str, list[Prefix], int | None]] = field(default_factory=list)  # after the apply
    removes: list[tuple[str, list[Prefix]]] = field(default_factory=list)
    packets: list[bytes] = field(default_factory=list)

    def anchors(self) -> list[Prefix]:
        """The prefixes of the rules and sets: packets are aimed at and around them."""
        out = [s.prefix for r in self.rules for s in (r.src, r.dst) if s.prefix is not None]
        out += [p for els in self.sets.values() for p in els]
        return out

    def describe(self) -> str:
        lines = [f"policy {self.policy.label} (via {self.via})"] + [f"{i + 1}: {t}" for i, t in enumerate(self.texts)]
        for name, els in self.sets.items():
            lines.append(f"@{name}: " + ", ".join(f"{p}{'' if how == 'perm' else ' ' + how}" for p, how in els.items()))
        lines += [f"then set add {n} {' '.join(map(str, ps))} ttl {t}" for n, ps, t in self.adds]
        lines += [f"then set remove {n} {' '.join(map(str, ps))}" for n, ps in self.removes]
        return "\n".join(lines)


def draw_prefix(draw: Any, fam: int) -> Prefix:
    plen = draw(st.sampled_from(V4_LENS if fam == 4 else V6_LENS))
    return _prefix(fam, pool_addr(draw, fam), plen)


def draw_set(draw: Any) -> dict[Prefix, str]:
    els: dict[Prefix, str] = {}
    for _ in range(draw(st.sampled_from([0, 1, 3, 6, 9, 12]))):
        p = draw_prefix(draw, draw(st.sampled_from([4, 4, 6])))
        els[p] = draw(st.sampled_from(["perm", "perm", "perm", "ttl", "expired"]))
    return els


# ---- rules as users type them ------------------------------------------------------------


def draw_ports(draw: Any) -> tuple[tuple[int, int], ...]:
    parts = []
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 3]))):
        lo = draw(st.sampled_from(ENDS))
        hi = lo if draw(st.booleans()) else draw(st.sampled_from([p for p in ENDS if p >= lo]))
        parts.append((lo, hi))
    return tuple(parts)


def ports_text(ports: tuple[tuple[int, int], ...]) -> str:
    """``80,443,1000:2000``; a single even port is written as a range of one (``22:22``)."""
    return ",".join(str(lo) if lo == hi and lo % 2 else f"{lo}:{hi}" for lo, hi in ports)


def draw_rule(draw: Any, names: list[str]) -> tuple[str, MRule]:
    """One command's words and what it means."""
    action = draw(st.sampled_from([Action.ALLOW, Action.DENY]))
    verb = action.name.lower()
    if draw(st.integers(0, 4)) == 0:  # ufw's short form: PORT[/tcp|udp]
        proto = draw(st.sampled_from([None, "tcp", "udp"]))
        if proto:  # a list or range needs the protocol
            ports = draw_ports(draw)
            return f"{verb} {ports_text(ports)}/{proto}", MRule(action, PROTO_NUMBERS[proto], dport=ports)
        port = draw(st.sampled_from(ENDS))  # 'deny 22': tcp and udp
        return f"{verb} {port}", MRule(action, None, dport=((port, port),))
    proto = draw(st.sampled_from([None, None, None, "any", "tcp", "udp", "icmp", "icmpv6"]))
    fam = 6 if proto == "icmpv6" else 4 if proto == "icmp" else draw(st.sampled_from([4, 6]))
    with_ports = proto in (None, "any", "tcp", "udp")
    words: dict[str, str] = {}
    sides: dict[str, Side] = {}
    ports: dict[str, tuple[tuple[int, int], ...] | None] = {}
    for d in ("from", "to"):
        kind = draw(st.sampled_from(["none", "none", "any", "prefix", "prefix", "set", "set"]))
        port = draw_ports(draw) if with_ports and draw(st.integers(0, 3 if d == "from" else 1)) == 0 else None
        if kind == "set" and not names:
            kind = "any"
        side = Side()
        if kind == "prefix":
            side = Side(prefix=draw_prefix(draw, fam))
            plen, maxlen = side.prefix.plen, MAXLEN[fam]
            addr = str(side.prefix).split("/")[0] if plen == maxlen and draw(st.booleans()) else str(side.prefix)
        elif kind == "set":
            side = Side(set=draw(st.sampled_from(names)))
            addr = f"@{side.set}"
        else:
            addr = "any"
        sides[d], ports[d] = side, port
        if kind != "none" or port:
            words[d] = f"{d} {addr}" + (f" port {ports_text(port)}" if port else "")
    parts = [verb]
    if draw(st.integers(0, 4)) == 0:
        parts.append("in")
    iface = "pxnope0" if draw(st.integers(0, 15)) == 0 else None
    if iface and draw(st.booleans()):
        parts.append(f"on {iface}")
    proto_last = draw(st.booleans())
    if proto and not proto_last:
        parts.append(f"proto {proto}")
    parts += [words[d] for d in ("from", "to") if d in words]
    if proto and proto_last:
        parts.append(f"proto {proto}")
    if iface and f"on {iface}" not in parts:
        parts.append(f"on {iface}")
    rule = MRule(action, PROTO_NUMBERS.get(proto or "any"), sides["from"], ports["from"], sides["to"], ports["to"],
                 iface)
    return " ".join(parts), rule


def filler_rule(i: int) -> tuple[str, MRule]:
    """Rule ``i`` of a block that moves the drawn rules to later vector
    words: TCP from one small prefix to one port, some of which packets meet."""
    fam = 6 if i % 3 == 0 else 4
    bases = V4_BASES if fam == 4 else V6_BASES
    prefix = _prefix(fam, bases[i % len(bases)] | (i * 37) % 256, MAXLEN[fam] - 4 * (i % 3))
    port = PORTS[i % len(PORTS)]
    action = Action.DENY if i % 2 else Action.ALLOW
    return (f"{action.name.lower()} proto tcp from {prefix} to any port {port}",
            MRule(action, 6, Side(prefix=prefix), None, Side(), ((port, port),)))


# ---- packets ----------------------------------------------------------------------------------


def l4(draw: Any, proto: int) -> bytes:
    dport = draw(st.sampled_from(PORTS))
    sport = draw(st.one_of(st.sampled_from(PORTS), st.integers(0, 65535)))
    if proto == P.TCP:
        return P.tcp(sport, dport)
    if proto == P.UDP:
        return P.udp(sport, dport)
    if proto in (P.ICMP, P.ICMPV6):
        return P.icmp(draw(st.sampled_from([0, 8, 128, 133, 134, 135, 136, 137, 200])), draw(st.sampled_from([0, 22])))
    return draw(st.binary(max_size=8))


def flow(draw: Any, src: int, dst: int, fam: int) -> bytes:
    """A well-formed packet between two addresses; sometimes a fragment,
    sometimes behind VLAN tags, sometimes neighbour discovery."""
    proto = draw(st.sampled_from([P.TCP, P.TCP, P.UDP, P.UDP, P.ICMP, P.ICMPV6, 47]))
    tags = ((P.VLAN_Q, 5),) * draw(st.sampled_from([0, 0, 0, 1, 2]))
    frag = draw(st.sampled_from(["", "", "", "", "first", "later"]))
    if fam == 4:
        ip = P.ipv4(_text(4, src), _text(4, dst), proto, l4(draw, proto), frag_off=185 if frag == "later" else 0,
                    more_frags=frag == "first")
        return P.eth(P.ETH_IP, ip, tags)
    body = l4(draw, proto)
    nxt = proto
    if frag:
        body = P.ext_frag(proto, 3 if frag == "later" else 0, more=frag == "first") + body
        nxt = P.FRAGMENT
    hop = 255 if draw(st.integers(0, 3)) == 0 else 64
    return P.eth(P.ETH_IPV6, P.ipv6(_text(6, src), _text(6, dst), nxt, body, hop=hop), tags)


def addr_for(draw: Any, fam: int, anchors: list[Prefix]) -> int:
    mine = [p for p in anchors if p.family == fam]
    if mine and draw(st.integers(0, 2)):
        return near(draw, draw(st.sampled_from(mine)))
    return pool_addr(draw, fam)


def frame(draw: Any, anchors: list[Prefix]) -> bytes:
    """Any frame: ARP, non-IP, IPv4 with options, IPv6 with extension headers
    (too many, cut short), truncated, with bytes overwritten."""
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
        ip = P.ipv4(_text(4, addr_for(draw, 4, anchors)), _text(4, addr_for(draw, 4, anchors)), proto,
                    l4(draw, proto), options=opts, frag_off=frag, more_frags=draw(st.booleans()))
        pkt = P.eth(P.ETH_IP, ip, tags)
    else:
        proto = draw(st.sampled_from([P.TCP, P.UDP, P.ICMPV6, P.ICMP, P.NONXT]))
        chain = [draw(st.sampled_from([P.HOPOPTS, P.ROUTING, P.DSTOPTS, P.AH, P.FRAGMENT]))
                 for _ in range(draw(st.sampled_from([0, 0, 1, 2, 3, 8, 9])))]
        body = l4(draw, proto)
        nxt = proto
        for t in reversed(chain):
            if t == P.FRAGMENT:
                hdr = P.ext_frag(nxt, draw(st.sampled_from([0, 0, 3])), more=draw(st.booleans()))
            elif t == P.AH:
                hdr = P.ext_ah(nxt, draw(st.integers(1, 4)))
            else:
                hdr = P.ext_opts(nxt, draw(st.sampled_from([0, 1, 2, 2, 130])))
            body = hdr + body
            nxt = t
        hop = draw(st.sampled_from([64, 255]))
        pkt = P.eth(P.ETH_IPV6, P.ipv6(_text(6, addr_for(draw, 6, anchors)), _text(6, addr_for(draw, 6, anchors)),
                                       nxt, body, hop=hop), tags)
    if draw(st.integers(0, 4)) == 0:  # truncate
        pkt = pkt[: draw(st.integers(14, max(14, len(pkt))))]
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):  # overwrite bytes
        if len(pkt) > 14:
            i = draw(st.integers(12, len(pkt) - 1))
            pkt = pkt[:i] + bytes([draw(st.integers(0, 255))]) + pkt[i + 1 :]
    return pkt


def targeted(draw: Any, anchors: list[Prefix]) -> bytes:
    fam = draw(st.sampled_from([4, 6]))
    return flow(draw, addr_for(draw, fam, anchors), addr_for(draw, fam, anchors), fam)


# ---- scenarios --------------------------------------------------------------------------------


@st.composite
def rule_scenarios(draw: Any) -> Scenario:
    """Up to 20 rules over sets and prefixes in a small address space (so
    that rules overlap and shadow each other), then packets aimed at them."""
    sc = Scenario(policy=draw(st.sampled_from([Verdict.PASS, Verdict.DROP])))
    names = [n for n in SETS if draw(st.integers(0, 3))]
    sc.sets = {n: draw_set(draw) for n in names}
    for _ in range(draw(st.integers(0, 20))):
        text, rule = draw_rule(draw, names)
        sc.texts.append(text)
        sc.rules.append(rule)
    if names and draw(st.integers(0, 2)) == 0:  # the fast paths' forms: a ban list first, port-only rules
        if draw(st.booleans()):
            keep = [(t, r) for t, r in zip(sc.texts, sc.rules)
                    if r.src == Side() and r.dst == Side() and not r.sport and not r.iface]
            sc.texts, sc.rules = [t for t, _r in keep], [r for _t, r in keep]
        sc.texts.insert(0, f"deny from @{names[0]}")
        sc.rules.insert(0, MRule(Action.DENY, None, Side(set=names[0])))
    anchors = sc.anchors()
    if draw(st.integers(0, 3)) == 0:  # enough rules to fill one or two 64-bit words of the vectors
        at = draw(st.sampled_from([0, 0, len(sc.rules) // 2, len(sc.rules)]))
        filler = [filler_rule(i) for i in range(draw(st.sampled_from([60, 64, 70, 130])))]
        sc.texts[at:at] = [t for t, _r in filler]
        sc.rules[at:at] = [r for _t, r in filler]
        anchors += [r.src.prefix for _t, r in filler[::16] if r.src.prefix]
    sc.via = draw(st.sampled_from(["apply", "apply", "apply", "commands"]))
    if names and draw(st.booleans()):  # then change sets the way 'set add' and 'set remove' do
        for _ in range(draw(st.integers(1, 2))):
            name = draw(st.sampled_from(names))
            fam = draw(st.sampled_from([4, 6]))
            sc.adds.append((name, [draw_prefix(draw, fam) for _ in range(draw(st.integers(1, 6)))],
                            draw(st.sampled_from([None, TTL]))))
        name = draw(st.sampled_from(names))
        if sc.sets[name] and draw(st.booleans()):
            victims = draw(st.lists(st.sampled_from(sorted(sc.sets[name])), min_size=1, max_size=4, unique=True))
            sc.removes.append((name, victims))
    anchors += [p for _n, ps, _t in sc.adds for p in ps]
    n = draw(st.integers(20, 60))
    sc.packets = [targeted(draw, anchors) if draw(st.integers(0, 3)) else frame(draw, anchors) for _ in range(n)]
    return sc


@st.composite
def packet_scenarios(draw: Any) -> Scenario:
    """A few everyday rules and many random and mutated frames: the parser."""
    sc = Scenario(policy=draw(st.sampled_from([Verdict.PASS, Verdict.DROP])))
    sc.sets = {"a": draw_set(draw)}
    for _ in range(draw(st.integers(0, 5))):
        text, rule = draw_rule(draw, ["a"])
        sc.texts.append(text)
        sc.rules.append(rule)
    anchors = sc.anchors()
    sc.packets = [frame(draw, anchors) for _ in range(draw(st.integers(20, 50)))]
    return sc


# ---- installing and checking --------------------------------------------------------------------


def age(flt: Any, name: str, p: Prefix) -> int:
    """Write an element's expiry one second into the past (as if its TTL
    had run out); returns that expiry."""
    sid = S.lookup_name(flt.state, name)
    key = (L.RKEY4 if p.family == 4 else L.RKEY6).pack(32 + p.plen, sid, p.addr)
    m = flt.state.map(f"elem{p.family}")
    raw = m.lookup(key)
    assert raw is not None, f"{p} of @{name} is not in the map"
    _exp, hits, born, until = L.ELEM.unpack(raw)
    exp = monotonic_ns() - 10**9
    m.update(key, L.ELEM.pack(exp, hits, born, until))
    return exp


def install(flt: Any, sc: Scenario) -> Firewall:
    """Put the scenario in place (one switch, then set changes) and return
    the model of it."""
    rules = tuple(parse_rule_words(t.split()) for t in sc.texts)
    now = monotonic_ns()
    if sc.via == "apply":
        sets = {n: [Element(p, TTL if how != "perm" else None) for p, how in els.items()]
                for n, els in sc.sets.items()}
        flt.apply(RuleSetSpec(rules, sets, sc.policy))
    else:
        have = {s.name for s in flt.sets()}
        for name, els in sc.sets.items():
            if name in have:
                flt.set_flush(name)
            flt.set_add(name, [p for p, how in els.items() if how == "perm"])
            flt.set_add(name, [p for p, how in els.items() if how != "perm"], ttl=TTL)
        flt.replace_rules(rules)
        flt.set_policy(sc.policy)
    fw = Firewall(list(sc.rules), {n: {p: None if how == "perm" else now + TTL * 10**9 for p, how in els.items()}
                                   for n, els in sc.sets.items()}, sc.policy)
    for name, els in sc.sets.items():
        for p, how in els.items():
            if how == "expired":
                fw.sets[name][p] = age(flt, name, p)
    for name, ps, ttl in sc.adds:  # re-adding refreshes, an expired element too
        now = monotonic_ns()
        flt.set_add(name, ps, ttl=ttl)
        for p in ps:
            fw.sets[name][p] = now + ttl * 10**9 if ttl else None
    for name, ps in sc.removes:
        flt.set_remove(name, ps, missing_ok=True)
        for p in ps:
            fw.sets[name].pop(p, None)
    return fw


def run_scenario(flt: Any, tester: Any, fast: Any, sc: Scenario) -> None:
    tester.forget_flows()
    fast.forget_flows()
    fw = install(flt, sc)
    now = monotonic_ns()
    for name in fw.sets:
        assert sorted(e.prefix for e in flt.set_members(name)) == sorted(live(fw, name, now)), sc.describe()
    for name in fw.sets:  # what --hypothesis-show-statistics reports
        sid = S.lookup_name(flt.state, name)
        si = S.info(flt.state, sid)
        if si.trie4 or si.trie6:
            event("a set uses the trie")
    forms = fastpath.rule_forms([parse_rule_words(t.split()) for t in sc.texts])
    if forms & L.RuleField.BAN_FIRST:
        event("the rules start with a ban list (fast path)")
    if forms & L.RuleField.PORT_RULES and sc.rules:
        event("port-only rules (fast path)")
    for pkt in sc.packets:
        r, rf = tester.run(pkt), fast.run(pkt)
        got = (r.verdict, r.reason, r.event.rule if r.event else 0)
        want = decide(pkt, fw, monotonic_ns())
        assert got == tuple(want), f"packet {pkt.hex()}\n{sc.describe()}"
        assert (rf.verdict, rf.reason, rf.event.rule if rf.event else 0) == got, \
            f"fast program, packet {pkt.hex()}\n{sc.describe()}"
        event(f"some packet: {want.reason.label}")
        if want.rule > 64:
            event(f"some packet decided by a rule past 64 (via {sc.via})")
        if want.rule and (fw.rules[want.rule - 1].src.set or fw.rules[want.rule - 1].dst.set):
            event("some packet decided by a rule naming a set")
        if decide(pkt, fw, 0) != want:
            event("some packet decided otherwise were the expired elements live")


SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large]


@pytest.mark.long(45)
@settings(max_examples=RULE_EXAMPLES, deadline=None, suppress_health_check=SLOW_OK)
@given(sc=rule_scenarios())
def test_rules_match_model(bench: tuple[Any, Any, Any], sc: Scenario) -> None:
    """Ordered rules over prefixes, sets and ports: the kernel's bit-vector
    classification gives the verdict, the reason and the rule number that a
    first-match linear scan gives."""
    run_scenario(*bench, sc)


@pytest.mark.long(20)
@settings(max_examples=PACKET_EXAMPLES, deadline=None, suppress_health_check=SLOW_OK)
@given(sc=packet_scenarios())
def test_packets_match_model(bench: tuple[Any, Any, Any], sc: Scenario) -> None:
    """Random, truncated and mutated frames: the parser's verdicts."""
    run_scenario(*bench, sc)


# ---- connection state -------------------------------------------------------------------------

HOST = {4: "10.0.0.2", 6: "2001:db8::2"}
REMOTES = {4: ["10.0.0.1", "192.0.2.7", "10.0.0.3"], 6: ["2001:db8::1", "2001:db8:1::7", "2001:db8::3"]}
CT_PORTS = [22, 53, 80, 123, 40000, 40001]
TCP_OUT = [SYN, SYN, SYN | ACK, ACK, ACK, ACK | 0x08, FIN | ACK, RST, RST | ACK]
TCP_IN = [SYN, SYN, SYN | ACK, ACK, ACK | 0x08, FIN | ACK, RST, RST | ACK, 0]
ISNS = [0, 1000, 0xFFFFFFFF]  # the host's SEQ; an answer acknowledges ISN + 1 (mod 2**32)
ACKS = [1, 1001, 0, 1002, 999]  # every right ack, and wrong ones


@dataclass(frozen=True)
class FlowSpec:
    """One conversation: the host's end and the remote end (ICMP: port is the echo id)."""

    fam: int
    proto: int  # 6, 17, or 1 for ICMP echo (ICMPv6 in IPv6)
    hport: int
    remote: str
    rport: int


def _ip(fam: int, src: str, dst: str, proto: int, l4: bytes, frag: int = 0) -> bytes:
    return P.ipv4(src, dst, proto, l4, frag_off=frag) if fam == 4 else P.ipv6(src, dst, proto, l4)


def _l4(f: FlowSpec, outgoing: bool, flags: int, seq: int = 0, ack: int = 0) -> tuple[int, bytes]:
    """(IP protocol, L4 bytes) of a packet of ``f`` in one direction."""
    sport, dport = (f.hport, f.rport) if outgoing else (f.rport, f.hport)
    if f.proto == P.TCP:
        return P.TCP, P.tcp(sport, dport, flags=flags, seq=seq, ack=ack)
    if f.proto == P.UDP:
        return P.UDP, P.udp(sport, dport, b"q")
    proto = P.ICMP if f.fam == 4 else P.ICMPV6
    req, rep = (8, 0) if f.fam == 4 else (128, 129)
    return proto, P.icmp(req if outgoing else rep, 0, f.hport.to_bytes(2, "big") + b"\0\1")


@st.composite
def conn_scenarios(draw: Any) -> tuple[Verdict, bool, list[str], list[tuple[str, bytes]]]:
    """Flows the host opens and moves on (egress), and what arrives: their
    replies, replies with one field off, ICMP errors quoting what the host
    sent (or with the quote or its source off), echo replies, and noise."""
    policy = draw(st.sampled_from([Verdict.DROP, Verdict.DROP, Verdict.PASS]))
    on = draw(st.integers(0, 5)) > 0
    rules = draw(st.sampled_from([[], [], ["allow 22/tcp"], ["deny from 10.0.0.1", "allow 53/udp"],
                                  ["deny from @ban", "allow 53/udp"], ["deny from @ban"]]))
    specs: list[FlowSpec] = []
    for _ in range(draw(st.integers(1, 4))):
        fam = draw(st.sampled_from([4, 6]))
        specs.append(FlowSpec(fam, draw(st.sampled_from([P.TCP, P.TCP, P.UDP, P.ICMP])),
                              draw(st.sampled_from(CT_PORTS)), draw(st.sampled_from(REMOTES[fam])),
                              draw(st.sampled_from(CT_PORTS))))
    events: list[tuple[str, bytes]] = []
    sent: list[tuple[FlowSpec, bytes]] = []  # (flow, IP packet the host sent)
    opened: set[FlowSpec] = set()
    for _ in range(draw(st.integers(10, 40))):
        f = draw(st.sampled_from(specs))
        tags = ((P.VLAN_Q, 7),) if draw(st.integers(0, 5)) == 0 else ()
        kind = draw(st.sampled_from(["out", "out", "out", "reply", "reply", "reply", "off", "error", "error",
                                     "noise"]))
        if kind == "out":
            first = f not in opened and draw(st.integers(0, 3)) > 0  # usually a SYN opens it
            opened.add(f)
            proto, l4 = _l4(f, True, SYN if first else draw(st.sampled_from(TCP_OUT)), draw(st.sampled_from(ISNS)))
            frag = draw(st.sampled_from([0, 0, 0, 0x2000, 185]))
            if f.fam == 6 and draw(st.integers(0, 6)) == 0:  # an extension header: not tracked
                ip = P.ipv6(HOST[6], f.remote, 60, P.ext_opts(proto) + l4)
            else:
                ip = _ip(f.fam, HOST[f.fam], f.remote, proto, l4, frag if f.fam == 4 else 0)
            sent.append((f, ip))
            events.append(("out", P.eth(P.ETH_IP if f.fam == 4 else P.ETH_IPV6, ip, tags)))
            continue
        g = f
        if kind == "off":  # one field of the reply is not the flow's
            what = draw(st.sampled_from(["hport", "rport", "remote", "host"]))
            if what == "hport":
                g = FlowSpec(f.fam, f.proto, f.hport + 1, f.remote, f.rport)
            elif what == "rport":
                g = FlowSpec(f.fam, f.proto, f.hport, f.remote, f.rport ^ 1)
            elif what == "remote":
                g = FlowSpec(f.fam, f.proto, f.hport, draw(st.sampled_from(REMOTES[f.fam])), f.rport)
        host = HOST[f.fam] if not (kind == "off" and g == f) else ("10.0.0.9" if f.fam == 4 else "2001:db8::9")
        if kind in ("reply", "off"):
            proto, l4 = _l4(g, False, draw(st.sampled_from(TCP_IN)), ack=draw(st.sampled_from(ACKS)))
            ip = _ip(g.fam, g.remote, host, proto, l4)
        elif kind == "error":
            quoted = [ip for h, ip in sent if h.fam == f.fam] or [_ip(f.fam, HOST[f.fam], f.remote, *_l4(f, True, SYN))]
            inner = draw(st.sampled_from(quoted))
            inner = inner[: draw(st.sampled_from([len(inner), len(inner), 28, 44, 48, 20]))]
            if draw(st.integers(0, 5)) == 0:  # the quote's source is not the host
                at = 12 if f.fam == 4 else 8
                inner = inner[:at] + bytes([inner[at] ^ 1]) + inner[at + 1 :]
            typ = draw(st.sampled_from([3, 11, 12, 5, 0] if f.fam == 4 else [1, 2, 3, 4, 129, 135]))
            router = draw(st.sampled_from(REMOTES[f.fam]))
            icmp = P.icmp(typ, draw(st.sampled_from([0, 3, 4])), b"\0\0\x05\xdc" + inner)
            to = HOST[f.fam] if draw(st.integers(0, 2)) else REMOTES[f.fam][2]  # sometimes not to the quote's source
            ip = _ip(f.fam, router, to, P.ICMP if f.fam == 4 else P.ICMPV6, icmp)
        else:
            events.append(("in", frame(draw, [])))
            continue
        events.append(("in", P.eth(P.ETH_IP if f.fam == 4 else P.ETH_IPV6, ip, tags)))
    return policy, on, rules, events


def model_flows(fw: Firewall) -> list[Any]:
    """The model's live flows as the tester lists its own."""
    from pyxdp.store.flows import decode

    now = monotonic_ns()
    out = []
    for (fam, proto, raddr, rport, laddr, lport), (state, expires, _syn_ack) in fw.flows.items():
        key = (L.FLOW_KEY4.pack(fam, proto, rport, lport, 0, raddr[:4], laddr[:4]) if fam == 4
               else L.FLOW_KEY.pack(fam, proto, rport, lport, 0, raddr, laddr))
        f = decode(key, L.FLOW.pack(expires, state, 0), now)
        if f is not None:
            out.append(f._replace(expires_in=0.0))
    return sorted(out)


@pytest.mark.long(12)
@settings(max_examples=PACKET_EXAMPLES, deadline=None, suppress_health_check=SLOW_OK)
@given(sc=conn_scenarios())
def test_connection_state_matches_model(bench: tuple[Any, Any, Any], sc: Any) -> None:
    """What the host sends (through the egress program) and what arrives:
    replies pass as established, ICMP errors about the host's flows as
    related, forged replies (a port, an address or the quote off) and
    unsolicited packets go through the rules, as the model says (a ban
    list of remote hosts first: a reply of a flow the host opened to one
    still passes, in the fast program too)."""
    flt, tester, fast = bench
    policy, on, texts, events = sc
    tester.forget_flows()
    fast.forget_flows()
    rules = tuple(parse_rule_words(t.split()) for t in texts)
    ban = [Prefix(4, inet_pton(AF_INET, REMOTES[4][0]), 32), Prefix(6, inet_pton(AF_INET6, REMOTES[6][0]), 128)]
    sets = {"ban": ban} if any("@ban" in t for t in texts) else {}
    flt.apply(RuleSetSpec(rules, {n: [Element(p) for p in ps] for n, ps in sets.items()}, policy))
    flt.set_established(on)
    fw = Firewall([MRule.from_rule(r) for r in rules], {n: {p: None for p in ps} for n, ps in sets.items()}, policy,
                  established=on)
    try:
        for i, (kind, pkt) in enumerate(events):
            if kind == "out":
                tester.send(pkt)
                fast.send(pkt)
                outbound(pkt, fw, monotonic_ns())
                continue
            r, rf = tester.run(pkt), fast.run(pkt)
            want = decide(pkt, fw, monotonic_ns())
            got = (r.verdict, r.reason, r.event.rule if r.event else 0)
            story = "\n".join(f"{'>' if k == 'out' else '<'} {p.hex()}" for k, p in events[: i + 1])
            assert got == tuple(want), f"policy {policy.label}, state {'on' if on else 'off'}, rules {texts}\n{story}"
            assert (rf.verdict, rf.reason, rf.event.rule if rf.event else 0) == got, f"fast program\n{story}"
            event(f"conn: {want.reason.label}")
            assert [f._replace(expires_in=0.0) for f in tester.flows()] == model_flows(fw), story
    finally:
        flt.set_established(True)
