"""Trace events without root: decoding from known packet bytes, interface names, trace filters, pcap
files (written, read back, read by tcpdump). Tracing real traffic: tests/kernel/test_trace.py."""

from __future__ import annotations

import os
import socket
import struct
import time
from typing import Any

import pytest
from helpers import packets as P
from helpers.env import tcpdump

from pyxdp import Reason, UsageError, Verdict
from pyxdp import layout as L
from pyxdp.model.pcap import MAX_CAPLEN, PcapWriter, open_capture, read_pcap_records
from pyxdp.observe import Event, InterfaceNames, TraceFilter, TracePcap
from pyxdp.store.attach import Attachment


def raw_event(pkt: bytes, *, verdict: Verdict = Verdict.PASS, reason: Reason = Reason.POLICY, family: int = 4,
              proto: int = P.UDP, sport: int = 40000, dport: int = 5000, src: str = "198.51.100.7",
              dst: str = "198.51.100.1", rule: int = 0, ifindex: int = 2, ts_ns: int = 0, fragment: int = 0,
              cap: int | None = None) -> bytes:
    """A ring-buffer record as the datapath writes it for ``pkt`` (the
    fields are given, not parsed); head bytes past ``cap`` are junk, as in a
    reused ring slot."""
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    s = socket.inet_pton(af, src).ljust(16, b"\0") if family else b"\0" * 16
    d = socket.inet_pton(af, dst).ljust(16, b"\0") if family else b"\0" * 16
    cap = min(len(pkt), L.HEAD_LEN) if cap is None else cap
    ethertype = {4: 0x0800, 6: 0x86DD}.get(family, 0x0806)
    return L.EVENT.pack(ts_ns, ifindex, len(pkt), verdict, reason, family, proto, sport, dport, s, d, 0, fragment,
                        ethertype, rule, 0, rule, cap, 0, pkt[: L.HEAD_LEN].ljust(L.HEAD_LEN, b"\xee"))


def event(pkt: bytes = b"", **kw: Any) -> Event:
    return Event.decode(raw_event(pkt or P.udp4("198.51.100.7", 5000), **kw))


def test_decode_keeps_the_packets_first_bytes_up_to_cap_len() -> None:
    short = P.udp4("198.51.100.7", 5000)
    assert event(short).head == short
    long = P.eth(P.ETH_IP, P.ipv4("198.51.100.7", "198.51.100.1", P.UDP, P.udp(40000, 5000, b"x" * 400)))
    ev = event(long)
    assert ev.pkt_len == len(long) and ev.head == long[: L.HEAD_LEN] and len(ev.head) == L.HEAD_LEN
    assert event(short, cap=20).head == short[:20]  # the junk after cap_len is not the packet's
    assert event(short, cap=0).head == b""
    assert event(short, cap=500).head == short  # never more than the packet
    fixed = raw_event(short)[: L.EVENT.size - L.HEAD_LEN]  # a record without the head part
    ev = Event.decode(fixed)
    assert ev.head == b"" and (ev.src, ev.dport, ev.pkt_len) == ("198.51.100.7", 5000, len(short))


def test_interface_name_in_line_and_json() -> None:
    ev = event(verdict=Verdict.DROP, reason=Reason.RULE_DENY, rule=2, ifindex=7)
    assert ev.where == "if7" and " if7 udp " in str(ev) and ev.to_dict()["interface"] == "if7"
    named = ev._replace(interface="ns1/vb")
    assert str(named) == "drop rule-deny   ns1/vb udp 198.51.100.7 -> 198.51.100.1 40000 -> 5000 (rule 2)"
    d = named.to_dict()
    assert (d["interface"], d["ifindex"]) == ("ns1/vb", 7)
    assert "head" not in d  # bytes stay out of the JSON lines


def att(ifname: str, ifindex: int, netns: str | None) -> Attachment:
    return Attachment(ifname, ifindex, netns, "native", 1, True)


def test_interface_names_from_the_record_ambiguous_and_fallbacks() -> None:
    records = [att("eth1", 2, None), att("va", 3, "nsa"), att("vb", 3, "nsb")]
    reads: list[int] = []
    now = [100.0]

    def read() -> list[Attachment]:
        reads.append(1)
        return list(records)

    names = InterfaceNames(read, refresh=1.0, clock=lambda: now[0])
    assert names(2) == "eth1"
    assert names(3) == "nsa/va|nsb/vb"  # the same ifindex in two namespaces: both, the event cannot tell
    assert len(reads) == 1
    lo = socket.if_nameindex()[0]  # this namespace's first interface: the fallback names it
    if lo[0] not in (2, 3):
        assert names(lo[0]) == lo[1]
    assert names(999_999) == "if999999"
    assert len(reads) == 1  # misses read the record again at most once a second
    records.append(att("vc", 999_999, "nsc"))  # attached while tracing
    assert names(999_999) == "if999999"
    now[0] += 1.5
    assert names(999_999) == "nsc/vc" and len(reads) == 2
    assert names(2) == "eth1" and len(reads) == 2


