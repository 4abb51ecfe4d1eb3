"""What the filter reports: counters per verdict and reason, and traced
packets (sampled events from the ring buffer)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from socket import AF_INET, AF_INET6, if_indextoname, inet_ntop, inet_pton
from typing import IO, TYPE_CHECKING, Any, NamedTuple

from . import layout as L
from .errors import UsageError
from .kernel.bpf import RingBuffer
from .layout import Reason, Verdict
from .model.pcap import PcapWriter
from .model.prefix import Prefix, parse_prefix
from .store.attach import iface_label, recorded, slot_names

if TYPE_CHECKING:
    from .store.attach import Attachment
    from .store.state import State

TRACE_BATCH = 4096  # events taken from the ring per poll: memory stays bounded whatever the rate


class StatLine(NamedTuple):
    verdict: Verdict
    reason: Reason
    packets: int
    bytes: int
    interface: str = ""  # "eth0", "NETNS/eth0" in a namespace; "" when not attributed to one

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict.label, "reason": self.reason.label, "packets": self.packets,
                "bytes": self.bytes, "interface": self.interface}


class Stats(NamedTuple):
    lines: tuple[StatLine, ...]
    lost_events: int

    def get(self, verdict: Verdict, reason: Reason) -> StatLine:
        """Packets and bytes of (verdict, reason), summed over interfaces."""
        pk = by = 0
        for ln in self.lines:
            if ln.verdict == verdict and ln.reason == reason:
                pk += ln.packets
                by += ln.bytes
        return StatLine(verdict, reason, pk, by)

    def total(self, verdict: Verdict) -> int:
        return sum(ln.packets for ln in self.lines if ln.verdict == verdict)


def read_stats(st: State) -> Stats:
    """The counters, one line per interface, verdict and reason counted."""
    from array import array

    names = slot_names(st)
    lines = []
    lost = 0
    m = st.map("stats")
    per = m.value_bytes // 8  # packets, bytes, for each CPU
    for keys, vals in m.batches():  # the per-CPU sums of a batch at once: most slots are 0
        words = array("Q", vals)
        packets = list(map(sum, zip(*(words[j::per] for j in range(0, per, 2)))))
        for n in (n for n, pk in enumerate(packets) if pk):
            idx = L.U32.unpack_from(keys, n * L.U32.size)[0]
            pk, by = packets[n], sum(words[n * per + 1:(n + 1) * per:2])
            if idx == L.LOST_SLOT:
                lost = pk
            elif idx < L.LOST_SLOT:
                slot, i = divmod(idx, L.STATS_STRIDE)
                lines.append(StatLine(Verdict(i & 1), Reason(i >> 1), pk, by, names.get(slot, "")))
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
    head: bytes = b""  # the packet's first bytes (at most HEAD_LEN), as the datapath copied them
    interface: str = ""  # where it arrived, by name (see InterfaceNames); "": not resolved, shown as ifN

    @classmethod
    def decode(cls, raw: bytes) -> Event:
        with_head = len(raw) >= L.EVENT.size  # else the record stops before head: no bytes copied
        if not with_head:
            raw = bytes(raw).ljust(L.EVENT.size, b"\0")
        (ts, ifindex, plen_b, verdict, reason, family, proto, sport, dport, src, dst, vlans, frag, ethertype, rule,
         _pad, rule_id, cap_len, _pad2, head) = L.EVENT.unpack_from(raw)
        if family == 4:
            s, d = inet_ntop(AF_INET, src[:4]), inet_ntop(AF_INET, dst[:4])
        elif family == 6:
            s, d = inet_ntop(AF_INET6, src), inet_ntop(AF_INET6, dst)
        else:
            s = d = ""
        return cls(ts, ifindex, plen_b, Verdict(verdict), Reason(reason), family, proto, sport, dport, s, d,
                   vlans, frag, ethertype, rule, rule_id - 1, head[:min(cap_len, plen_b)] if with_head else b"")

    @property
    def where(self) -> str:
        """The interface's name, else ``ifN``."""
        return self.interface or f"if{self.ifindex}"

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
            "interface": self.where,
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
        return f"{self.verdict.label:4} {self.reason.label:11} {self.where} {self.flow}{rule}"


