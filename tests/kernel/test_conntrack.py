"""Connection state: replies to connections the host opened pass before the
rules (reason established), ICMP errors about them too (related);
unsolicited and forged packets go through the rules.

Two halves: hand-written cases through a tester (the egress program is
test-run for what the host sends, the XDP program for what arrives), then
real traffic between two namespaces with the filter on the receiving host
under a drop policy: TCP, UDP, ping, PMTU discovery from a crafted "packet
too big" / "fragmentation needed", and what must stay out."""

from __future__ import annotations

import json
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import packets as P
from helpers.cli import fails, ok
from helpers.env import NetPair, needs_root, sh
from helpers.netio import Echo, netns

from pyxdp import Filter, FlowState, Reason, RuleSetSpec, UsageError, Verdict, format_ruleset, parse_ruleset

pytestmark = needs_root

SYN, ACK, FIN, RST, PSH = 0x02, 0x10, 0x01, 0x04, 0x08
HOST4, PEER4, OTHER4 = "10.0.0.2", "10.0.0.1", "10.0.0.3"
HOST6, PEER6 = "2001:db8::2", "2001:db8::1"
XDP_DROP, XDP_PASS = 1, 2


def v4(src: str, dst: str, proto: int, l4: bytes, tags: tuple[tuple[int, int], ...] = ()) -> bytes:
    return P.eth(P.ETH_IP, P.ipv4(src, dst, proto, l4), tags)


def v6(src: str, dst: str, proto: int, l4: bytes) -> bytes:
    return P.eth(P.ETH_IPV6, P.ipv6(src, dst, proto, l4))


def echo(typ: int, ident: int) -> bytes:
    return P.icmp(typ, 0, struct.pack("!HH", ident, 1))


@pytest.fixture
def host(flt: Any) -> Iterator[tuple[Any, Any]]:
    """A drop policy allowing 22/tcp, and a tester of it."""
    flt.set_policy(Verdict.DROP)
    flt.allow("22/tcp")
    with flt.tester() as t:
        yield flt, t


def why(t: Any, pkt: bytes) -> tuple[Verdict, Reason]:
    r = t.run(pkt)
    return r.verdict, r.reason


PASS_EST = (Verdict.PASS, Reason.ESTABLISHED)
PASS_REL = (Verdict.PASS, Reason.RELATED)
DROPPED = (Verdict.DROP, Reason.POLICY)


def test_udp_reply_and_forgeries(host: tuple[Any, Any]) -> None:
    _flt, t = host
    reply = v4(PEER4, HOST4, P.UDP, P.udp(53, 40000, b"a"))
    assert why(t, reply) == DROPPED  # nothing sent yet
    t.send(v4(HOST4, PEER4, P.UDP, P.udp(40000, 53, b"q")))
    assert why(t, reply) == PASS_EST
    for forged in (v4(PEER4, HOST4, P.UDP, P.udp(54, 40000)),  # another source port
                   v4(PEER4, HOST4, P.UDP, P.udp(53, 40001)),  # another destination port
                   v4(OTHER4, HOST4, P.UDP, P.udp(53, 40000)),  # another source address
                   v4(PEER4, "10.0.0.9", P.UDP, P.udp(53, 40000)),  # to another address
                   v4(PEER4, HOST4, P.TCP, P.tcp(53, 40000, flags=ACK))):  # another protocol
        assert why(t, forged) == DROPPED, forged.hex()
    [f] = t.flows()
    assert (f.proto, f.local, f.remote, f.state) == ("udp", "10.0.0.2:40000", "10.0.0.1:53", FlowState.UDP_STREAM)
    assert 119 < f.expires_in <= 120  # answered: the stream timeout