def test_filter_by_verdict_rule_and_combined() -> None:
    drop2 = event(verdict=Verdict.DROP, reason=Reason.RULE_DENY, rule=2)
    pass1 = event(verdict=Verdict.PASS, reason=Reason.RULE_ALLOW, rule=1)
    policy = event(verdict=Verdict.DROP, reason=Reason.POLICY)
    evs = [drop2, pass1, policy]
    assert [f(e) for f in [TraceFilter.make("drop")] for e in evs] == [True, False, True]
    assert [TraceFilter.make(verdict=Verdict.PASS)(e) for e in evs] == [False, True, False]
    assert [TraceFilter.make(rule=2)(e) for e in evs] == [True, False, False]
    assert [TraceFilter.make("pass", rule=2)(e) for e in evs] == [False, False, False]
    assert [TraceFilter.make()(e) for e in evs] == [True, True, True]
    assert not TraceFilter.make() and TraceFilter.make(rule=1)


def test_filter_by_source_prefix_v4_and_v6() -> None:
    v4 = event(src="10.1.2.3")
    v4_out = event(src="11.0.0.1")
    v6 = event(P.udp6("2001:db8::7", 5000), family=6, src="2001:db8::7", dst="2001:db8:ffff::1")
    v6_out = event(P.udp6("2001:db9::7", 5000), family=6, src="2001:db9::7", dst="2001:db8:ffff::1")
    arp = event(P.eth(P.ETH_ARP, P.arp()), family=0, proto=0, sport=0, dport=0)
    evs = [v4, v4_out, v6, v6_out, arp]
    assert [TraceFilter.make(src="10.0.0.0/8")(e) for e in evs] == [True, False, False, False, False]
    assert [TraceFilter.make(src="10.1.2.3")(e) for e in evs] == [True, False, False, False, False]
    assert [TraceFilter.make(src="2001:db8::/32")(e) for e in evs] == [False, False, True, False, False]
    assert [TraceFilter.make(src="0.0.0.0/0")(e) for e in evs] == [True, True, False, False, False]
    assert [TraceFilter.make(src="::/0")(e) for e in evs] == [False, False, True, True, False]


def test_filter_by_port_matches_tcp_udp_source_or_destination_only() -> None:
    to22 = event(P.tcp4("198.51.100.7", 22), proto=P.TCP, sport=40000, dport=22)
    from22 = event(P.tcp4("198.51.100.7", 40000, sport=22), proto=P.TCP, sport=22, dport=40000)
    udp53 = event(proto=P.UDP, sport=40000, dport=53)
    icmp = event(P.eth(P.ETH_IP, P.ipv4("198.51.100.7", "198.51.100.1", P.ICMP, P.icmp(8))), proto=P.ICMP,
                 sport=8, dport=0)  # ICMP carries type and code where ports would be
    later = event(proto=P.UDP, sport=0, dport=0, fragment=2)  # a later fragment has no ports
    evs = [to22, from22, udp53, icmp, later]
    assert [TraceFilter.make(port=22)(e) for e in evs] == [True, True, False, False, False]
    assert [TraceFilter.make(port="22")(e) for e in evs] == [True, True, False, False, False]
    assert [TraceFilter.make(port=8)(e) for e in evs] == [False, False, False, False, False]
    assert [TraceFilter.make(port=0)(e) for e in evs] == [False, False, False, False, False]
    assert [TraceFilter.make(port="50:60,20:22")(e) for e in evs] == [True, True, True, False, False]
    assert [TraceFilter.make(port="39999:40001")(e) for e in evs] == [True, True, True, False, False]
    f = TraceFilter.make("drop", "2001:db8::/32", "22,80:90", 3)
    assert str(f) == "drop from 2001:db8::/32 port 22,80:90 rule 3" and str(TraceFilter.make()) == "all"


@pytest.mark.parametrize(
    ("kw", "says"),
    [
        ({"verdict": "maybe"}, "bad verdict 'maybe'"),
        ({"src": "10.0.0.1/8"}, "host bits set"),
        ({"src": "not-an-address"}, "bad address"),
        ({"port": 70000}, "bad port 70000"),
        ({"port": "ssh"}, "bad port 'ssh'"),
        ({"port": "90:80"}, "the low port comes first"),
        ({"rule": 0}, "rules are numbered from 1"),
    ],
)
def test_filter_refuses_bad_input(kw: dict[str, Any], says: str) -> None:
    with pytest.raises(UsageError, match=says):
        TraceFilter.make(**kw)


def sample_packets() -> list[bytes]:
    return [
        P.udp4("198.51.100.7", 5000),
        P.tcp6("2001:db8::1", 22),
        P.eth(P.ETH_IP, P.ipv4("192.0.2.9", "198.51.100.1", P.ICMP, P.icmp(8))),
        P.eth(P.ETH_IP, P.ipv4("203.0.113.5", "198.51.100.1", P.UDP, P.udp(4444, 6000, b"y" * 400))),  # > 128
        P.eth(P.ETH_IP, P.ipv4("192.0.2.10", "198.51.100.1", P.UDP, P.udp(1234, 6100)), ((P.VLAN_Q, 100),)),
    ]