_TCP_UDP = (6, 17)


class TraceFilter(NamedTuple):
    """Which traced packets to keep; every field given must match. Applied
    in Python to the events the datapath samples (``--sample N`` picks one
    packet in N first; this then keeps those that match)."""

    verdict: Verdict | None = None
    src: Prefix | None = None  # the source address lies in this prefix (so the packet is of its family)
    ports: tuple[tuple[int, int], ...] = ()  # a TCP/UDP source or destination port in one of these ranges
    rule: int = 0  # the number of the rule that decided (0: any)

    @classmethod
    def make(cls, verdict: str | Verdict | None = None, src: str | Prefix | None = None,
             port: int | str | None = None, rule: int | None = None) -> TraceFilter:
        """From what a user gives: ``verdict`` "pass" or "drop", ``src`` a
        prefix or address (IPv4 or IPv6), ``port`` a port, ``LOW:HIGH`` or a
        list of those (as in rules), ``rule`` a rule number. Bad input raises
        :class:`UsageError`."""
        v: Verdict | None
        if verdict is None or isinstance(verdict, Verdict):
            v = verdict
        elif verdict in ("pass", "drop"):
            v = Verdict[verdict.upper()]
        else:
            raise UsageError(f"bad verdict {verdict!r}: pass or drop")
        pfx = parse_prefix(src) if isinstance(src, str) else src
        ports: tuple[tuple[int, int], ...] = ()
        if isinstance(port, int):
            if not 0 <= port <= 65535:
                raise UsageError(f"bad port {port}: 0 to 65535")
            ports = ((port, port),)
        elif port is not None:
            from .model.rules import parse_ports

            ports = parse_ports(port)
        if rule is not None and rule < 1:
            raise UsageError(f"bad rule number {rule}: rules are numbered from 1")
        return cls(v, pfx, ports, rule or 0)

    def __bool__(self) -> bool:
        return self.verdict is not None or self.src is not None or bool(self.ports) or bool(self.rule)

    def __call__(self, ev: Event) -> bool:
        if self.verdict is not None and ev.verdict != self.verdict:
            return False
        if self.rule and ev.rule != self.rule:
            return False
        if self.ports:
            # ICMP's sport/dport carry type and code; a later fragment has no ports
            if ev.proto not in _TCP_UDP or not ev.family or ev.fragment == 2:
                return False
            if not any(lo <= ev.sport <= hi or lo <= ev.dport <= hi for lo, hi in self.ports):
                return False
        if self.src is not None:
            if ev.family != self.src.family:
                return False
            return self.src.holds(inet_pton(AF_INET if ev.family == 4 else AF_INET6, ev.src))
        return True

    def __str__(self) -> str:
        """``drop from 192.0.2.0/24 port 22,80:90 rule 3``"""
        words = []
        if self.verdict is not None:
            words.append(self.verdict.label)
        if self.src is not None:
            words.append(f"from {self.src}")
        if self.ports:
            words.append("port " + ",".join(str(lo) if lo == hi else f"{lo}:{hi}" for lo, hi in self.ports))
        if self.rule:
            words.append(f"rule {self.rule}")
        return " ".join(words) or "all"


