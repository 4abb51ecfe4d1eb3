"""A plain-Python reference model of the filter's decision: what the README's
decision table and rule grammar say, written independently of the C code and
of pyxdp.model.compiler. The property tests compare it with the kernel program on
generated and mutated packets.

The firewall is one ordered rule list (the first rule that matches decides),
named sets whose elements may expire, a policy, and the connections the
host opened (:func:`outbound` records them as the egress program must;
replies and ICMP errors about them pass before the rules). Rules here are the
model's own :class:`MRule` (protocol numbers, address sides, port ranges as
plain lists), so a test can say what it means independently of how
pyxdp.model.rules parses the words it typed."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from pyxdp.layout import Action, FlowState, Reason, Verdict
from pyxdp.model.prefix import Prefix
from pyxdp.model.timeouts import default_timeouts

if TYPE_CHECKING:
    from pyxdp.model.rules import Rule

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
        """A pyxdp.model.rules.Rule as the model reads it (for hand-written cases)."""
        return cls(r.action, None if r.proto == "any" else PROTO_NUMBERS[r.proto], Side(r.src.prefix, r.src.set),
                   r.sport, Side(r.dst.prefix, r.dst.set), r.dport, r.iface)


@dataclass
class Firewall:
    """``sets``: name -> {prefix: absolute CLOCK_MONOTONIC expiry in ns, or
    None for a permanent element}."""

    rules: list[MRule] = field(default_factory=list)
    sets: dict[str, dict[Prefix, int | None]] = field(default_factory=dict)
    policy: Verdict = Verdict.PASS
    established: bool = True
    timeouts: tuple[int, ...] = default_timeouts()
    # (family, proto, remote addr, remote port, local addr, local port) -> [state, expiry ns, syn_ack]
    flows: dict[tuple[int, int, bytes, int, bytes, int], list[int]] = field(default_factory=dict)
    # (proto, local port) -> the latest expiry of a flow written on it (UDP: plus the stream timeout)
    guard: dict[tuple[int, int], int] = field(default_factory=dict)


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
    l4: int = 0  # offset of the L4 header
    ext: bool = False  # IPv6 extension headers follow the fixed header
    tcp_flags: int = 0
    tcp_seq: int = 0
    tcp_ack: int = 0
    icmp_type: int | None = None
    icmp_id: int | None = None  # an ICMP(v6) echo request or reply's identifier


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
        p.ext = nh in EXT
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
    p.l4 = off
    if p.proto in (6, 17):
        p.sport, p.dport = struct.unpack_from("!HH", pkt, off)
        if p.proto == 6:
            p.tcp_flags = pkt[off + 13]
            p.tcp_seq, p.tcp_ack = struct.unpack_from("!II", pkt, off + 4)
    else:
        p.icmp_type = pkt[off]
        echo = (8, 0) if p.proto == 1 else (128, 129)
        if len(pkt) >= off + 8 and pkt[off] in echo:
            p.icmp_id = struct.unpack_from("!H", pkt, off + 4)[0]
        if p.proto == 58 and p.family == 6 and p.hop255 and 133 <= pkt[off] <= 137:
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


# ---- connection state ------------------------------------------------------------------

SYN, RST, FIN, ACK = 0x02, 0x04, 0x01, 0x10
ICMP_ERRORS = {1: {3, 11, 12}, 58: {1, 2, 3, 4}}  # by protocol: unreachable, time exceeded, parameter problem, too big
STALE_NS = 10**9  # egress rewrites a known flow's expiry at most once a second


def _own_icmp(p: Parsed) -> bool:
    return p.proto == (1 if p.family == 4 else 58)


def _live_flow(fw: Firewall, key: tuple[int, int, bytes, int, bytes, int], now: int) -> list[int] | None:
    f = fw.flows.get(key)
    return f if f is not None and now < f[1] else None


def _pad(addr: bytes) -> bytes:
    return addr.ljust(16, b"\0")


def outbound(pkt: bytes, fw: Firewall, now: int) -> None:
    """``pkt`` leaves the host: record or move on the flow it belongs to, as
    the README's state section says (a TCP SYN, a UDP datagram or an echo
    request starts one; other TCP segments only move one on; a SYN-ACK is
    not tracked; a SYN records its ISN + 1, the ack its answer must carry).
    IPv6 extension headers and later fragments: not tracked."""
    if not fw.established or len(pkt) < 14:
        return
    p = parse(pkt)
    if isinstance(p, Reason) or not p.family or p.fragment == 2:
        return
    if p.ext:
        return
    if p.proto == 6:
        fl = p.tcp_flags
        if fl & (SYN | ACK) == SYN:
            st, starts = FlowState.SYN_SENT, True
        elif fl & SYN:
            return
        else:
            st = FlowState.CLOSE if fl & RST else FlowState.FIN if fl & FIN else FlowState.ESTABLISHED
            starts = False
        key = (p.family, 6, _pad(p.dst), p.dport or 0, _pad(p.src), p.sport or 0)
    elif p.proto == 17:
        st, starts = FlowState.UDP, True
        key = (p.family, 17, _pad(p.dst), p.dport or 0, _pad(p.src), p.sport or 0)
    elif _own_icmp(p) and p.icmp_id is not None and p.icmp_type == (8 if p.proto == 1 else 128):
        st, starts = FlowState.ICMP, True
        key = (p.family, p.proto, _pad(p.dst), 0, _pad(p.src), p.icmp_id)
    else:
        return
    f = _live_flow(fw, key, now)
    if f is not None:
        if p.proto == 6 and st != FlowState.SYN_SENT:
            if f[0] == FlowState.CLOSE:
                return
            if f[0] == FlowState.FIN and st == FlowState.ESTABLISHED:
                st = FlowState.FIN
        elif f[0] == FlowState.UDP_STREAM and st == FlowState.UDP:
            st = FlowState.UDP_STREAM
    elif not starts:
        return
    expires = now + fw.timeouts[st] * 10**9
    syn_ack = (p.tcp_seq + 1) & 0xFFFFFFFF if st == FlowState.SYN_SENT else (f[2] if f is not None else 0)
    if f is not None and f[0] == st and f[2] == syn_ack and f[1] + STALE_NS >= expires:
        return
    fw.flows[key] = [int(st), expires, syn_ack]
    more = fw.timeouts[FlowState.UDP_STREAM] * 10**9 if p.proto == 17 else 0
    fw.guard[(p.proto, key[5])] = max(fw.guard.get((p.proto, key[5]), 0), expires + more)


def _dhcp_reply(p: Parsed, fw: Firewall, now: int) -> bool:
    """A DHCP (DHCPv6) server's answer, UDP 67 -> 68 (547 -> 546), while the
    host's port 68 (546) is guarded: it sent from it within the UDP timeouts."""
    ports = (67, 68) if p.family == 4 else (547, 546)
    return p.proto == 17 and (p.sport, p.dport) == ports and fw.guard.get((17, ports[1]), 0) > now


