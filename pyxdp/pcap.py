"""Read and write classic libpcap files (Ethernet link type), for ``replay``
and for tests. pcapng is not read: convert with ``tshark -F pcap``."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from typing import IO, NamedTuple

from .errors import UsageError

LINKTYPE_ETHERNET = 1
_MAGICS = {
    b"\xd4\xc3\xb2\xa1": "<",  # microsecond, little-endian
    b"\xa1\xb2\xc3\xd4": ">",
    b"\x4d\x3c\xb2\xa1": "<",  # nanosecond
    b"\xa1\xb2\x3c\x4d": ">",
}


MAX_CAPLEN = 262144  # libpcap's largest snapshot length


class PcapRecord(NamedTuple):
    """One record of a capture: its 1-based ``number`` and captured bytes, or
    ``error`` (then ``data`` is empty) saying why the packet cannot be used."""

    number: int
    data: bytes
    error: str | None = None


def _open(stream: IO[bytes], name: str) -> struct.Struct:
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
    return struct.Struct(order + "IIII")


def _skip(stream: IO[bytes], n: int) -> int:
    """Read past ``n`` bytes (in bounded chunks); returns how many there were."""
    done = 0
    while done < n:
        chunk = stream.read(min(n - done, 1 << 16))
        if not chunk:
            break
        done += len(chunk)
    return done


def read_pcap_records(stream: IO[bytes], name: str = "pcap") -> Iterator[PcapRecord]:
    """Yield a :class:`PcapRecord` for each record, bad ones included, so a
    replay can report a bad packet and go on. A record whose captured length
    is over 262,144 bytes is reported (``error`` set, no data) and skipped by
    reading past that many bytes; the iteration then goes on with the next
    record (it ends if the file ends inside the skipped bytes). A truncated
    last record (header or data) is reported and ends the iteration. A file
    that is not a usable pcap at all (too short, bad magic, pcapng, link type
    other than Ethernet) raises :class:`UsageError` before the first record."""
    rec = _open(stream, name)
    num = 0
    while True:
        hdr = stream.read(16)
        if not hdr:
            return
        num += 1
        if len(hdr) < 16:
            yield PcapRecord(num, b"", f"truncated record header ({len(hdr)} of 16 bytes)")
            return
        _sec, _frac, caplen, _origlen = rec.unpack(hdr)
        if caplen > MAX_CAPLEN:
            got = _skip(stream, caplen)
            if got < caplen:
                yield PcapRecord(num, b"", f"captured length {caplen} is not plausible (over {MAX_CAPLEN}), "
                                           f"and the file ends {got} bytes into it")
                return
            yield PcapRecord(num, b"", f"captured length {caplen} is not plausible (over {MAX_CAPLEN}); skipped")
            continue
        data = stream.read(caplen)
        if len(data) < caplen:
            yield PcapRecord(num, b"", f"truncated data ({len(data)} of {caplen} bytes)")
            return
        yield PcapRecord(num, data)


def read_pcap(stream: IO[bytes], name: str = "pcap") -> Iterator[bytes]:
    """Yield each packet's captured bytes. The first bad record raises
    :class:`UsageError` ("NAME: packet N: ..."); use
    :func:`read_pcap_records` to report bad records and go on."""
    for r in read_pcap_records(stream, name):
        if r.error is not None:
            raise UsageError(f"{name}: packet {r.number}: {r.error}")
        yield r.data


def write_pcap(stream: IO[bytes], packets: Iterable[bytes]) -> None:
    stream.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, LINKTYPE_ETHERNET))
    for i, pkt in enumerate(packets):
        stream.write(struct.pack("<IIII", i, 0, len(pkt), len(pkt)))
        stream.write(pkt)