def test_ipv6_and_vlan_replies(host: tuple[Any, Any]) -> None:
    _flt, t = host
    t.send(v6(HOST6, PEER6, P.UDP, P.udp(40000, 123)))
    assert why(t, v6(PEER6, HOST6, P.UDP, P.udp(123, 40000))) == PASS_EST
    assert why(t, v6(PEER6, HOST6, P.UDP, P.udp(123, 40002))) == DROPPED
    tags = ((P.VLAN_Q, 7), (P.VLAN_AD, 9))
    t.send(v4(HOST4, PEER4, P.UDP, P.udp(40005, 53), tags))
    assert why(t, v4(PEER4, HOST4, P.UDP, P.udp(53, 40005), tags)) == PASS_EST
    assert why(t, v4(PEER4, HOST4, P.UDP, P.udp(53, 40005))) == PASS_EST  # the tags are not part of the flow


def test_tcp_states(host: tuple[Any, Any]) -> None:
    flt, t = host
    isn = 0x89ABCDEF

    def seg(flags: int, sport: int = 443, dport: int = 40000, ack: int = 0) -> bytes:
        return v4(PEER4, HOST4, P.TCP, P.tcp(sport, dport, flags=flags, seq=7, ack=ack))

    def out(flags: int, seq: int = isn + 1) -> None:
        t.send(v4(HOST4, PEER4, P.TCP, P.tcp(40000, 443, flags=flags, seq=seq)))

    def state() -> FlowState | None:
        fl = [f for f in t.flows() if f.proto == "tcp"]
        return fl[0].state if fl else None

    t.send(v4(HOST4, PEER4, P.TCP, P.tcp(40009, 443, flags=SYN | ACK)))  # the host answering someone: not tracked
    assert state() is None
    out(ACK)  # a segment of no flow the host opened: nothing recorded
    assert state() is None
    out(SYN, seq=isn)
    assert state() == FlowState.SYN_SENT
    # before the answer only a SYN-ACK, or a RST with ACK, acknowledging the host's SYN belongs
    for flags in (PSH, ACK, PSH | ACK, FIN | ACK, RST, 0):
        assert why(t, seg(flags, ack=isn + 1)) == DROPPED, flags
    assert why(t, seg(SYN)) == DROPPED  # a new connection from outside is for the rules
    for wrong in (0, isn, isn + 2, isn + 1 - 65536, isn + 1 + 65536):
        assert why(t, seg(SYN | ACK, ack=wrong)) == DROPPED, hex(wrong)  # a forged answer (RFC 793: not acceptable)
        assert why(t, seg(RST | ACK, ack=wrong)) == DROPPED, hex(wrong)
    assert why(t, seg(RST | ACK, ack=isn + 1)) == PASS_EST
    assert why(t, seg(SYN | ACK, ack=isn + 1)) == PASS_EST
    assert why(t, seg(SYN | ACK, sport=444, ack=isn + 1)) == DROPPED
    assert state() == FlowState.SYN_SENT
    out(SYN, seq=0xFFFFFFFF)  # the same ports anew (another ISN): its answer acknowledges 0
    assert why(t, seg(SYN | ACK, ack=isn + 1)) == DROPPED
    assert why(t, seg(SYN | ACK, ack=0)) == PASS_EST
    out(ACK)
    assert state() == FlowState.ESTABLISHED
    assert why(t, seg(ACK | PSH)) == PASS_EST  # no sequence checks once established
    assert why(t, seg(SYN)) == DROPPED
    assert why(t, seg(RST)) == PASS_EST
    assert state() == FlowState.ESTABLISHED  # what arrives never ends a flow: a forged RST cannot
    assert why(t, seg(FIN | ACK)) == PASS_EST
    out(FIN | ACK)
    assert state() == FlowState.FIN
    out(ACK)
    assert state() == FlowState.FIN  # stays closing
    out(RST)
    assert state() == FlowState.CLOSE
    out(ACK)
    assert state() == FlowState.CLOSE  # closed stays closed until it expires or a new SYN
    out(SYN, seq=5)
    assert state() == FlowState.SYN_SENT
    assert why(t, seg(SYN | ACK, ack=6)) == PASS_EST
    assert why(t, seg(ACK, sport=443, dport=22)) == (Verdict.PASS, Reason.RULE_ALLOW)  # rules still apply
    assert flt.stats().lines == ()  # the tester's counters are its own