def test_pcap_writer_round_trip_with_pyxdps_reader(tmp_path: Any) -> None:
    pkts = sample_packets()
    path = tmp_path / "w.pcap"
    with open(path, "wb") as fh:
        w = PcapWriter(fh, snaplen=128)
        for i, p in enumerate(pkts):
            w.write(p, ts_ns=1_700_000_000_123_456_789 + i * 1_000, orig_len=len(p) + 1)
    assert w.count == len(pkts)
    raw = path.read_bytes()
    magic, major, minor, _zone, _sig, snaplen, linktype = struct.unpack("<IHHiIII", raw[:24])
    assert (magic, major, minor, snaplen, linktype) == (0xA1B2C3D4, 2, 4, 128, 1)
    with open(path, "rb") as fh:
        recs = list(read_pcap_records(fh))
    assert [r.error for r in recs] == [None] * len(pkts)
    assert [r.data for r in recs] == [p[:128] for p in pkts]
    off, seen = 24, []
    while off < len(raw):
        sec, usec, incl, orig = struct.unpack_from("<IIII", raw, off)
        seen.append((sec, usec, incl, orig))
        off += 16 + incl
    assert seen == [(1_700_000_000, 123_456 + i, min(len(p), 128), len(p) + 1) for i, p in enumerate(pkts)]
    with open(os.devnull, "wb") as null, pytest.raises(UsageError, match="snapshot length"):
        PcapWriter(null, snaplen=MAX_CAPLEN + 1)


def test_trace_pcap_writes_heads_with_wall_clock_times_and_skips_headless(tmp_path: Any) -> None:
    pkts = sample_packets()
    mono = time.monotonic_ns()
    path = tmp_path / "t.pcap"
    with open(path, "wb") as fh:
        tp = TracePcap(fh)
        for i, p in enumerate(pkts):
            assert tp.write(event(p, ts_ns=mono + i * 1_000_000)) is True
        assert tp.write(event(pkts[0], cap=0)) is False
    assert (tp.count, tp.skipped) == (len(pkts), 1)
    raw = path.read_bytes()
    assert struct.unpack_from("<I", raw, 16)[0] == L.HEAD_LEN  # snaplen: the cap length
    with open(path, "rb") as fh:
        assert [r.data for r in read_pcap_records(fh)] == [p[: L.HEAD_LEN] for p in pkts]
    sec, usec, incl, orig = struct.unpack_from("<IIII", raw, 24)
    assert abs(sec + usec / 1e6 - time.time()) < 5 and (incl, orig) == (len(pkts[0]), len(pkts[0]))
    off = 24 + 16 + incl
    sec2, usec2 = struct.unpack_from("<II", raw, off)
    assert (sec2 * 1_000_000 + usec2) - (sec * 1_000_000 + usec) == 1_000  # 1 ms apart, as the events


def test_tcpdump_reads_the_trace_pcap(tmp_path: Any) -> None:
    pkts = sample_packets()
    path = str(tmp_path / "t.pcap")
    with open(path, "wb") as fh:
        tp = TracePcap(fh)
        for p in pkts:
            tp.write(event(p, ts_ns=time.monotonic_ns()))
    lines = tcpdump(path, "-tt", "-e")
    assert len(lines) == len(pkts), lines
    assert "IPv4" in lines[0] and "198.51.100.7.40000 > 198.51.100.1.5000: UDP, length 0" in lines[0]
    assert "IPv6" in lines[1] and "2001:db8::1.40000 > 2001:db8:ffff::1.22: Flags [S]" in lines[1]
    assert "192.0.2.9 > 198.51.100.1: ICMP echo request" in lines[2]
    assert "203.0.113.5.4444 > 198.51.100.1.6000: UDP, length 400" in lines[3]
    assert "length 442" in lines[3]  # the frame's length on the wire, not the 128 bytes captured
    assert "vlan 100" in lines[4] and "192.0.2.10.1234 > 198.51.100.1.6100: UDP, length 0" in lines[4]
    for ln in lines:  # -tt: seconds since the epoch, now
        assert abs(float(ln.split()[0]) - time.time()) < 60, ln


def test_open_capture_refuses_symlinks_and_is_private(tmp_path: Any) -> None:
    target = tmp_path / "victim"
    target.write_text("keep me")
    link = tmp_path / "link.pcap"
    link.symlink_to(target)
    with pytest.raises(UsageError, match="symlink"):
        open_capture(str(link))
    assert target.read_text() == "keep me"
    with pytest.raises(UsageError, match="cannot write"):
        open_capture(str(tmp_path / "no" / "such.pcap"))
    with open_capture(str(tmp_path / "new.pcap")) as fh:
        fh.write(b"x")
    assert os.stat(tmp_path / "new.pcap").st_mode & 0o777 == 0o600
