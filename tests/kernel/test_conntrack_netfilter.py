"""Connection state against netfilter conntrack, with real sockets.

Two namespaces joined by a veth: the host (``b``), whose sockets open a TCP
connection, a UDP exchange and a ping to the peer (``a``); the peer's own
stack is silenced (nftables drops everything it would receive), and raw
frames crafted from what it sniffs answer for it: the right SYN-ACK, forged
ones, segments that do not belong in SYN-SENT, data and RSTs once
established, UDP and echo replies, ICMP errors quoting the flows. The same
probes run twice, in fresh namespaces: once with pyxdp on the host's veth
(``policy drop``, no rules), once with nftables' ``ct state
established,related accept`` and a drop policy. What reaches the host's stack
is counted by an nftables chain that runs after either filter; a fence (a
reply in a UDP flow, which both let in) sent after each probe from the same
CPU tells when the probe has been judged.

Every probe's outcome under pyxdp is checked against what the README says;
where netfilter decides otherwise, the class must be one the README's
connection-state section lists as a difference.
"""

from __future__ import annotations

import json
import os
import re
import select
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from helpers import packets as P
from helpers.env import NetPair, needs_root, sh
from helpers.netio import netns

from kernel.test_conntrack import csum, dev_mac, in_ns
from pyxdp import Filter, FlowState, Verdict

pytestmark = needs_root

SYN, ACK, FIN, RST, PSH = 0x02, 0x10, 0x01, 0x04, 0x08
HOST = {4: "10.77.0.2", 6: "fd77::2"}
PEER = {4: "10.77.0.1", 6: "fd77::1"}
FENCE_PORT = 9
IP_TYPES = (b"\x08\x00", b"\x86\xdd")
PISN = 0x10000000  # the peer's ISN in the answers it crafts
README = os.path.join(os.path.dirname(__file__), "..", "..", "README.md")

# Probes in syn-sent, each on a connection of its own; "..., then the SYN-ACK" is the right answer after it
SYN_SENT_PROBES = ("syn-sent: ACK", "syn-sent: PSH+ACK with data", "syn-sent: FIN+ACK", "syn-sent: RST without ACK",
                   "syn-sent: RST+ACK, ack ahead of ISN+1", "syn-sent: RST+ACK, ack behind ISN+1",
                   "syn-sent: SYN-ACK, ack ahead of ISN+1",
                   "syn-sent: SYN-ACK, ack behind ISN+1", "syn-sent: SYN from the peer",
                   "syn-sent: ICMP error quoting the SYN")
# What reaches the host's stack under pyxdp, per probe class (the README's state section). The classes
# where netfilter conntrack decides otherwise are listed there, under "Against netfilter conntrack".
PYXDP = {
    "syn-sent: ACK": False,
    "syn-sent: PSH+ACK with data": False,
    "syn-sent: FIN+ACK": False,
    "syn-sent: RST without ACK": False,
    "syn-sent: RST+ACK, ack ahead of ISN+1": False,
    "syn-sent: RST+ACK, ack behind ISN+1": False,
    "syn-sent: SYN-ACK, ack ahead of ISN+1": False,
    "syn-sent: SYN-ACK, ack behind ISN+1": False,
    "syn-sent: SYN from the peer": False,
    "syn-sent: ICMP error quoting the SYN": True,
    **{f"{name}, then the SYN-ACK": True for name in SYN_SENT_PROBES},
    "syn-sent: SYN-ACK": True,
    "syn-sent: RST+ACK, ack ISN+1": True,
    "established: data": True,
    "established: data out of window": True,
    "established: RST out of window": True,
    "established: RST in window, not exact": True,
    "established: RST exact": True,
    "after the peer's RST: data": True,
    "udp: reply": True,
    "udp: reply from another port": False,
    "udp: ICMP error quoting it": True,
    "udp: ICMP error quoting a datagram never sent": False,
    "icmp: echo reply": True,
    "icmp: echo reply, another identifier": False,
    "icmp: echo request from the peer": False,
}