def test_ping_replies(host: tuple[Any, Any]) -> None:
    _flt, t = host
    t.send(v4(HOST4, PEER4, P.ICMP, echo(8, 77)))
    assert why(t, v4(PEER4, HOST4, P.ICMP, echo(0, 77))) == PASS_EST
    assert why(t, v4(PEER4, HOST4, P.ICMP, echo(0, 78))) == DROPPED
    assert why(t, v4(PEER4, HOST4, P.ICMP, echo(8, 77))) == DROPPED  # a request is not a reply
    t.send(v6(HOST6, PEER6, P.ICMPV6, echo(128, 5)))
    assert why(t, v6(PEER6, HOST6, P.ICMPV6, echo(129, 5))) == PASS_EST
    assert why(t, v6(PEER6, HOST6, P.ICMPV6, echo(129, 6))) == DROPPED
    assert {(f.proto, f.local) for f in t.flows()} == {("icmp", "10.0.0.2 id 77"), ("icmpv6", "2001:db8::2 id 5")}


def test_icmp_errors_about_the_hosts_flows(host: tuple[Any, Any]) -> None:
    _flt, t = host
    sent_tcp = P.ipv4(HOST4, PEER4, P.TCP, P.tcp(40000, 443, flags=SYN))
    sent_udp6 = P.ipv6(HOST6, PEER6, P.UDP, P.udp(40001, 53, b"x" * 40))
    t.send(P.eth(P.ETH_IP, sent_tcp))
    t.send(P.eth(P.ETH_IPV6, sent_udp6))

    def err4(typ: int, code: int, quote: bytes, dst: str = HOST4) -> bytes:
        return v4("192.0.2.1", dst, P.ICMP, P.icmp(typ, code, b"\0\0\x04\xb0" + quote))

    def err6(typ: int, quote: bytes, dst: str = HOST6) -> bytes:
        return v6("2001:db8:ffff::1", dst, P.ICMPV6, P.icmp(typ, 0, b"\0\0\x05\x00" + quote))

    assert why(t, err4(3, 4, sent_tcp)) == PASS_REL  # fragmentation needed
    assert why(t, err4(11, 0, sent_tcp[:28])) == PASS_REL  # time exceeded, the minimal quote
    assert why(t, err4(12, 0, sent_tcp)) == PASS_REL
    assert why(t, err6(2, sent_udp6)) == PASS_REL  # packet too big
    assert why(t, err6(1, sent_udp6[:48])) == PASS_REL
    assert why(t, err6(3, sent_udp6)) == PASS_REL
    other = P.ipv4(HOST4, PEER4, P.TCP, P.tcp(40000, 444, flags=SYN))
    spoofed = P.ipv4(OTHER4, PEER4, P.TCP, P.tcp(40000, 443, flags=SYN))
    for bad in (err4(3, 4, other),  # about no flow of the host's
                err4(3, 4, spoofed),  # the quote's source is not the host
                err4(3, 4, sent_tcp, dst=OTHER4),  # sent to someone other than the quote's source
                err4(3, 4, sent_tcp[:27]),  # fewer than 8 bytes of the quoted datagram
                err4(5, 0, sent_tcp),  # a redirect is not let in
                err6(2, sent_udp6[:47])):
        assert why(t, bad) == DROPPED, bad.hex()


def test_state_off(host: tuple[Any, Any]) -> None:
    flt, t = host
    flt.set_established(False)
    assert not flt.established
    t.send(v4(HOST4, PEER4, P.UDP, P.udp(40000, 53)))
    assert t.flows() == []  # nothing is recorded
    assert why(t, v4(PEER4, HOST4, P.UDP, P.udp(53, 40000))) == DROPPED
    flt.set_established(True)
    t.send(v4(HOST4, PEER4, P.UDP, P.udp(40000, 53)))
    assert why(t, v4(PEER4, HOST4, P.UDP, P.udp(53, 40000))) == PASS_EST
    flt.set_established(False)  # turning it off stops the matching at once
    assert why(t, v4(PEER4, HOST4, P.UDP, P.udp(53, 40000))) == DROPPED


