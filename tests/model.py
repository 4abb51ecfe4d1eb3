"""A plain-Python reference model of the filter's decision: what the README's
decision table and rule grammar say, written independently of the C code and
of pyxdp.compiler. The property tests compare it with the kernel program on
generated and mutated packets.

The firewall is one ordered rule list (the first rule that matches decides),
named sets whose elements may expire, and a policy. Rules here are the
model's own :class:`MRule` (protocol numbers, address sides, port ranges as
plain lists), so a test can say what it means independently of how
pyxdp.rules parses the words it typed."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from pyxdp.layout import Action, Reason, Verdict
from pyxdp.prefix import Prefix

if TYPE_CHECKING:
    from pyxdp.rules import Rule

MAX_VLAN = 4
MAX_EXTHDR = 8
MAX_L4_OFF = 1024
EXT = {0, 43, 44, 60, 51}
PROTO_NUMBERS = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58}  # "any": no constraint


# ---- the firewall ------------------------------------------------------------------


@dataclass(frozen=True)
class Side:
    """One side of a rule: ``any`` (both None), a prefix, or a set name."""

    prefix: Prefix | None = None
    set: str | None = None


ANYWHERE = Side()


@dataclass(frozen=True)
class MRule:
    """A rule as the model reads it. ``proto`` None: any protocol. Port
    lists are (low, high) pairs, both ends included; None: no constraint.
    ``iface``: the packets the tests send arrive on no named interface, so a
    rule naming one never matches them."""

    action: Action
    proto: int | None = None
    src: Side = ANYWHERE
    sport: tuple[tuple[int, int], ...] | None = None
    dst: Side = ANYWHERE
    dport: tuple[tuple[int, int], ...] | None = None
    iface: str | None = None

    @classmethod
    def from_rule(cls, r: Rule) -> MRule:
        """A pyxdp.rules.Rule as the model reads it (for hand-written cases)."""
        return cls(r.action, None if r.proto == "any" else PROTO_NUMBERS[r.proto], Side(r.src.prefix, r.src.set),
                   r.sport, Side(r.dst.prefix, r.dst.set), r.dport, r.iface)


@dataclass
class Firewall:
    """``sets``: name -> {prefix: absolute CLOCK_MONOTONIC expiry in ns, or
    None for a permanent element}."""

    rules: list[MRule] = field(default_factory=list)
    sets: dict[str, dict[Prefix, int | None]] = field(default_factory=dict)
    policy: Verdict = Verdict.PASS


class Decision(NamedTuple):
    verdict: Verdict
    reason: Reason
    rule: int  # 1-based number of the deciding rule, 0: none


# ---- parsing ------------------------------------------------------------------------


@dataclass
class Parsed:
    ethertype: int = 0
    family: int = 0
    src: bytes = b""
    dst: bytes = b""
    proto: int = 0
    fragment: int = 0  # 1 first, 2 later
    dport: int | None = None  # set only for TCP/UDP headers that were read
    sport: int | None = None
    nd: bool = False
    hop255: bool = False


def parse(pkt: bytes) -> Parsed | Reason:
    """The parsed headers, or the reason (malformed / too deep) a frame is dropped before any rule."""
    p = Parsed()
    if len(pkt) < 14:
        return Reason.MALFORMED
    et = struct.unpack_from("!H", pkt, 12)[0]
    off = 14
    for _ in range(MAX_VLAN):
        if et not in (0x8100, 0x88A8):
            break
        if len(pkt) < off + 4:
            return Reason.MALFORMED
        et = struct.unpack_from("!H", pkt, off + 2)[0]
        off += 4
    if et in (0x8100, 0x88A8):
        return Reason.TOO_DEEP
    p.ethertype = et
    if et == 0x0800:
        if len(pkt) < off + 20:
            return Reason.MALFORMED
        vihl = pkt[off]
        if vihl >> 4 != 4 or vihl & 15 < 5:
            return Reason.MALFORMED
        hl = (vihl & 15) * 4
        if len(pkt) < off + hl:
            return Reason.MALFORMED
        p.family = 4
        p.src = pkt[off + 12 : off + 16]
        p.dst = pkt[off + 16 : off + 20]
        p.proto = pkt[off + 9]
        frag = struct.unpack_from("!H", pkt, off + 6)[0]
        if frag & 0x1FFF:
            p.fragment = 2
        elif frag & 0x2000:
            p.fragment = 1
        return _l4(pkt, p, off + hl)
    if et == 0x86DD:
        if len(pkt) < off + 40:
            return Reason.MALFORMED
        if pkt[off] >> 4 != 6:
            return Reason.MALFORMED
        p.family = 6
        p.hop255 = pkt[off + 7] == 255
        p.src = pkt[off + 8 : off + 24]
        p.dst = pkt[off + 24 : off + 40]
        nh = pkt[off + 6]
        off += 40
        for _ in range(MAX_EXTHDR):
            if nh not in EXT:
                break
            if off > MAX_L4_OFF:
                return Reason.TOO_DEEP
            if len(pkt) < off + 8:
                return Reason.MALFORMED
            h = pkt[off : off + 8]
            if nh == 44:
                fo = (h[2] << 8) | h[3]
                if fo & 0xFFF8:
                    p.fragment = 2
                elif fo & 1:
                    p.fragment = 1
                off += 8
            elif nh == 51:
                off += (h[1] + 2) * 4
            else:
                off += (h[1] + 1) * 8
            nh = h[0]
            if p.fragment == 2:
                break
        if p.fragment != 2 and nh in EXT:
            return Reason.TOO_DEEP
        p.proto = nh
        return _l4(pkt, p, off)
    return p


def _l4(pkt: bytes, p: Parsed, off: int) -> Parsed | Reason:
    if p.fragment == 2:
        return p  # the bytes after the IP headers are payload, not a header
    if off > MAX_L4_OFF:
        return Reason.TOO_DEEP
    need = {6: 20, 17: 8, 1: 4, 58: 4}.get(p.proto)
    if need is None:
        return p
    if len(pkt) < off + need:
        return Reason.MALFORMED
    if p.proto in (6, 17):
        p.sport, p.dport = struct.unpack_from("!HH", pkt, off)
    elif p.proto == 58 and p.family == 6 and p.hop255 and 133 <= pkt[off] <= 137:
        p.nd = True
    return p


# ---- the decision --------------------------------------------------------------------


def live(fw: Firewall, name: str, now: int) -> list[Prefix]:
    """The elements of set ``name`` that count at CLOCK_MONOTONIC ``now``."""
    return [p for p, exp in fw.sets.get(name, {}).items() if exp is None or now < exp]


def _holds(prefix: Prefix, family: int, addr: bytes) -> bool:
    """Whether ``prefix`` holds ``addr``: same family, the first plen bits equal."""
    if prefix.family != family:
        return False
    bits = 8 * len(addr)
    a = int.from_bytes(addr, "big") >> (bits - prefix.plen) if prefix.plen else 0
    b = int.from_bytes(prefix.addr, "big") >> (bits - prefix.plen) if prefix.plen else 0
    return a == b


def _side(s: Side, family: int, addr: bytes, fw: Firewall, now: int) -> bool:
    if s.prefix is not None:
        return _holds(s.prefix, family, addr)
    if s.set is not None:
        return any(_holds(e, family, addr) for e in live(fw, s.set, now))
    return True  # any: both families


def _ports(ranges: tuple[tuple[int, int], ...] | None, port: int | None) -> bool:
    if ranges is None:
        return True
    return port is not None and any(lo <= port <= hi for lo, hi in ranges)


def rule_matches(r: MRule, p: Parsed, fw: Firewall, now: int) -> bool:
    """One rule against one parsed IP packet: every field the rule names must
    hold; a port needs a TCP/UDP header (a later fragment has none)."""
    if r.proto is not None and r.proto != p.proto:
        return False
    if not _side(r.src, p.family, p.src, fw, now) or not _side(r.dst, p.family, p.dst, fw, now):
        return False
    if not _ports(r.sport, p.sport) or not _ports(r.dport, p.dport):
        return False
    return r.iface is None


def decide(pkt: bytes, fw: Firewall, now: int = 0) -> Decision:
    """The verdict, reason and deciding rule the filter must give ``pkt`` at
    CLOCK_MONOTONIC ``now`` (ns; only set elements' expiry depends on it)."""
    p = parse(pkt)
    if isinstance(p, Reason):
        return Decision(Verdict.DROP, p, 0)
    if p.ethertype == 0x0806:
        return Decision(Verdict.PASS, Reason.ARP, 0)
    if p.nd:
        return Decision(Verdict.PASS, Reason.ND, 0)
    if p.family:
        for i, r in enumerate(fw.rules):
            if rule_matches(r, p, fw, now):
                if r.action is Action.ALLOW:
                    return Decision(Verdict.PASS, Reason.RULE_ALLOW, i + 1)
                return Decision(Verdict.DROP, Reason.RULE_DENY, i + 1)
    return Decision(fw.policy, Reason.FRAGMENT if p.fragment == 2 else Reason.POLICY, 0)
