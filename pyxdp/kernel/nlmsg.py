"""A plain rtnetlink socket (the ``socket`` module only): open it in the
host's namespace or in a named one, send one request, read its answers,
turn the kernel's ack (with the extended ack's message) into an error.
:mod:`pyxdp.kernel.rtnl` reads links with it, :mod:`pyxdp.kernel.xdp` and
:mod:`pyxdp.kernel.tc` change them. In another network namespace the socket
is opened by a short-lived thread that enters the namespace (``setns``
changes only the calling thread's namespace); the socket stays in it."""

from __future__ import annotations

import errno
import os
import socket
import struct
from typing import TYPE_CHECKING

from ..errors import AttachError, UsageError
from ..names import netns_exists

if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_EXT_ACK = 11
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 1
NLM_F_ACK = 4
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_DUMP = 0x300
NLM_F_CAPPED = 0x100  # on an NLMSG_ERROR: the request is not echoed
NLM_F_ACK_TLVS = 0x200  # on an NLMSG_ERROR: extended ack attributes follow
NLMSGERR_ATTR_MSG = 1
NLA_F_NESTED = 1 << 15
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER
CLONE_NEWNET = 0x40000000

NLMSG = struct.Struct("=IHHII")  # struct nlmsghdr
RTA = struct.Struct("=HH")  # struct rtattr
U32 = struct.Struct("=I")
I32 = struct.Struct("=i")


def attr(kind: int, payload: bytes) -> bytes:
    """One attribute, padded to 4 bytes."""
    raw = RTA.pack(RTA.size + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def attrs(data: bytes, off: int, end: int) -> dict[int, bytes]:
    """The attributes in ``data[off:end]`` by type (the last of a type wins)."""
    out = {}
    while off + RTA.size <= end:
        length, kind = RTA.unpack_from(data, off)
        if length < RTA.size or off + length > end:
            break
        out[kind & NLA_TYPE_MASK] = data[off + RTA.size:off + length]
        off += (length + 3) & ~3
    return out


def u32(raw: bytes | None) -> int:
    return int(U32.unpack(raw[:4])[0]) if raw is not None and len(raw) >= 4 else 0


def cstr(raw: bytes | None) -> str:
    return (raw or b"").split(b"\0", 1)[0].decode(errors="replace")


def _setns(fd: int) -> None:
    setns = getattr(os, "setns", None)  # Python 3.12 and newer
    if setns is not None:
        setns(fd, CLONE_NEWNET)
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _new_socket() -> socket.socket:
    return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)


def socket_in(netns: str) -> socket.socket:
    """A netlink socket in network namespace ``netns``."""
    import threading

    fd = os.open(f"/var/run/netns/{netns}", os.O_RDONLY | os.O_CLOEXEC)
    made: list[Any] = []

    def enter_and_open() -> None:
        try:
            _setns(fd)
            made.append(_new_socket())
        except OSError as exc:
            made.append(exc)

    try:
        t = threading.Thread(target=enter_and_open, name="pyxdp-netns")
        t.start()
        t.join()
    finally:
        os.close(fd)
    if not made or isinstance(made[0], OSError):
        exc = made[0] if made else OSError(errno.EIO, "no socket")
        raise AttachError(exc.errno or errno.EIO, f"cannot enter netns {netns}: {exc.strerror or exc}")
    sock: socket.socket = made[0]
    return sock


class NetlinkError(Exception):
    """The kernel refused a request: ``code`` (errno) and the extended ack's
    message ("" when it gave none)."""

    def __init__(self, code: int, msg: str) -> None:
        super().__init__(code, msg)
        self.code = code
        self.msg = msg

    def detail(self) -> str:
        """The kernel's message, else the errno's name (as pyxdp always said)."""
        return self.msg or errno.errorcode.get(self.code, str(self.code))


class Socket:
    """An rtnetlink socket, in the host's namespace or in ``netns`` (a name
    from ``ip netns``), with extended acks on."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        if netns is None:
            self.sock = _new_socket()
        elif not netns_exists(netns):
            raise UsageError(f"no network namespace {netns!r} (see 'ip netns list')")
        else:
            self.sock = socket_in(netns)
        try:
            self.sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
        except OSError:
            pass  # an old kernel: errors without their message
        self.sock.settimeout(5)
        self._seq = 0

    def close(self) -> None:
        self.sock.close()

    def replies(self, kind: int, flags: int, body: bytes) -> Iterator[tuple[int, bytes, int, int]]:
        """Send one request (NLM_F_REQUEST | ``flags``) and yield each message
        answering it: (type, buffer, payload start, end). Stops after the
        ack (NLMSG_ERROR) or NLMSG_DONE, which are yielded too."""
        self._seq += 1
        self.sock.send(NLMSG.pack(NLMSG.size + len(body), kind, NLM_F_REQUEST | flags, self._seq, 0) + body)
        while True:
            head = bytearray(NLMSG.size)
            size = self.sock.recv_into(head, len(head), socket.MSG_PEEK | socket.MSG_TRUNC)  # the whole length
            data = self.sock.recv(max(size, NLMSG.size))
            off = 0
            while off + NLMSG.size <= len(data):
                length, mtype, _flags, seq, _pid = NLMSG.unpack_from(data, off)
                if length < NLMSG.size or off + length > len(data):
                    break
                if seq == self._seq:
                    yield mtype, data, off + NLMSG.size, off + length
                    if mtype in (NLMSG_ERROR, NLMSG_DONE):
                        return
                off += (length + 3) & ~3

    def call(self, kind: int, flags: int, body: bytes) -> None:
        """A request that changes something: NLM_F_ACK, NetlinkError on refusal."""
        for mtype, data, start, end in self.replies(kind, flags | NLM_F_ACK, body):
            if mtype == NLMSG_ERROR:
                check_error(data, start, end)
                return

    def dump(self, kind: int, body: bytes) -> list[tuple[bytes, int, int]]:
        """The messages of one NLM_F_DUMP request: (buffer, payload start, end)."""
        out = []
        for mtype, data, start, end in self.replies(kind, NLM_F_DUMP, body):
            if mtype == NLMSG_ERROR:
                check_error(data, start, end)
                break
            if mtype == NLMSG_DONE:
                break
            out.append((data, start, end))
        return out


def check_error(data: bytes, start: int, end: int) -> None:
    """An NLMSG_ERROR's payload: nothing for an ack, NetlinkError for a refusal."""
    code = -I32.unpack_from(data, start)[0]
    if code == 0:
        return
    flags = NLMSG.unpack_from(data, start - NLMSG.size)[2]
    msg = ""
    if flags & NLM_F_ACK_TLVS:
        echoed = NLMSG.size if flags & NLM_F_CAPPED else U32.unpack_from(data, start + I32.size)[0]
        off = start + I32.size + ((echoed + 3) & ~3)
        msg = cstr(attrs(data, off, end).get(NLMSGERR_ATTR_MSG))
    raise NetlinkError(code, msg)