def test_flows_expire(host: tuple[Any, Any]) -> None:
    flt, t = host
    flt.set_timeouts({"udp": 1, "icmp": 2})
    assert flt.timeouts()["udp"] == 1 and flt.timeouts()["udp_stream"] == 120
    t.send(v4(HOST4, PEER4, P.UDP, P.udp(40000, 53)))
    t.send(v4(HOST4, PEER4, P.ICMP, echo(8, 9)))
    time.sleep(1.3)
    assert why(t, v4(PEER4, HOST4, P.UDP, P.udp(53, 40000))) == DROPPED  # expired unanswered
    assert why(t, v4(PEER4, HOST4, P.ICMP, echo(0, 9))) == PASS_EST
    assert [f.proto for f in t.flows()] == ["icmp"]
    time.sleep(1.0)
    assert t.flows() == []


def test_timeouts_checked(flt: Any) -> None:
    before = flt.timeouts()
    for bad in ({"tcp_forever": 5}, {"udp": 0}, {"udp": -1}, {"udp": 10**9}, {"udp": "60"}, {"udp": True}):
        with pytest.raises(UsageError):
            flt.set_timeouts(bad)
    assert flt.timeouts() == before


def test_rule_file_carries_state() -> None:
    spec = parse_ruleset('policy = "drop"\nestablished = "off"\nrules = ["allow 22/tcp"]\n'
                         "[timeouts]\nudp = 60\ntcp_established = 7200\n")
    assert spec.established is False and spec.timeouts == {"udp": 60, "tcp_established": 7200}
    assert parse_ruleset(format_ruleset(spec)) == spec
    for bad, what in (('established = "maybe"', "established"), ("[timeouts]\nudp = 0", "udp"),
                      ("[timeouts]\nudpp = 5", "udpp"), ("timeouts = 5", "timeouts")):
        with pytest.raises(UsageError, match=what):
            parse_ruleset(bad)


def test_apply_and_save_carry_state(flt: Any) -> None:
    flt.apply(parse_ruleset('established = "off"\n[timeouts]\nudp = 45\n'))
    assert not flt.established and flt.timeouts()["udp"] == 45
    saved = flt.ruleset()
    assert saved.established is False and saved.timeouts == {"udp": 45}
    flt.apply(RuleSetSpec(established=True))
    assert flt.established and flt.timeouts()["udp"] == 45  # what the file does not name stays


# ---- real traffic ------------------------------------------------------------------------------

A4, B4, A6, B6 = "10.77.0.1", "10.77.0.2", "fd77::1", "fd77::2"


def in_ns(ns: str, family: int, kind: int, proto: int = 0) -> socket.socket:
    with netns(ns):
        return socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6, kind, proto)


def received(s: socket.socket, seconds: float) -> bytes | None:
    s.settimeout(seconds)
    try:
        return s.recv(65535)
    except (TimeoutError, OSError):
        return None


def dev_mac(ns: str, dev: str) -> bytes:
    info = json.loads(sh("ip", "-j", "-n", ns, "link", "show", dev).stdout)[0]
    return bytes.fromhex(info["address"].replace(":", ""))


def inject(pair: NetPair, frame: bytes) -> None:
    """Send a raw Ethernet frame out of ``va`` (namespace a) to ``vb``."""
    with netns(pair.a):
        raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    with raw:
        raw.bind((pair.va, 0))
        raw.send(dev_mac(pair.b, pair.vb) + dev_mac(pair.a, pair.va) + frame[12:])


def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def counted(flt: Any, reason: Reason, verdict: Verdict) -> int:
    return flt.stats().get(verdict, reason).packets