def _related(pkt: bytes, p: Parsed, fw: Firewall, now: int) -> bool:
    """An ICMP error quoting a packet the host sent in a flow it opened."""
    off = p.l4 + 8
    if p.family == 4:
        if len(pkt) < off + 20 or pkt[off] >> 4 != 4 or pkt[off] & 15 < 5 or pkt[off + 12 : off + 16] != p.dst:
            return False
        if struct.unpack_from("!H", pkt, off + 6)[0] & 0x1FFF:
            return False
        proto, qsrc, qdst = pkt[off + 9], pkt[off + 12 : off + 16], pkt[off + 16 : off + 20]
        off += (pkt[off] & 15) * 4
    else:
        if len(pkt) < off + 40 or pkt[off] >> 4 != 6 or pkt[off + 8 : off + 24] != p.dst:
            return False
        proto, qsrc, qdst = pkt[off + 6], pkt[off + 8 : off + 24], pkt[off + 24 : off + 40]
        off += 40
    if len(pkt) < off + 8:
        return False
    if proto in (6, 17):
        lport, rport = struct.unpack_from("!HH", pkt, off)
    elif proto == (1 if p.family == 4 else 58):
        if pkt[off] != (8 if proto == 1 else 128):
            return False
        lport, rport = struct.unpack_from("!H", pkt, off + 4)[0], 0
    else:
        return False
    return _live_flow(fw, (p.family, proto, _pad(qdst), rport, _pad(qsrc), lport), now) is not None


def _conn(pkt: bytes, p: Parsed, fw: Firewall, now: int) -> Reason | None:
    """ESTABLISHED, RELATED or None (the rules decide); moves a UDP flow to
    its stream state on its first answer, as the kernel does."""
    if p.proto in (6, 17):
        if p.sport is None or p.dport is None:
            return None
        if p.proto == 6 and p.tcp_flags & (SYN | ACK) == SYN:
            return None
        key = (p.family, p.proto, _pad(p.src), p.sport, _pad(p.dst), p.dport)
    elif _own_icmp(p):
        if p.icmp_type in ICMP_ERRORS[p.proto]:
            return Reason.RELATED if _related(pkt, p, fw, now) else None
        if p.icmp_id is None or p.icmp_type == (8 if p.proto == 1 else 128):
            return None
        key = (p.family, p.proto, _pad(p.src), 0, _pad(p.dst), p.icmp_id)
    else:
        return None
    f = _live_flow(fw, key, now)
    if f is None:
        return Reason.ESTABLISHED if _dhcp_reply(p, fw, now) else None
    if p.proto == 6:
        # in syn-sent only the answer to the host's SYN: a SYN-ACK or RST with ACK acknowledging it
        if f[0] == FlowState.SYN_SENT and not (p.tcp_flags & ACK and p.tcp_flags & (SYN | RST)
                                               and p.tcp_ack == f[2]):
            return None
    elif f[0] == FlowState.UDP:
        f[:] = [int(FlowState.UDP_STREAM), now + fw.timeouts[FlowState.UDP_STREAM] * 10**9, 0]
    return Reason.ESTABLISHED


def decide(pkt: bytes, fw: Firewall, now: int = 0) -> Decision:
    """The verdict, reason and deciding rule the filter must give ``pkt`` at
    CLOCK_MONOTONIC ``now`` (ns; set elements' and flows' expiry depend on
    it). A reply may move its flow on (see :func:`_conn`)."""
    p = parse(pkt)
    if isinstance(p, Reason):
        return Decision(Verdict.DROP, p, 0)
    if p.ethertype == 0x0806:
        return Decision(Verdict.PASS, Reason.ARP, 0)
    if p.nd:
        return Decision(Verdict.PASS, Reason.ND, 0)
    if fw.established and p.family and p.fragment != 2:
        why = _conn(pkt, p, fw, now)
        if why is not None:
            return Decision(Verdict.PASS, why, 0)
    if p.family:
        for i, r in enumerate(fw.rules):
            if rule_matches(r, p, fw, now):
                if r.action is Action.ALLOW:
                    return Decision(Verdict.PASS, Reason.RULE_ALLOW, i + 1)
                return Decision(Verdict.DROP, Reason.RULE_DENY, i + 1)
    return Decision(fw.policy, Reason.FRAGMENT if p.fragment == 2 else Reason.POLICY, 0)
