"""Read and write classic libpcap files (Ethernet link type), for ``replay``,
``trace --pcap`` and tests. pcapng is not read: convert with ``tshark -F pcap``."""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Iterable, Iterator
from typing import IO, NamedTuple

from ..errors import UsageError

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


class PcapWriter:
    """Writes a classic libpcap file: magic 0xa1b2c3d4 (microsecond
    timestamps, little-endian), version 2.4, link type Ethernet (1), snapshot
    length ``snaplen``. Each :meth:`write` appends one record; a packet longer
    than ``snaplen`` is cut to it (its original length is kept in the record).
    The header is written at once, so a file closed before the first packet
    is still a valid, empty capture."""

    _HEADER = struct.Struct("<IHHiIII")
    _RECORD = struct.Struct("<IIII")

    def __init__(self, stream: IO[bytes], snaplen: int = MAX_CAPLEN, linktype: int = LINKTYPE_ETHERNET) -> None:
        if not 1 <= snaplen <= MAX_CAPLEN:
            raise UsageError(f"pcap snapshot length must be 1 to {MAX_CAPLEN}, not {snaplen}")
        self._stream = stream
        self.snaplen = snaplen
        self.count = 0  # records written
        stream.write(self._HEADER.pack(0xA1B2C3D4, 2, 4, 0, 0, snaplen, linktype))

    def write(self, data: bytes, ts_ns: int = 0, orig_len: int | None = None) -> None:
        """One record: ``data`` (cut to the snapshot length), stamped
        ``ts_ns`` nanoseconds after the epoch (kept to the microsecond),
        ``orig_len`` the packet's length on the wire (default: ``len(data)``;
        never less than what is written)."""
        cap = bytes(data[: self.snaplen])
        orig = max(len(data) if orig_len is None else orig_len, len(cap))
        sec, usec = divmod(max(ts_ns, 0) // 1000, 1_000_000)
        self._stream.write(self._RECORD.pack(min(sec, 0xFFFFFFFF), usec, len(cap), min(orig, 0xFFFFFFFF)) + cap)
        self.count += 1

    def flush(self) -> None:
        self._stream.flush()


def write_pcap(stream: IO[bytes], packets: Iterable[bytes]) -> None:
    """A capture of ``packets``, the i-th (from 0) stamped i seconds after the epoch."""
    w = PcapWriter(stream)
    for i, pkt in enumerate(packets):
        w.write(pkt, i * 1_000_000_000)


def open_capture(path: str) -> IO[bytes]:
    """``path`` opened for writing a capture as root may: a new file of the
    caller's own, mode 0600 (packets are private), put in place of any file
    there by rename (as :func:`pyxdp.safefile.write_file_atomic` does), so
    another user's file is never truncated or written into; never through a
    symlink (refused). A FIFO or a character device (a reader at the other
    end of a pipe, /dev/null) is written into. Failure is a
    :class:`UsageError` "cannot write PATH: REASON"."""
    import stat

    from ..safefile import check_target, open_new_file

    st = check_target(path, special_ok=True)
    if st is not None and (stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode)):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)  # no O_CREAT, no O_TRUNC
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UsageError(f"cannot write {path}: it is a symlink, which pyxdp does not write through; "
                                 "give the real path") from None
            raise UsageError(f"cannot write {path}: {exc.strerror}") from None
        if stat.S_ISFIFO(os.fstat(fd).st_mode) or stat.S_ISCHR(os.fstat(fd).st_mode):
            return os.fdopen(fd, "wb")
        os.close(fd)  # swapped for a file meanwhile: replaced like one
    elif st is not None and not stat.S_ISREG(st.st_mode):
        raise UsageError(f"cannot write {path}: not a regular file, a FIFO or a device")
    return os.fdopen(open_new_file(path, 0o600), "wb")
