"""A plain-Python reference model of the filter's decision: what the README's
decision table says, written independently of the C code. The property tests
compare it with the kernel program on generated and mutated packets."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from pyxdp.entries import MASKS4, MASKS6, Port, Prefix
from pyxdp.layout import Action, Reason, Verdict
from pyxdp.rules import RULE_PROTOS, Addr, Rule

MAX_VLAN = 4
MAX_EXTHDR = 8
MAX_L4_OFF = 1024
EXT = {0, 43, 44, 60, 51}


@dataclass
class Rules:
    prefixes: dict[Prefix, Action] = field(default_factory=dict)  # live entries only
    ports: dict[Port, Action] = field(default_factory=dict)
    policy: Verdict = Verdict.PASS
    ordered: list[Rule] = field(default_factory=list)  # rules, first match wins
    sets: dict[str, list[Prefix]] = field(default_factory=dict)

    def match(self, family: int, addr: bytes) -> tuple[Action, int] | None:
        best: tuple[Action, int] | None = None
        masks = MASKS4 if family == 4 else MASKS6
        for p, act in self.prefixes.items():
            if p.family != family:
                continue
            masked = bytes(a & m for a, m in zip(addr, masks[p.plen]))
            if masked == p.addr and (best is None or p.plen > best[1]):
                best = (act, p.plen)
        return best


@dataclass
class Parsed:
    ethertype: int = 0
    family: int = 0
    src: bytes = b""
    dst: bytes = b""
    proto: int = 0
    fragment: int = 0  # 1 first, 2 later
    dport: int | None = None
    sport: int | None = None
    nd: bool = False
    hop255: bool = False


def _parse(pkt: bytes) -> Parsed | Reason:
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
        return p
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


def decide(pkt: bytes, rules: Rules) -> tuple[Verdict, Reason]:
    """The verdict and reason the filter must give ``pkt``."""
    p = _parse(pkt)
    if isinstance(p, Reason):
        return Verdict.DROP, p
    if p.ethertype == 0x0806:
        return Verdict.PASS, Reason.ARP
    if p.family:
        m = rules.match(p.family, p.src)
        if m is not None:
            return (Verdict.PASS, Reason.SRC_ALLOW) if m[0] is Action.ALLOW else (Verdict.DROP, Reason.SRC_DENY)
    if p.dport is not None:
        act = rules.ports.get(Port("tcp" if p.proto == 6 else "udp", p.dport))
        if act is Action.ALLOW:
            return Verdict.PASS, Reason.PORT_ALLOW
        if act is Action.DENY:
            return Verdict.DROP, Reason.PORT_DENY
    if p.nd:
        return Verdict.PASS, Reason.ND
    if p.family:
        for rule in rules.ordered:
            if rule_matches(rule, p, rules.sets):
                return (Verdict.PASS, Reason.RULE_ALLOW) if rule.action is Action.ALLOW else (
                    Verdict.DROP, Reason.RULE_DENY)
    return rules.policy, Reason.FRAGMENT if p.fragment == 2 else Reason.POLICY


def first_rule(pkt: bytes, rules: Rules) -> int:
    """1-based number of the rule that decides ``pkt`` per decide(), or 0."""
    p = _parse(pkt)
    if isinstance(p, Reason) or decide(pkt, rules)[1] not in (Reason.RULE_ALLOW, Reason.RULE_DENY):
        return 0
    return next(i + 1 for i, r in enumerate(rules.ordered) if rule_matches(r, p, rules.sets))


def _holds(prefix: Prefix, family: int, addr: bytes) -> bool:
    if prefix.family != family:
        return False
    mask = (MASKS4 if family == 4 else MASKS6)[prefix.plen]
    return bytes(a & m for a, m in zip(addr, mask)) == prefix.addr


def _side(a: Addr, family: int, addr: bytes, sets: dict[str, list[Prefix]]) -> bool:
    if a.prefix is not None:
        return _holds(a.prefix, family, addr)
    if a.set is not None:
        return any(_holds(p, family, addr) for p in sets.get(a.set, ()))
    return True


def rule_matches(r: Rule, p: Parsed, sets: dict[str, list[Prefix]]) -> bool:
    """One rule against one parsed packet, as the README's rule table says:
    every field the rule names must hold; a port needs a TCP/UDP header
    (never a later fragment)."""
    if r.proto != "any" and RULE_PROTOS[r.proto] != p.proto:
        return False
    if not _side(r.src, p.family, p.src, sets) or not _side(r.dst, p.family, p.dst, sets):
        return False
    for rng, port in ((r.sport, p.sport), (r.dport, p.dport)):
        if rng is not None and (port is None or not rng[0] <= port <= rng[1]):
            return False
    return r.iface is None  # the tests' packets come from no named interface
