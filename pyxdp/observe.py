"""What the filter reports: counters per verdict and reason, and traced
packets (sampled events from the ring buffer)."""

from __future__ import annotations

from collections.abc import Iterator
from socket import AF_INET, AF_INET6, inet_ntop
from typing import TYPE_CHECKING, Any, NamedTuple

from . import layout as L
from .bpf import RingBuffer
from .errors import UsageError
from .layout import Reason, Verdict

if TYPE_CHECKING:
    from .state import State

TRACE_BATCH = 4096  # events taken from the ring per poll: memory stays bounded whatever the rate


class StatLine(NamedTuple):
    verdict: Verdict
    reason: Reason
    packets: int
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict.label, "reason": self.reason.label, "packets": self.packets,
                "bytes": self.bytes}


class Stats(NamedTuple):
    lines: tuple[StatLine, ...]
    lost_events: int

    def get(self, verdict: Verdict, reason: Reason) -> StatLine:
        for ln in self.lines:
            if ln.verdict == verdict and ln.reason == reason:
                return ln
        return StatLine(verdict, reason, 0, 0)

    def total(self, verdict: Verdict) -> int:
        return sum(ln.packets for ln in self.lines if ln.verdict == verdict)


def read_stats(st: State) -> Stats:
    lines = []
    lost = 0
    for k, v in st.map("stats").items():
        slot = L.U32.unpack(k)[0]
        pk = by = 0
        for off in range(0, len(v), L.COUNTER.size):
            p, b = L.COUNTER.unpack_from(v, off)
            pk += p
            by += b
        if slot == L.LOST_SLOT:
            lost = pk
        elif slot < L.LOST_SLOT and pk:
            lines.append(StatLine(Verdict(slot & 1), Reason(slot >> 1), pk, by))
    return Stats(tuple(lines), lost)


_PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6"}


class Event(NamedTuple):
    """One traced packet, as the datapath decided it."""

    ts_ns: int
    ifindex: int
    pkt_len: int
    verdict: Verdict
    reason: Reason
    family: int
    proto: int
    sport: int
    dport: int
    src: str
    dst: str
    vlans: int
    fragment: int
    ethertype: int
    rule: int = 0  # number (1-based position) of the rule that decided, 0: none
    rule_id: int = -1  # that rule's stable id

    @classmethod
    def decode(cls, raw: bytes) -> Event:
        (ts, ifindex, plen_b, verdict, reason, family, proto, sport, dport, src, dst, vlans, frag, ethertype, rule,
         _pad, rule_id, _pad2) = L.EVENT.unpack_from(raw)
        if family == 4:
            s, d = inet_ntop(AF_INET, src[:4]), inet_ntop(AF_INET, dst[:4])
        elif family == 6:
            s, d = inet_ntop(AF_INET6, src), inet_ntop(AF_INET6, dst)
        else:
            s = d = ""
        return cls(ts, ifindex, plen_b, Verdict(verdict), Reason(reason), family, proto, sport, dport, s, d,
                   vlans, frag, ethertype, rule, rule_id - 1)

    @property
    def proto_name(self) -> str:
        if not self.family:
            return "arp" if self.ethertype == 0x0806 else f"ether-0x{self.ethertype:04x}"
        return _PROTO_NAMES.get(self.proto, str(self.proto))

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict.label,
            "reason": self.reason.label,
            "src": self.src,
            "dst": self.dst,
            "proto": self.proto_name,
            "sport": self.sport,
            "dport": self.dport,
            "ifindex": self.ifindex,
            "len": self.pkt_len,
            "vlans": self.vlans,
            "fragment": ("", "first", "later")[self.fragment] or None,
            "rule": self.rule or None,
            "ts_ns": self.ts_ns,
        }

    @property
    def flow(self) -> str:
        """``udp 192.0.2.1 -> 198.51.100.1 40000 -> 53``"""
        where = f"{self.src} -> {self.dst}" if self.family else "-"
        ports = f" {self.sport} -> {self.dport}" if self.proto in (6, 17) else ""
        if self.proto in (1, 58):
            ports = f" type {self.sport} code {self.dport}"
        return f"{self.proto_name} {where}{ports}"

    def __str__(self) -> str:
        rule = f" (rule {self.rule})" if self.rule else ""
        return f"{self.verdict.label:4} {self.reason.label:11} if{self.ifindex} {self.flow}{rule}"


class Tracer:
    """Turns tracing on while open and yields :class:`Event` objects. One
    tracer at a time per state: a ring buffer has one reader. Memory is
    bounded: each poll takes at most TRACE_BATCH events; what the ring cannot
    hold meanwhile the datapath drops and counts (``lost``)."""

    def __init__(self, st: State, set_trace: Any, every: int) -> None:
        if every < 1:
            raise UsageError("sample must be 1 (every packet) or more")
        self._st = st
        self._set_trace = set_trace
        self._every = every
        self._queue: list[bytes] = []
        self._rb: RingBuffer | None = None
        self._lost0 = 0

    def __enter__(self) -> Tracer:
        self._rb = RingBuffer(self._st.map("events"), self._queue.append)
        try:
            while self._rb.poll(0, limit=TRACE_BATCH):  # events left from an earlier tracer
                self._queue.clear()
            self._lost0 = read_stats(self._st).lost_events
            self._set_trace(self._every)
        except BaseException:
            self._rb.close()
            self._rb = None
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._rb is not None:
            try:
                self._set_trace(0)
            finally:
                self._rb.close()
                self._rb = None

    @property
    def lost(self) -> int:
        """Events the datapath could not queue since this tracer started."""
        return read_stats(self._st).lost_events - self._lost0

    def poll(self, timeout_ms: int = 100) -> list[Event]:
        """Events that arrived within ``timeout_ms`` (at most TRACE_BATCH)."""
        if self._rb is None:
            raise UsageError("tracer is not open")
        self._rb.poll(timeout_ms, limit=TRACE_BATCH)
        out = [Event.decode(r) for r in self._queue]
        self._queue.clear()
        return out

    def __iter__(self) -> Iterator[Event]:
        while self._rb is not None:
            yield from self.poll(200)