def wait_count(flt: Any, reason: Reason, verdict: Verdict, want: int) -> int:
    deadline = time.monotonic() + 3
    while (n := counted(flt, reason, verdict)) < want and time.monotonic() < deadline:
        time.sleep(0.02)
    return n


@pytest.fixture
def guarded(pin_dir: str, netpair: NetPair) -> Iterator[tuple[Any, NetPair]]:
    """The filter on ``vb`` (namespace b: the host) under 'policy drop' +
    'allow 22/tcp'; namespace a is the rest of the world."""
    with Filter.open(pin_dir, create=True) as flt:
        flt.attach(netpair.vb, netns=netpair.b)
        flt.set_policy(Verdict.DROP)
        flt.allow("22/tcp")
        yield flt, netpair


def test_host_still_talks_under_drop_policy(guarded: tuple[Any, NetPair]) -> None:
    """TCP with data both ways, a DNS-like UDP exchange, ping over IPv4 and
    IPv6: all opened by the host, all answered, under 'policy drop'."""
    flt, pair = guarded
    tcp = Echo(pair.a, A4, 8080)
    udp = Echo(pair.a, A6, 5353, socket.SOCK_DGRAM)
    try:
        c = in_ns(pair.b, 4, socket.SOCK_STREAM)
        with c:
            c.settimeout(5)
            c.connect((A4, 8080))
            blob = bytes(range(256)) * 800  # 200 KiB, many segments each way
            c.sendall(blob)
            got = b""
            while len(got) < len(blob):
                chunk = c.recv(65536)
                assert chunk, "connection closed early"
                got += chunk
            assert got == blob
            [f] = [f for f in flt.flows() if f.proto == "tcp"]
            assert (f.local.split(":")[0], f.remote, f.state) == (B4, f"{A4}:8080", FlowState.ESTABLISHED)
        q = in_ns(pair.b, 6, socket.SOCK_DGRAM)
        with q:
            q.connect((A6, 5353))
            q.send(b"\x12\x34 what is the address of example.test?")
            assert received(q, 3) == b"\x12\x34 what is the address of example.test?"
        for fam, peer in ((4, A4), (6, A6)):
            proto = socket.IPPROTO_ICMP if fam == 4 else socket.IPPROTO_ICMPV6
            ping = in_ns(pair.b, fam, socket.SOCK_RAW, proto)
            with ping:
                body = struct.pack("!HH", 0x4242, 1) + b"pyxdp"
                typ = 8 if fam == 4 else 128
                msg = struct.pack("!BBH", typ, 0, 0) + body
                if fam == 4:  # the kernel fills in ICMPv6 checksums, not ICMP's
                    msg = struct.pack("!BBH", typ, 0, csum(msg)) + body
                ping.sendto(msg, (peer, 0))
                deadline = time.monotonic() + 3
                answered = False
                while not answered and time.monotonic() < deadline:
                    data = received(ping, 0.5) or b""
                    icmp = data[(data[0] & 15) * 4:] if fam == 4 and data else data
                    answered = icmp[:1] == bytes([0 if fam == 4 else 129]) and icmp[4:6] == b"\x42\x42"
                assert answered, f"no echo reply over IPv{fam}"
    finally:
        tcp.close()
        udp.close()
    st = flt.stats()
    assert st.get(Verdict.PASS, Reason.ESTABLISHED).packets >= 20
    assert {ln.interface for ln in st.lines} == {f"{pair.b}/{pair.vb}"}  # counted per interface
    assert {f.proto for f in flt.flows()} >= {"tcp", "udp", "icmp", "icmpv6"}
    opened = flt.flows_opened()
    assert opened[4] >= 2 and opened[6] >= 2  # TCP + ping over IPv4; UDP + ping over IPv6
    assert flt.stats().get(Verdict.PASS, Reason.RULE_ALLOW).packets == 0


