"""The egress program on tc: a clsact qdisc (added when missing) and one
``bpf`` filter in direct-action mode on its egress hook, at a fixed
priority and handle, named ``pyxdp_egress``. Only that filter is ever
replaced or removed; the qdisc goes only when pyxdp added it and it holds
nothing else. Plain rtnetlink messages on the socket of :class:`pyxdp.kernel.xdp.Netlink`."""

from __future__ import annotations

import socket
import struct
from typing import TYPE_CHECKING

from ..errors import AttachError
from .nlmsg import NLA_F_NESTED, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, U32, NetlinkError, attr, attrs, cstr

if TYPE_CHECKING:
    from .xdp import Netlink

FILTER_NAME = "pyxdp_egress"
PRIO = 0xC000  # late in the egress chain: other tools' filters run first
HANDLE = 1
EGRESS = "ffff:fff3"
_EGRESS_PARENT = 0xFFFFFFF3
_INGRESS_PARENT = 0xFFFFFFF2
_CLSACT_PARENT = 0xFFFFFFF1  # TC_H_CLSACT
_CLSACT_HANDLE = 0xFFFF0000
ETH_P_ALL = 3
RTM_NEWQDISC, RTM_DELQDISC, RTM_GETQDISC = 36, 37, 38
RTM_NEWTFILTER, RTM_DELTFILTER, RTM_GETTFILTER = 44, 45, 46
TCA_KIND, TCA_OPTIONS = 1, 2
TCA_BPF_CLASSID, TCA_BPF_FD, TCA_BPF_NAME, TCA_BPF_FLAGS = 3, 6, 7, 8
TCA_BPF_FLAG_ACT_DIRECT = 1
_TCMSG = struct.Struct("=BxxxiIII")  # struct tcmsg
_FILTER_INFO = PRIO << 16 | socket.htons(ETH_P_ALL)


class _Tc:
    """One tc object of a dump: the tcmsg fields and the attributes."""

    def __init__(self, data: bytes, start: int, end: int) -> None:
        _family, self.ifindex, self.handle, self.parent, self.info = _TCMSG.unpack_from(data, start)
        self.attrs = attrs(data, start + _TCMSG.size, end)
        self.kind = cstr(self.attrs.get(TCA_KIND))


def _change(nl: Netlink, what: str, kind: int, flags: int, body: bytes) -> None:
    """One request that changes the interface (a kill point of the
    crash-injection hook, pyxdp.bpf.kill_point), its netlink error as an
    AttachError saying ``what``."""
    from .bpf import kill_point

    try:
        try:
            nl.sock.call(kind, flags, body)
        finally:
            kill_point()
    except NetlinkError as exc:
        raise AttachError(exc.code, f"{what}: {exc.detail()}") from None


def _dump(nl: Netlink, what: str, kind: int, ifindex: int, parent: int) -> list[_Tc]:
    try:
        found = nl.sock.dump(kind, _TCMSG.pack(socket.AF_UNSPEC, ifindex, 0, parent, 0))
    except NetlinkError as exc:
        raise AttachError(exc.code, f"{what}: {exc.detail()}") from None
    return [t for t in (_Tc(*m) for m in found) if t.ifindex == ifindex]


def _filters(nl: Netlink, ifindex: int, parent: int) -> list[_Tc]:
    return [f for f in _dump(nl, "list tc filters", RTM_GETTFILTER, ifindex, parent) if f.kind]


def _ours(f: _Tc) -> bool:
    opts = f.attrs.get(TCA_OPTIONS)
    return (f.info >> 16 == PRIO and f.handle == HANDLE and opts is not None
            and cstr(attrs(opts, 0, len(opts)).get(TCA_BPF_NAME)) == FILTER_NAME)


def has_egress(nl: Netlink, ifindex: int) -> bool:
    """Whether the interface has our egress filter."""
    if not has_clsact(nl, ifindex):
        return False
    return any(_ours(f) for f in _filters(nl, ifindex, _EGRESS_PARENT))


def has_clsact(nl: Netlink, ifindex: int) -> bool:
    return any(q.kind == "clsact" for q in _dump(nl, "list qdiscs", RTM_GETQDISC, ifindex, 0))


def _clsact(ifindex: int) -> bytes:
    return _TCMSG.pack(socket.AF_UNSPEC, ifindex, _CLSACT_HANDLE, _CLSACT_PARENT, 0) + attr(TCA_KIND, b"clsact\0")


def attach_egress(nl: Netlink, ifindex: int, prog_fd: int) -> bool:
    """Put the egress program on ``ifindex`` (replacing ours atomically when
    there). Returns True when the clsact qdisc was added for it."""
    import errno

    added = False
    if not has_clsact(nl, ifindex):
        try:
            _change(nl, "add clsact qdisc", RTM_NEWQDISC, NLM_F_CREATE | NLM_F_EXCL, _clsact(ifindex))
            added = True
        except AttachError as exc:
            if exc.errno != errno.EEXIST:
                raise
    opts = (attr(TCA_BPF_FD, U32.pack(prog_fd)) + attr(TCA_BPF_NAME, FILTER_NAME.encode() + b"\0")
            + attr(TCA_BPF_FLAGS, U32.pack(TCA_BPF_FLAG_ACT_DIRECT)) + attr(TCA_BPF_CLASSID, U32.pack(1)))
    body = (_TCMSG.pack(socket.AF_UNSPEC, ifindex, HANDLE, _EGRESS_PARENT, _FILTER_INFO)
            + attr(TCA_KIND, b"bpf\0") + attr(TCA_OPTIONS | NLA_F_NESTED, opts))
    try:
        _change(nl, "attach the egress program", RTM_NEWTFILTER, NLM_F_CREATE | NLM_F_REPLACE, body)
    except BaseException:
        if added:
            remove_clsact_if_empty(nl, ifindex)
        raise
    return added


def detach_egress(nl: Netlink, ifindex: int, own_clsact: bool) -> None:
    """Remove our egress filter (and the qdisc when we added it and nothing
    else is on it). Nothing there is not an error."""
    if not has_clsact(nl, ifindex):
        return
    if any(_ours(f) for f in _filters(nl, ifindex, _EGRESS_PARENT)):
        body = _TCMSG.pack(socket.AF_UNSPEC, ifindex, HANDLE, _EGRESS_PARENT, _FILTER_INFO) + attr(TCA_KIND, b"bpf\0")
        _change(nl, "detach the egress program", RTM_DELTFILTER, 0, body)
    if own_clsact:
        remove_clsact_if_empty(nl, ifindex)


def remove_clsact_if_empty(nl: Netlink, ifindex: int) -> None:
    if _filters(nl, ifindex, _EGRESS_PARENT) or _filters(nl, ifindex, _INGRESS_PARENT):
        return
    _change(nl, "remove the clsact qdisc", RTM_DELQDISC, 0, _clsact(ifindex))