def checksummed(fam: int, src: str, dst: str, proto: int, l4: bytes) -> bytes:
    """An IP packet with valid IP (v4) and L4 checksums, as a real sender makes."""
    at = {P.TCP: 16, P.UDP: 6, P.ICMP: 2, P.ICMPV6: 2}[proto]
    l4 = l4[:at] + b"\0\0" + l4[at + 2:]
    if fam == 4:
        pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, proto, len(l4))
        l4 = l4[:at] + struct.pack("!H", csum(l4 if proto == P.ICMP else pseudo + l4)) + l4[at + 2:]
        ip = P.ipv4(src, dst, proto, l4)
        return ip[:10] + struct.pack("!H", csum(ip[:20])) + ip[12:]
    pseudo = (socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
              + struct.pack("!IxxxB", len(l4), proto))
    l4 = l4[:at] + struct.pack("!H", csum(pseudo + l4)) + l4[at + 2:]
    return P.ipv6(src, dst, proto, l4)


class Peer:
    """The rest of the world, in namespace ``a``: sniffs what the host sends and
    sends crafted frames to it; nftables counts (in the host's namespace)
    what gets past the host's filter."""

    def __init__(self, pair: NetPair) -> None:
        self.pair = pair
        with netns(pair.a):
            self.raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))  # ETH_P_ALL
        self.raw.bind((pair.va, 0))
        self.macs = dev_mac(pair.b, pair.vb) + dev_mac(pair.a, pair.va)
        self.cpu = min(os.sched_getaffinity(0))
        self.fence: bytes = b""

    def close(self) -> None:
        self.raw.close()

    def sniff(self, want: Callable[[bytes], bool], seconds: float = 3) -> bytes:
        """The first IP packet the host sent that ``want`` accepts, among those
        not read yet (the socket holds what went out since the peer was made)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([self.raw], [], [], left)[0]:
                break
            frame, addr = self.raw.recvfrom(65535)
            if addr[2] != socket.PACKET_OUTGOING and frame[12:14] in IP_TYPES and want(frame[14:]):
                return frame[14:]
        raise AssertionError("the host sent nothing the test waited for")

    def counters(self) -> tuple[int, int]:
        out = json.loads(sh("ip", "netns", "exec", self.pair.b, "nft", "-j", "list", "counters", "table", "inet",
                            "pxcount").stdout)
        got = {c["counter"]["name"]: c["counter"]["packets"] for c in out["nftables"] if "counter" in c}
        return got["fence"], got["probe"]

    def send(self, fam: int, ip: bytes) -> None:
        self.raw.send(self.macs + (b"\x08\x00" if fam == 4 else b"\x86\xdd") + ip)

    def arrives(self, fam: int, ip: bytes) -> bool:
        """Whether ``ip`` from the peer reaches the host's stack: sent, then the
        fence from the same CPU (one queue, in order); judged when the fence is in."""
        fence, probe = self.counters()
        own = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {self.cpu})
        try:
            self.send(fam, ip)
            self.send(4, self.fence)
        finally:
            os.sched_setaffinity(0, own)
        deadline = time.monotonic() + 5
        while (now := self.counters())[0] == fence:
            assert time.monotonic() < deadline, "the fence did not arrive"
            time.sleep(0.005)
        return now[1] > probe


def topology(tag: str, how: str) -> NetPair:
    """Fresh namespaces; the peer's stack silenced, static neighbours (no ARP
    or ND needed), the host's counting chain, and nftables' conntrack filter
    when ``how`` is "nft"."""
    pair = NetPair(tag)
    try:
        for ns, dev, peer_ns, peer_dev, addrs in ((pair.b, pair.vb, pair.a, pair.va, PEER),
                                                  (pair.a, pair.va, pair.b, pair.vb, HOST)):
            mac = dev_mac(peer_ns, peer_dev).hex(":")
            for addr in addrs.values():
                sh("ip", "-n", ns, "neigh", "replace", addr, "lladdr", mac, "dev", dev, "nud", "permanent")
        nft(pair.a, "table inet pxsilent {\nchain in {\ntype filter hook input priority 0; policy drop\n}\n}")
        nd = "nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert"
        rules = (f"table inet pxcount {{\ncounter fence {{\n}}\ncounter probe {{\n}}\n"
                 "chain in {\ntype filter hook input priority 100; policy accept\n"
                 f"ip saddr {PEER[4]} udp sport {FENCE_PORT} counter name fence accept\n"
                 f"ip6 saddr {PEER[6]} icmpv6 type {{ {nd} }} accept\n"
                 f"ip saddr {PEER[4]} counter name probe\nip6 saddr {PEER[6]} counter name probe\n}}\n}}\n")
        nft(pair.b, rules)
        if how == "nft":
            nft(pair.b, "table inet pxfilter {\nchain in {\ntype filter hook input priority 0; policy drop\n"
                        "ct state established,related accept\n}\n}\n")
    except BaseException:
        pair.close()
        raise
    return pair


def nft(ns: str, ruleset: str) -> None:
    r = subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=ruleset, text=True, capture_output=True)
    assert r.returncode == 0, r.stderr


def tcp_of(ip: bytes) -> tuple[int, int, int, int, int]:
    """(sport, dport, seq, ack, flags) of an IP packet carrying TCP (no options or extension headers)."""
    off = (ip[0] & 15) * 4 if ip[0] >> 4 == 4 else 40
    sport, dport, seq, ack = struct.unpack_from("!HHII", ip, off)
    return sport, dport, seq, ack, ip[off + 13]


def proto_of(ip: bytes) -> int:
    return ip[9] if ip[0] >> 4 == 4 else ip[6]


def state(flt: Any, port: int) -> list[FlowState]:
    return [f.state for f in flt.flows() if f.proto == "tcp" and f.local.endswith(f":{port}")]


def probes(peer: Peer, flt: Any | None, fam: int) -> dict[str, bool]:
    """Every class of PYXDP, over ``fam``; what reached the host's stack. Also
    checks what the host's sockets see (the same under either filter)."""
    h, p = HOST[fam], PEER[fam]
    icmp = P.ICMP if fam == 4 else P.ICMPV6
    got: dict[str, bool] = {}

    def seg(dport: int, sport: int, flags: int, seq: int, ack: int, data: bytes = b"") -> bytes:
        return checksummed(fam, p, h, P.TCP, P.tcp(sport, dport, data, flags, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF))

    def error(quote: bytes, too_big: bool = False) -> bytes:
        """An ICMP error quoting ``quote`` (what the host sent): unreachable
        (port), or fragmentation needed / packet too big (harmless to TCP)."""
        if fam == 4:
            return checksummed(4, p, h, icmp, P.icmp(3, 4 if too_big else 3, struct.pack("!HH", 0, 1280) + quote))
        return checksummed(6, p, h, icmp, P.icmp(2 if too_big else 1, 0 if too_big else 4,
                                                 struct.pack("!I", 1280) + quote[:1232]))

    def connect() -> tuple[socket.socket, int, int, bytes]:
        s = in_ns(peer.pair.b, fam, socket.SOCK_STREAM)
        s.setblocking(False)
        s.bind((h, 0))
        port = s.getsockname()[1]
        assert s.connect_ex((p, 80)) == 115  # EINPROGRESS
        syn = peer.sniff(lambda ip: proto_of(ip) == P.TCP and tcp_of(ip)[0] == port and tcp_of(ip)[4] == SYN)
        return s, port, tcp_of(syn)[2], syn

    def connected(s: socket.socket) -> int:
        """0 when ``s`` connected, the errno when its connect failed, -1 when still under way."""
        if not select.select([], [s], [], 3)[1]:
            return -1
        return s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)

    # the fence's UDP flow (IPv4 for both families: one queue, in order)
    fs = in_ns(peer.pair.b, 4, socket.SOCK_DGRAM)
    fs.bind((HOST[4], 0))
    fs.sendto(b"fence", (PEER[4], FENCE_PORT))
    peer.fence = checksummed(4, PEER[4], HOST[4], P.UDP, P.udp(FENCE_PORT, fs.getsockname()[1], b"f"))

    def establish(s: socket.socket, port: int, isn: int) -> bool:
        """The right SYN-ACK (whether it reached the stack). When it did, the
        connection comes up and, under pyxdp, its flow is established: nothing
        before it closed the flow."""
        arrived = peer.arrives(fam, seg(port, 80, SYN | ACK, PISN, isn + 1))
        if not arrived:
            return False
        assert connected(s) == 0, "the connection did not come up"
        peer.sniff(lambda ip: proto_of(ip) == P.TCP and tcp_of(ip)[0] == port and tcp_of(ip)[4] == ACK)
        if flt is not None:
            assert state(flt, port) == [FlowState.ESTABLISHED]
        return arrived

    # each probe in syn-sent on a connection of its own (a fresh flow, a fresh conntrack entry), then the
    # right answer: the connection comes up whatever came before it
    in_syn_sent: list[tuple[str, Callable[[int, int, bytes], bytes]]] = [
        (name, lambda port, isn, syn, f=flags, d=delta, data=data:
         seg(port, 80, f, PISN + ((f & SYN) == 0), isn + d if f & ACK else 0, data))
        for name, flags, delta, data in (("syn-sent: ACK", ACK, 1, b""),
                                         ("syn-sent: PSH+ACK with data", PSH | ACK, 1, b"early"),
                                         ("syn-sent: FIN+ACK", FIN | ACK, 1, b""),
                                         ("syn-sent: RST without ACK", RST, 0, b""),
                                         ("syn-sent: RST+ACK, ack ahead of ISN+1", RST | ACK, 1 + 70000, b""),
                                         ("syn-sent: RST+ACK, ack behind ISN+1", RST | ACK, 1 - 1000, b""),
                                         ("syn-sent: SYN-ACK, ack ahead of ISN+1", SYN | ACK, 1 + 70000, b""),
                                         ("syn-sent: SYN-ACK, ack behind ISN+1", SYN | ACK, 1 - 1000, b""),
                                         ("syn-sent: SYN from the peer", SYN, 0, b""))]
    in_syn_sent.append(("syn-sent: ICMP error quoting the SYN", lambda port, isn, syn: error(syn, too_big=True)))
    with fs:
        for name, probe in in_syn_sent:
            s, port, isn, syn = connect()
            with s:
                got[name] = peer.arrives(fam, probe(port, isn, syn))
                if flt is not None:
                    assert state(flt, port) == [FlowState.SYN_SENT], name  # nor did the host's answer close it
                got[f"{name}, then the SYN-ACK"] = establish(s, port, isn)
        s, port, isn, _syn = connect()
        with s:
            got["syn-sent: SYN-ACK"] = establish(s, port, isn)
            nxt = PISN + 1
            got["established: data"] = peer.arrives(fam, seg(port, 80, PSH | ACK, nxt, isn + 1, b"hello"))
            s.setblocking(True)
            s.settimeout(3)
            assert s.recv(100) == b"hello"
            nxt += 5
            far = nxt + (1 << 30)
            got["established: data out of window"] = peer.arrives(fam, seg(port, 80, PSH | ACK, far, isn + 1, b"x"))
            got["established: RST out of window"] = peer.arrives(fam, seg(port, 80, RST, far, 0))
            got["established: RST in window, not exact"] = peer.arrives(fam, seg(port, 80, RST, nxt + 100, 0))
            s.sendall(b"still up")  # neither RST ended the connection
            peer.sniff(lambda ip: proto_of(ip) == P.TCP and tcp_of(ip)[0] == port and ip.endswith(b"still up"))
            got["established: RST exact"] = peer.arrives(fam, seg(port, 80, RST, nxt, 0))
            with pytest.raises(ConnectionResetError):
                s.recv(100)
            got["after the peer's RST: data"] = peer.arrives(fam, seg(port, 80, PSH | ACK, nxt, isn + 1, b"late"))

        s2, port2, isn2, _syn2 = connect()
        with s2:
            got["syn-sent: RST+ACK, ack ISN+1"] = peer.arrives(fam, seg(port2, 80, RST | ACK, 0, isn2 + 1))
            assert connected(s2) == 111  # ECONNREFUSED

        u = in_ns(peer.pair.b, fam, socket.SOCK_DGRAM)
        with u:
            u.bind((h, 0))
            u.connect((p, 53))
            u.send(b"question")
            uport = u.getsockname()[1]
            off = 20 if fam == 4 else 40
            sent = peer.sniff(lambda ip: proto_of(ip) == P.UDP and struct.unpack_from("!H", ip, off)[0] == uport)
            got["udp: reply"] = peer.arrives(fam, checksummed(fam, p, h, P.UDP, P.udp(53, uport, b"answer")))
            u.settimeout(3)
            assert u.recv(100) == b"answer"
            got["udp: reply from another port"] = peer.arrives(fam, checksummed(fam, p, h, P.UDP,
                                                                                P.udp(54, uport, b"forged")))
            got["udp: ICMP error quoting it"] = peer.arrives(fam, error(sent))
            never = sent[:off] + struct.pack("!HH", uport, 55) + sent[off + 4:]
            got["udp: ICMP error quoting a datagram never sent"] = peer.arrives(fam, error(never))

        ping = in_ns(peer.pair.b, fam, socket.SOCK_RAW, icmp)
        with ping:
            body = struct.pack("!HH", 0x4242, 1) + b"pyxdp"
            req = 8 if fam == 4 else 128
            msg = struct.pack("!BBH", req, 0, 0) + body
            if fam == 4:  # the kernel fills in ICMPv6 checksums, not ICMP's
                msg = struct.pack("!BBH", req, 0, csum(msg)) + body
            ping.sendto(msg, (p, 0))
            peer.sniff(lambda ip: proto_of(ip) == icmp and ip[20 if fam == 4 else 40] == req)
            for name, typ, ident in (("icmp: echo reply", req ^ (8 if fam == 4 else 1), 0x4242),
                                     ("icmp: echo reply, another identifier", req ^ (8 if fam == 4 else 1), 0x4243),
                                     ("icmp: echo request from the peer", req, 0x4242)):
                got[name] = peer.arrives(fam, checksummed(fam, p, h, icmp, P.icmp(typ, 0, struct.pack(
                    "!HH", ident, 1) + b"pyxdp")))
    return got