def test_unsolicited_and_forged_stay_out(guarded: tuple[Any, NetPair]) -> None:
    flt, pair = guarded
    srv = Echo(pair.b, B4, 2222)  # a service on the host no rule allows
    try:
        c = in_ns(pair.a, 4, socket.SOCK_STREAM)
        with c:
            c.settimeout(1)
            with pytest.raises(OSError):
                c.connect((B4, 2222))
        assert srv.accepted == 0
    finally:
        srv.close()
    # a DNS-like exchange the host opens, then "replies" that are not
    peer = in_ns(pair.a, 4, socket.SOCK_DGRAM)
    other = in_ns(pair.a, 4, socket.SOCK_DGRAM)
    mine = in_ns(pair.b, 4, socket.SOCK_DGRAM)
    neighbour = in_ns(pair.b, 4, socket.SOCK_DGRAM)
    with peer, other, mine, neighbour:
        peer.bind((A4, 5300))
        other.bind((A4, 5301))
        mine.bind((B4, 0))
        neighbour.bind((B4, 0))
        mine.connect((A4, 5300))
        mine.send(b"question")
        assert received(peer, 3) == b"question"
        peer.sendto(b"answer", mine.getsockname())
        assert received(mine, 3) == b"answer"
        drops = counted(flt, Reason.POLICY, Verdict.DROP)
        other.sendto(b"forged: wrong source port", mine.getsockname())
        peer.sendto(b"forged: wrong destination port", neighbour.getsockname())
        peer.sendto(b"unsolicited", (B4, 9))
        assert wait_count(flt, Reason.POLICY, Verdict.DROP, drops + 3) >= drops + 3
        mine.setblocking(False)
        neighbour.setblocking(False)
        assert received(mine, 0.2) is None and received(neighbour, 0.2) is None
    # the allowed service still works, and serving it records no flow
    ssh = Echo(pair.b, B4, 22)
    try:
        c = in_ns(pair.a, 4, socket.SOCK_STREAM)
        with c:
            c.settimeout(3)
            c.connect((B4, 22))
            c.sendall(b"SSH-2.0-test\r\n")
            assert c.recv(100) == b"SSH-2.0-test\r\n"
    finally:
        ssh.close()
    assert [f for f in flt.flows() if f.proto == "tcp"] == []


def test_flow_expires(guarded: tuple[Any, NetPair]) -> None:
    flt, pair = guarded
    flt.set_timeouts({"udp": 1, "udp_stream": 1})
    peer = in_ns(pair.a, 4, socket.SOCK_DGRAM)
    mine = in_ns(pair.b, 4, socket.SOCK_DGRAM)
    with peer, mine:
        peer.bind((A4, 5300))
        mine.bind((B4, 0))
        mine.sendto(b"q", (A4, 5300))
        assert received(peer, 3) == b"q"
        peer.sendto(b"a", mine.getsockname())
        assert received(mine, 3) == b"a"
        time.sleep(2.2)
        assert flt.flows() == []
        drops = counted(flt, Reason.POLICY, Verdict.DROP)
        peer.sendto(b"late", mine.getsockname())
        assert wait_count(flt, Reason.POLICY, Verdict.DROP, drops + 1) >= drops + 1  # (and the link's chatter)
        assert received(mine, 0.2) is None


