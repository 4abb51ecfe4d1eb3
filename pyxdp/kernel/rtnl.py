"""What XDP program an interface runs, read over a plain rtnetlink socket
(``RTM_GETLINK``, the ``socket`` module only). ``status`` and the other
readers use it (the socket itself: :mod:`pyxdp.kernel.nlmsg`)."""

from __future__ import annotations

import errno
import os
import socket
import struct
from typing import TYPE_CHECKING

from ..errors import AttachError, UsageError
from ..model.modes import XdpMode
from ..names import check_ifname
from .nlmsg import Socket
from .nlmsg import attr as _attr
from .nlmsg import attrs as _attrs
from .xdp import XdpState

if TYPE_CHECKING:
    from collections.abc import Iterator

RTM_NEWLINK = 16
RTM_GETLINK = 18
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_DUMP = 0x300
IFLA_IFNAME = 3
IFLA_EXT_MASK = 29
IFLA_XDP = 43
IFLA_XDP_ATTACHED = 2
IFLA_XDP_PROG_ID = 4
IFLA_XDP_DRV_PROG_ID = 5
IFLA_XDP_SKB_PROG_ID = 6
RTEXT_FILTER_SKIP_STATS = 1 << 3

_IFINFO = struct.Struct("=BxHiII")  # struct ifinfomsg
_U32 = struct.Struct("=I")
_MODES = {1: XdpMode.NATIVE, 2: XdpMode.GENERIC, 3: XdpMode.OFFLOAD}


class Links:
    """A read-only rtnetlink socket, in the host's namespace or in ``netns``
    (a name from ``ip netns``). Use as a context manager."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._nl = Socket(netns)

    def close(self) -> None:
        self._nl.close()

    def __enter__(self) -> Links:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def state(self, ifname: str) -> XdpState:
        """What ``ifname`` runs (UsageError: no such interface)."""
        check_ifname(ifname)
        st = self._get(0, ifname)
        if st is None:
            where = f" in netns {self.netns}" if self.netns else ""
            raise UsageError(f"no interface {ifname!r}{where}")
        return st

    def state_by_index(self, ifindex: int) -> XdpState | None:
        """What interface ``ifindex`` runs, or None when there is no such interface."""
        return self._get(ifindex, None) if ifindex > 0 else None

    def all(self) -> list[XdpState]:
        """What every interface of the namespace runs (one RTM_GETLINK dump)."""
        body = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _attr(IFLA_EXT_MASK, _U32.pack(RTEXT_FILTER_SKIP_STATS))
        out: list[XdpState] = []
        for kind, data, start, end in self._replies(NLM_F_DUMP, body):
            if kind == NLMSG_DONE:
                return out
            if kind == NLMSG_ERROR:
                err = -struct.unpack_from("=i", data, start)[0]
                raise AttachError(err, f"listing interfaces: {os.strerror(err)}")
            if kind == RTM_NEWLINK:
                out.append(_xdp_state(data, start, end))
        return out

    def _get(self, ifindex: int, ifname: str | None) -> XdpState | None:
        body = _IFINFO.pack(socket.AF_UNSPEC, 0, ifindex, 0, 0)
        body += _attr(IFLA_EXT_MASK, _U32.pack(RTEXT_FILTER_SKIP_STATS))
        if ifname is not None:
            body += _attr(IFLA_IFNAME, ifname.encode() + b"\0")
        for kind, data, start, end in self._replies(0, body):
            if kind == NLMSG_ERROR:
                err = -struct.unpack_from("=i", data, start)[0]
                if err == errno.ENODEV:
                    return None
                raise AttachError(err, f"reading interface {ifname or ifindex}: {os.strerror(err)}")
            if kind == RTM_NEWLINK:
                return _xdp_state(data, start, end)
        return None

    def _replies(self, flags: int, body: bytes) -> Iterator[tuple[int, bytes, int, int]]:
        """One RTM_GETLINK request's answers (see :meth:`Socket.replies`)."""
        return self._nl.replies(RTM_GETLINK, flags, body)


def _xdp_state(data: bytes, off: int, end: int) -> XdpState:
    _family, _type, index, _flags, _change = _IFINFO.unpack_from(data, off)
    attrs = _attrs(data, off + _IFINFO.size, end)
    name = attrs.get(IFLA_IFNAME, b"").split(b"\0", 1)[0].decode(errors="replace")
    xdp = _attrs(attrs[IFLA_XDP], 0, len(attrs[IFLA_XDP])) if IFLA_XDP in attrs else {}

    def u32(kind: int) -> int:
        raw = xdp.get(kind, b"")
        return int(_U32.unpack(raw[:4])[0]) if len(raw) >= 4 else 0

    attached = xdp.get(IFLA_XDP_ATTACHED, b"\0")[0]
    prog_id = u32(IFLA_XDP_PROG_ID)
    if attached == 4:  # multi: one in each of driver and skb; the driver's, as pyxdp.xdp reports it
        drv = u32(IFLA_XDP_DRV_PROG_ID)
        prog_id, attached = (drv, 1) if drv else (u32(IFLA_XDP_SKB_PROG_ID), 2)
    return XdpState(name, index, prog_id, _MODES.get(attached))
