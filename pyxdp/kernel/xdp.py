"""XDP attach: put a program's fd on an interface through rtnetlink (RTM_SETLINK),
take it off, and say what an interface runs. Works in other network
namespaces: netlink enters the namespace, the program's fd stays ours."""

from __future__ import annotations

import errno
import socket
import struct
from typing import NamedTuple

from ..errors import AttachError, UsageError
from ..model.modes import XDP_FLAGS_REPLACE, XDP_FLAGS_UPDATE_IF_NOEXIST, XdpMode
from ..names import check_ifname
from .nlmsg import (
    I32,
    NLA_F_NESTED,
    NLMSG_ERROR,
    U32,
    NetlinkError,
    Socket,
    attr,
    attrs,
    check_error,
    cstr,
    u32,
)

RTM_NEWLINK = 16
RTM_GETLINK = 18
RTM_SETLINK = 19
IFLA_IFNAME = 3
IFLA_EXT_MASK = 29
IFLA_XDP = 43
IFLA_XDP_FD = 1
IFLA_XDP_ATTACHED = 2
IFLA_XDP_FLAGS = 3
IFLA_XDP_PROG_ID = 4
IFLA_XDP_DRV_PROG_ID = 5
IFLA_XDP_SKB_PROG_ID = 6
IFLA_XDP_EXPECTED_FD = 8
RTEXT_FILTER_SKIP_STATS = 1 << 3
_IFINFO = struct.Struct("=BxHiII")  # struct ifinfomsg
_MODE_OF = {1: "native", 2: "generic", 3: "offload"}


class XdpState(NamedTuple):
    """What an interface runs: program id (0 for none) and mode."""

    ifname: str
    ifindex: int
    prog_id: int
    mode: XdpMode | None


class Netlink:
    """An rtnetlink socket, in the host's namespace or in ``netns`` (a name
    from ``ip netns``). Use as a context manager."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self.sock = Socket(netns)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _link(self, ifindex: int, ifname: str | None) -> XdpState | None:
        body = _IFINFO.pack(socket.AF_UNSPEC, 0, ifindex, 0, 0)
        body += attr(IFLA_EXT_MASK, U32.pack(RTEXT_FILTER_SKIP_STATS))
        if ifname is not None:
            body += attr(IFLA_IFNAME, ifname.encode() + b"\0")
        for kind, data, start, end in self.sock.replies(RTM_GETLINK, 0, body):
            if kind == NLMSG_ERROR:
                try:
                    check_error(data, start, end)
                except NetlinkError as exc:
                    if exc.code in (errno.ENODEV, errno.EINVAL):
                        return None
                    raise AttachError(exc.code, f"reading interface {ifname or ifindex}: {exc.detail()}") from None
                return None
            if kind == RTM_NEWLINK:
                return _xdp_state(data, start, end)
        return None

    def ifindex(self, ifname: str) -> int:
        check_ifname(ifname)
        st = self._link(0, ifname)
        if st is None:
            where = f" in netns {self.netns}" if self.netns else ""
            see = f"'ip -n {self.netns} link'" if self.netns else "'ip link'; in a namespace: --netns NAME"
            raise UsageError(f"no interface {ifname!r}{where} (see {see})")
        return st.ifindex

    def state_by_index(self, ifindex: int) -> XdpState | None:
        """What interface ``ifindex`` runs, or None when there is no such interface."""
        return self._link(ifindex, None) if ifindex > 0 else None

    def state(self, ifname: str) -> XdpState:
        idx = self.ifindex(ifname)
        st = self._link(idx, None)
        return XdpState(ifname, idx, 0, None) if st is None else st._replace(ifname=ifname)

    def _set(self, ifindex: int, xdp: bytes, what: str) -> None:
        from .bpf import kill_point

        body = _IFINFO.pack(socket.AF_UNSPEC, 0, ifindex, 0, 0) + attr(IFLA_XDP | NLA_F_NESTED, xdp)
        try:
            try:
                self.sock.call(RTM_SETLINK, 0, body)
            finally:
                kill_point()
        except NetlinkError as exc:
            raise AttachError(exc.code, f"{what}: {exc.detail()}") from None

    def attach(
        self,
        ifname: str,
        prog_fd: int,
        mode: XdpMode = XdpMode.AUTO,
        replace_fd: int | None = None,
        force: bool = False,
    ) -> XdpMode:
        """Attach ``prog_fd``. Never replaces another program unless
        ``replace_fd`` (atomic: only if that very program is attached) or
        ``force``. AUTO tries native, then generic. Returns the mode used."""
        idx = self.ifindex(ifname)
        modes = [XdpMode.NATIVE, XdpMode.GENERIC] if mode is XdpMode.AUTO else [mode]
        last: AttachError | None = None
        for m in modes:
            xdp = attr(IFLA_XDP_FD, I32.pack(prog_fd))
            flags = m.flags
            if replace_fd is not None:
                flags |= XDP_FLAGS_REPLACE
                xdp += attr(IFLA_XDP_EXPECTED_FD, I32.pack(replace_fd))
            elif not force:
                flags |= XDP_FLAGS_UPDATE_IF_NOEXIST
            xdp += attr(IFLA_XDP_FLAGS, U32.pack(flags))
            try:
                self._set(idx, xdp, f"attach to {ifname} ({m.value})")
                return m
            except AttachError as exc:
                last = exc
                if m is XdpMode.NATIVE and mode is XdpMode.NATIVE and exc.errno == errno.EOPNOTSUPP:
                    raise AttachError(exc.errno, f"{exc.msg} (--mode generic works on any interface)") from None
                if exc.errno == errno.EBUSY or m is modes[-1]:
                    raise
        assert last is not None
        raise last

    def detach(self, ifname: str, mode: XdpMode, expected_fd: int | None = None) -> None:
        """Take the program off ``ifname``; with ``expected_fd``, only if that
        program is the one attached."""
        idx = self.ifindex(ifname)
        xdp = attr(IFLA_XDP_FD, I32.pack(-1))
        flags = mode.flags
        if expected_fd is not None:
            flags |= XDP_FLAGS_REPLACE
            xdp += attr(IFLA_XDP_EXPECTED_FD, I32.pack(expected_fd))
        xdp += attr(IFLA_XDP_FLAGS, U32.pack(flags))
        self._set(idx, xdp, f"detach from {ifname}")


def _xdp_state(data: bytes, off: int, end: int) -> XdpState:
    _family, _type, index, _flags, _change = _IFINFO.unpack_from(data, off)
    top = attrs(data, off + _IFINFO.size, end)
    xdp = attrs(top[IFLA_XDP], 0, len(top[IFLA_XDP])) if IFLA_XDP in top else {}
    attached = xdp.get(IFLA_XDP_ATTACHED, b"\0")[0]
    prog_id = u32(xdp.get(IFLA_XDP_PROG_ID))
    if attached == 4:  # multi: one in each of driver and skb
        drv = u32(xdp.get(IFLA_XDP_DRV_PROG_ID))
        prog_id, attached = (drv, 1) if drv else (u32(xdp.get(IFLA_XDP_SKB_PROG_ID)), 2)
    mode = XdpMode(_MODE_OF[attached]) if attached in _MODE_OF else None
    return XdpState(cstr(top.get(IFLA_IFNAME)), index, prog_id, mode)