def test_icmp_errors_reach_the_host(guarded: tuple[Any, NetPair]) -> None:
    """A router's 'fragmentation needed' (IPv4) and 'packet too big' (IPv6)
    about a flow the host opened pass as related, and the host's kernel
    learns the smaller path MTU (PMTU discovery works under 'policy drop');
    a time exceeded passes too; the same error about no flow is dropped."""
    flt, pair = guarded
    route = ("ip", "-n", pair.b)
    for fam, peer, me in ((4, A4, B4), (6, A6, B6)):
        sh(*route, "-6" if fam == 6 else "-4", "route", "flush", "cache", check=False)
        s = in_ns(pair.b, fam, socket.SOCK_DGRAM)
        with s:
            s.connect((peer, 5400))
            s.send(b"x" * 64)
            port = s.getsockname()[1]
            udp = P.udp(port, 5400, b"x" * 64)
            sent = P.ipv4(me, peer, P.UDP, udp) if fam == 4 else P.ipv6(me, peer, P.UDP, udp)
            if fam == 4:  # DF set, as PMTU discovery sends it
                sent = sent[:6] + b"\x40\x00" + sent[8:]
                err = P.icmp(3, 4, struct.pack("!HH", 0, 1200) + sent)
                err = err[:2] + struct.pack("!H", csum(err)) + err[4:]
                frame = P.eth(P.ETH_IP, P.ipv4(peer, me, P.ICMP, err))
                frame = frame[:24] + struct.pack("!H", csum(frame[14:34])) + frame[26:]
            else:
                err = P.icmp(2, 0, struct.pack("!I", 1280) + sent)
                pseudo = (socket.inet_pton(socket.AF_INET6, peer) + socket.inet_pton(socket.AF_INET6, me)
                          + struct.pack("!IxxxB", len(err), P.ICMPV6))
                err = err[:2] + struct.pack("!H", csum(pseudo + err)) + err[4:]
                frame = P.eth(P.ETH_IPV6, P.ipv6(peer, me, P.ICMPV6, err))
            related = counted(flt, Reason.RELATED, Verdict.PASS)
            inject(pair, frame)
            assert wait_count(flt, Reason.RELATED, Verdict.PASS, related + 1) == related + 1
            want = "mtu 1200" if fam == 4 else "mtu 1280"
            deadline = time.monotonic() + 3
            while want not in (out := sh(*route, "route", "get", peer).stdout) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert want in out, out
            # time exceeded about the same flow: related; about another port: the rules (dropped). The
            # policy's drop counter also counts the link's own chatter (an MLD report), so that case is
            # told by the related counter staying put while a drop is counted
            for dport, related in ((5400, True), (5401, False)):
                q = P.udp(port, dport, b"x" * 64)
                quoted = P.ipv4(me, peer, P.UDP, q) if fam == 4 else P.ipv6(me, peer, P.UDP, q)
                te = P.icmp(11 if fam == 4 else 3, 0, b"\0\0\0\0" + quoted)
                ip = P.ipv4(peer, me, P.ICMP, te) if fam == 4 else P.ipv6(peer, me, P.ICMPV6, te)
                rel = counted(flt, Reason.RELATED, Verdict.PASS)
                drops = counted(flt, Reason.POLICY, Verdict.DROP)
                inject(pair, P.eth(P.ETH_IP if fam == 4 else P.ETH_IPV6, ip))
                if related:
                    assert wait_count(flt, Reason.RELATED, Verdict.PASS, rel + 1) == rel + 1
                else:
                    assert wait_count(flt, Reason.POLICY, Verdict.DROP, drops + 1) >= drops + 1
                    assert counted(flt, Reason.RELATED, Verdict.PASS) == rel


def test_cli_state_and_flows(pin_dir: str) -> None:
    with Filter.open(pin_dir, create=True):
        pass
    assert ok("state", pin_dir=pin_dir).startswith("connection state: on")
    assert json.loads(ok("state", "--json", pin_dir=pin_dir))["timeouts"]["udp"] == 30
    assert ok("state", "off", "--timeout", "udp=1m", "--timeout", "tcp-fin=90", pin_dir=pin_dir).startswith(
        "connection state: off")
    got = json.loads(ok("state", "--json", pin_dir=pin_dir))
    assert got["established"] is False and got["timeouts"]["udp"] == 60 and got["timeouts"]["tcp_fin"] == 90
    assert "connection state is off" in ok("flows", pin_dir=pin_dir)
    ok("state", "on", pin_dir=pin_dir)
    assert json.loads(ok("flows", "--json", pin_dir=pin_dir)) == {"established": True, "flows": [],
                                                                   "opened": {"ipv4": 0, "ipv6": 0}}
    assert "connection state: on" in ok("status", pin_dir=pin_dir)
    for says, bad in (("bad state", ["state", "maybe"]), ("NAME=SECONDS", ["state", "--timeout", "udp"]),
                      ("at least 1 second", ["state", "--timeout", "udp=0"]),
                      ("unknown timeout", ["state", "--timeout", "nope=5"]),
                      ("udp=x", ["state", "--timeout", "udp=x"])):
        fails(2, says, *bad, pin_dir=pin_dir)
    assert json.loads(ok("state", "--json", pin_dir=pin_dir))["timeouts"]["udp"] == 60  # nothing half-applied
    saved = ok("save", pin_dir=pin_dir)
    assert 'established = "on"' in saved and "udp = 60" in saved and "tcp_fin = 90" in saved