class InterfaceNames:
    """ifindex -> a name for trace lines, from the state's record of the
    interfaces it is attached to (``eth0``, ``NETNS/eth0`` in a namespace).

    An event carries only the ifindex, and each namespace numbers its own
    interfaces: when the filter is attached to interfaces of the same ifindex
    in two namespaces, the name is every candidate, ``nsa/va|nsb/vb``. An
    ifindex no record holds (an interface attached after the records were
    read) makes it read them again, at most once every ``refresh`` seconds;
    still unknown, it is the name that ifindex has in this process's
    namespace, else ``ifN``."""

    def __init__(self, records: Callable[[], Iterable[Attachment]], refresh: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._records = records
        self._refresh = refresh
        self._clock = clock
        self._read_at: float | None = None
        self._names: dict[int, str] = {}
        self._guessed: dict[int, str] = {}

    def _read(self) -> None:
        by_index: dict[int, set[str]] = {}
        for a in self._records():
            by_index.setdefault(a.ifindex, set()).add(iface_label(a.ifname, a.netns))
        self._names = {idx: "|".join(sorted(labels)) for idx, labels in by_index.items()}
        self._guessed.clear()

    def __call__(self, ifindex: int) -> str:
        name = self._names.get(ifindex)
        if name is not None:
            return name
        now = self._clock()
        if self._read_at is None or now - self._read_at >= self._refresh:
            self._read_at = now
            self._read()
            name = self._names.get(ifindex)
            if name is not None:
                return name
        name = self._guessed.get(ifindex)
        if name is None:
            try:
                name = if_indextoname(ifindex)
            except OSError:
                name = f"if{ifindex}"
            self._guessed[ifindex] = name
        return name


class TracePcap:
    """Writes traced packets' first bytes (:attr:`Event.head`) as a classic
    pcap: snapshot length HEAD_LEN, each record's original length the
    packet's, its time the event's (CLOCK_MONOTONIC) moved to the wall clock
    by the offset between the two clocks when the writer is made."""

    def __init__(self, stream: IO[bytes], snaplen: int = L.HEAD_LEN) -> None:
        self._out = PcapWriter(stream, snaplen)
        self._offset = time.time_ns() - time.monotonic_ns()
        self.skipped = 0  # events that carried no bytes of their packet

    @property
    def count(self) -> int:
        """Packets written."""
        return self._out.count

    def write(self, ev: Event) -> bool:
        """Appends ``ev``'s packet (and flushes, so that a reader of a pipe
        sees it at once); False, and nothing written, when it has no head."""
        if not ev.head:
            self.skipped += 1
            return False
        self._out.write(ev.head, ev.ts_ns + self._offset, ev.pkt_len)
        self._out.flush()
        return True


class Tracer:
    """Turns tracing on while open and yields :class:`Event` objects. One
    tracer at a time per state: a ring buffer has one reader. Memory is
    bounded: each poll takes at most TRACE_BATCH events; what the ring cannot
    hold meanwhile the datapath drops and counts (``lost``).

    ``match`` (a :class:`TraceFilter`, or any predicate) keeps only the events
    it accepts. Each event kept gets its interface's name (``names``; by
    default an :class:`InterfaceNames` on this state's record of attached
    interfaces)."""

    def __init__(self, st: State, set_trace: Any, every: int, match: Callable[[Event], bool] | None = None,
                 names: Callable[[int], str] | None = None) -> None:
        if every < 1:
            raise UsageError("sample must be 1 (every packet) or more")
        self._st = st
        self._set_trace = set_trace
        self._every = every
        self._match = match
        if names is None:
            names = InterfaceNames(lambda: recorded(st).values())
        self._names = names
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
    def every(self) -> int:
        """One packet in this many is traced."""
        return self._every

    def resample(self, every: int) -> None:
        """Trace one packet in ``every`` (1 or more) from now on."""
        if every < 1:
            raise UsageError("sample must be 1 (every packet) or more")
        if self._rb is None:
            raise UsageError("tracer is not open")
        self._set_trace(every)
        self._every = every

    @property
    def lost(self) -> int:
        """Events the datapath could not queue since this tracer started."""
        return read_stats(self._st).lost_events - self._lost0

    def poll(self, timeout_ms: int = 100) -> list[Event]:
        """Events that arrived within ``timeout_ms`` (at most TRACE_BATCH
        taken from the ring) and match."""
        if self._rb is None:
            raise UsageError("tracer is not open")
        self._rb.poll(timeout_ms, limit=TRACE_BATCH)
        out = []
        try:
            for raw in self._queue:
                ev = Event.decode(raw)
                if self._match is None or self._match(ev):
                    out.append(ev._replace(interface=self._names(ev.ifindex)))
        finally:
            self._queue.clear()
        return out

    def __iter__(self) -> Iterator[Event]:
        while self._rb is not None:
            yield from self.poll(200)
