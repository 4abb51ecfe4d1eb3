"""Packet builders for the tests: Ethernet, VLAN tags, IPv4 (with options,
fragments), IPv6 (with extension headers), TCP, UDP, ICMP, ARP. Checksums
are not computed: XDP does not look at them."""

from __future__ import annotations

import socket
import struct

MAC_A = bytes.fromhex("020000000001")
MAC_B = bytes.fromhex("020000000002")


def eth(ethertype: int, payload: bytes, vlans: tuple[tuple[int, int], ...] = ()) -> bytes:
    """``vlans``: (tpid, vid) outermost first."""
    out = MAC_B + MAC_A
    for tpid, vid in vlans:
        out += struct.pack("!HH", tpid, vid)
    return out + struct.pack("!H", ethertype) + payload


def tcp(sport: int, dport: int, payload: bytes = b"", flags: int = 0x02, seq: int = 0, ack: int = 0) -> bytes:
    """A TCP header (flags: SYN unless told) and ``payload``."""
    return struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0) + payload


def udp(sport: int, dport: int, payload: bytes = b"") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def icmp(typ: int, code: int = 0, payload: bytes = b"\0\0\0\0") -> bytes:
    return struct.pack("!BBH", typ, code, 0) + payload


def ipv4(src: str, dst: str, proto: int, payload: bytes, options: bytes = b"", frag_off: int = 0,
         more_frags: bool = False, ihl: int | None = None, version: int = 4) -> bytes:
    assert len(options) % 4 == 0
    hl = ihl if ihl is not None else 5 + len(options) // 4
    flags = (0x2000 if more_frags else 0) | (frag_off & 0x1FFF)
    hdr = struct.pack("!BBHHHBBH4s4s", (version << 4) | hl, 0, 20 + len(options) + len(payload), 1, flags, 64,
                      proto, 0, socket.inet_aton(src), socket.inet_aton(dst))
    return hdr + options + payload


def ipv6(src: str, dst: str, nexthdr: int, payload: bytes, version: int = 6, hop: int = 64) -> bytes:
    return struct.pack("!IHBB16s16s", version << 28, len(payload), nexthdr, hop,
                       socket.inet_pton(socket.AF_INET6, src), socket.inet_pton(socket.AF_INET6, dst)) + payload


def ext_opts(nexthdr: int, length_units: int = 0) -> bytes:
    """Hop-by-hop / destination options / routing header: 8 * (1 + units) bytes."""
    return bytes([nexthdr, length_units]) + b"\x01\x04\0\0\0\0" + b"\0" * (8 * length_units)


def ext_frag(nexthdr: int, offset_units: int = 0, more: bool = False) -> bytes:
    return struct.pack("!BBHI", nexthdr, 0, (offset_units << 3) | (1 if more else 0), 0x1234)


def ext_ah(nexthdr: int, payload_len: int = 1) -> bytes:
    """AH: (payload_len + 2) * 4 bytes."""
    body = (payload_len + 2) * 4
    return bytes([nexthdr, payload_len]) + b"\0" * (body - 2)


def arp() -> bytes:
    return struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, MAC_A, socket.inet_aton("10.0.0.1"),
                       b"\0" * 6, socket.inet_aton("10.0.0.2"))


ETH_IP, ETH_IPV6, ETH_ARP, VLAN_Q, VLAN_AD = 0x0800, 0x86DD, 0x0806, 0x8100, 0x88A8
TCP, UDP, ICMP, ICMPV6 = 6, 17, 1, 58
HOPOPTS, ROUTING, FRAGMENT, DSTOPTS, AH, NONXT = 0, 43, 44, 60, 51, 59


def udp4(src: str, dport: int = 53, dst: str = "198.51.100.1", sport: int = 40000, pad_to: int = 60) -> bytes:
    pkt = eth(ETH_IP, ipv4(src, dst, UDP, udp(sport, dport)))
    return pkt + b"\0" * max(0, pad_to - len(pkt))


def tcp4(src: str, dport: int, dst: str = "198.51.100.1", sport: int = 40000) -> bytes:
    return eth(ETH_IP, ipv4(src, dst, TCP, tcp(sport, dport)))


def udp6(src: str, dport: int = 53, dst: str = "2001:db8:ffff::1", sport: int = 40000) -> bytes:
    return eth(ETH_IPV6, ipv6(src, dst, UDP, udp(sport, dport)))


def tcp6(src: str, dport: int, dst: str = "2001:db8:ffff::1", sport: int = 40000) -> bytes:
    return eth(ETH_IPV6, ipv6(src, dst, TCP, tcp(sport, dport)))