def documented() -> set[str]:
    """The classes the README lists as decided otherwise by conntrack."""
    with open(README, encoding="utf-8") as f:
        text = f.read()
    section = text[text.index("#### Against netfilter conntrack"):]
    section = section[: re.search(r"\n#{1,4} ", section[1:]).start() + 1]  # up to the next heading
    return set(re.findall(r"^\| `([^`]+)` \|", section, re.M))


@pytest.fixture
def world() -> Iterator[Callable[[str, str], NetPair]]:
    made: list[NetPair] = []

    def make(tag: str, how: str) -> NetPair:
        made.append(topology(tag, how))
        return made[-1]

    yield make
    for pair in made:
        pair.close()


def test_probes_against_conntrack(world: Callable[[str, str], NetPair], pin_dir: str) -> None:
    outcome: dict[str, dict[int, dict[str, bool]]] = {}
    for how in ("pyxdp", "nft"):
        pair = world(f"ct{how[0]}", how)
        peer = Peer(pair)
        try:
            if how == "pyxdp":
                with Filter.open(pin_dir, create=True) as flt:
                    flt.attach(pair.vb, netns=pair.b)
                    flt.set_policy(Verdict.DROP)
                    outcome[how] = {fam: probes(peer, flt, fam) for fam in (4, 6)}
                    flt.detach(pair.vb, netns=pair.b)
            else:
                outcome[how] = {fam: probes(peer, None, fam) for fam in (4, 6)}
        finally:
            peer.close()
    listed = documented()
    assert listed <= set(PYXDP), listed - set(PYXDP)  # the README names only classes probed here
    for fam in (4, 6):
        mine, theirs = outcome["pyxdp"][fam], outcome["nft"][fam]
        assert mine == PYXDP, {k: v for k, v in mine.items() if PYXDP[k] != v}
        differ = {k for k in PYXDP if mine[k] != theirs[k]}
        assert differ <= listed, f"IPv{fam}: conntrack decides otherwise, not in the README: {differ - listed}"