# ---- the reply guard ---------------------------------------------------------------------------


def _guard_of(flt: Any, slot: int) -> int:
    from pyxdp import layout as L

    return int(L.U64.unpack(flt.state.map("ctguard")[L.U32.pack(slot)])[0])


def test_reply_guard(flt: Any) -> None:
    """A packet whose destination port no live flow uses skips the flow
    lookup (bpf/lib/conntrack.h ct_guard): the egress program raises the
    port's guard to the flow's expiry (a UDP flow's by its stream timeout
    too, which its first answer moves it to), the sweeper advances the clock
    it is compared with. A flow written behind the egress program's back is
    not looked up at all until cover_flows guards its port."""
    import os

    from pyxdp import layout as L
    from pyxdp.kernel.bpf import Program
    from pyxdp.store.clock import monotonic_ns
    from pyxdp.store.guard import cover_flows, guard_slot
    from pyxdp.store.objects import EGRESS_PIN

    flt.set_policy(Verdict.DROP)
    flt.set_timeouts({"udp": 1, "udp_stream": 4})
    xdp = flt.program()
    eg = Program.from_pin(os.path.join(flt.pin_dir, EGRESS_PIN))
    try:
        deadline = time.monotonic() + 5
        while _guard_of(flt, L.CT_CLOCK) <= 1:  # armed at creation (1); the sweeper's tick sets the clock
            assert time.monotonic() < deadline, "the sweeper never advanced the guard's clock"
            time.sleep(0.05)
        reply = v4(PEER4, HOST4, P.UDP, P.udp(53, 40000))
        assert xdp.test_run(reply).retval == XDP_DROP  # nothing asked: no flow
        t0 = monotonic_ns()
        eg.test_run(v4(HOST4, PEER4, P.UDP, P.udp(40000, 53)))  # the host asks
        coarse = 20_000_000  # the datapath reads the clock coarsely: up to a tick behind
        assert _guard_of(flt, guard_slot(P.UDP, 40000)) >= t0 + 5 * 10**9 - coarse  # udp 1 s + stream 4 s
        assert _guard_of(flt, guard_slot(P.UDP, 40001)) == 0
        assert xdp.test_run(reply).retval == XDP_PASS  # answered: the flow moves to the stream timeout
        time.sleep(2.2)  # past the UDP timeout, within the stream's; the clock has moved past t0 + 1 s
        assert _guard_of(flt, L.CT_CLOCK) > t0 + 10**9
        assert xdp.test_run(reply).retval == XDP_PASS
        # a flow the guard does not cover is never looked up
        other = v4(PEER4, HOST4, P.UDP, P.udp(53, 40001))
        flows4 = flt.state.map("flows4")
        flows4.update(L.FLOW_KEY4.pack(4, P.UDP, 53, 40001, 0, socket.inet_aton(PEER4), socket.inet_aton(HOST4)),
                      L.FLOW.pack(monotonic_ns() + 60 * 10**9, FlowState.UDP_STREAM, 0))
        assert xdp.test_run(other).retval == XDP_DROP
        assert cover_flows([flows4], flt.state.map("ctguard"), monotonic_ns(), 120) == 2
        assert xdp.test_run(other).retval == XDP_PASS
    finally:
        eg.close()
        xdp.close()
