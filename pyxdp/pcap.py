"""Read and write classic libpcap files (Ethernet link type), for ``replay``
and for tests. pcapng is not read: convert with ``tshark -F pcap``."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator

from ._record import TYPE_CHECKING
from .errors import UsageError

if TYPE_CHECKING:
    from typing import IO

LINKTYPE_ETHERNET = 1
_MAGICS = {
    b"\xd4\xc3\xb2\xa1": "<",  # microsecond, little-endian
    b"\xa1\xb2\xc3\xd4": ">",
    b"\x4d\x3c\xb2\xa1": "<",  # nanosecond
    b"\xa1\xb2\x3c\x4d": ">",
}


def read_pcap(stream: IO[bytes], name: str = "pcap") -> Iterator[bytes]:
    """Yield each packet's captured bytes."""
    head = stream.read(24)
    if len(head) < 24:
        raise UsageError(f"{name}: not a pcap file (too short)")
    order = _MAGICS.get(head[:4])
    if order is None:
        if head[:4] == b"\x0a\x0d\x0d\x0a":
            raise UsageError(f"{name}: pcapng is not supported; convert with 'tshark -F pcap -r IN -w OUT'")
        raise UsageError(f"{name}: not a pcap file (bad magic)")
    linktype = struct.unpack(order + "I", head[20:24])[0] & 0xFFFF
    if linktype != LINKTYPE_ETHERNET:
        raise UsageError(f"{name}: link type {linktype}, only Ethernet (1) is supported")
    rec = struct.Struct(order + "IIII")
    num = 0
    while True:
        hdr = stream.read(16)
        if not hdr:
            return
        num += 1
        if len(hdr) < 16:
            raise UsageError(f"{name}: packet {num}: truncated record header")
        _sec, _frac, caplen, _origlen = rec.unpack(hdr)
        if caplen > 262144:
            raise UsageError(f"{name}: packet {num}: captured length {caplen} is not plausible")
        data = stream.read(caplen)
        if len(data) < caplen:
            raise UsageError(f"{name}: packet {num}: truncated data")
        yield data


def write_pcap(stream: IO[bytes], packets: Iterable[bytes]) -> None:
    stream.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, LINKTYPE_ETHERNET))
    for i, pkt in enumerate(packets):
        stream.write(struct.pack("<IIII", i, 0, len(pkt), len(pkt)))
        stream.write(pkt)
