"""The egress program on tc: a clsact qdisc (added when missing) and one
``bpf`` filter in direct-action mode on its egress hook, at a fixed
priority and handle, named ``pyxdp_egress``. Only that filter is ever
replaced or removed; the qdisc goes only when pyxdp added it and it holds
nothing else. Uses the rtnetlink socket of :class:`pyxdp.kernel.xdp.Netlink`."""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from ..errors import AttachError

if TYPE_CHECKING:
    from typing import Any

    from .xdp import Netlink

FILTER_NAME = "pyxdp_egress"
PRIO = 0xC000  # late in the egress chain: other tools' filters run first
HANDLE = 1
EGRESS = "ffff:fff3"
_EGRESS_PARENT = 0xFFFFFFF3
_INGRESS_PARENT = 0xFFFFFFF2
ETH_P_ALL = 3


def _call(what: str, fn: Any, *args: Any, change: bool = False, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, its netlink error as an AttachError saying
    ``what``; ``change``: a call that changes the interface (a kill point of
    the crash-injection hook, pyxdp.bpf.kill_point)."""
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        try:
            return fn(*args, **kwargs)
        finally:
            if change:
                from .bpf import kill_point

                kill_point()
    except NetlinkError as exc:
        msg = exc.args[1] if len(exc.args) > 1 and exc.args[1] else errno.errorcode.get(exc.code, str(exc.code))
        raise AttachError(exc.code, f"{what}: {msg}") from None


def _filters(nl: Netlink, ifindex: int, parent: int) -> list[Any]:
    return [f for f in _call("list tc filters", nl.ipr.get_filters, index=ifindex, parent=parent)
            if f.get_attr("TCA_KIND")]


def _ours(f: Any) -> bool:
    opts = f.get_attr("TCA_OPTIONS")
    return (f["info"] >> 16 == PRIO and f["handle"] == HANDLE and opts is not None
            and opts.get_attr("TCA_BPF_NAME") == FILTER_NAME)


def has_egress(nl: Netlink, ifindex: int) -> bool:
    """Whether the interface has our egress filter."""
    if not has_clsact(nl, ifindex):
        return False
    return any(_ours(f) for f in _filters(nl, ifindex, _EGRESS_PARENT))


def has_clsact(nl: Netlink, ifindex: int) -> bool:
    qdiscs = _call("list qdiscs", nl.ipr.get_qdiscs, index=ifindex)
    return any(q.get_attr("TCA_KIND") == "clsact" for q in qdiscs)


def attach_egress(nl: Netlink, ifindex: int, prog_fd: int) -> bool:
    """Put the egress program on ``ifindex`` (replacing ours atomically when
    there). Returns True when the clsact qdisc was added for it."""
    added = False
    if not has_clsact(nl, ifindex):
        from pyroute2.netlink.exceptions import NetlinkError

        from .bpf import kill_point

        try:
            try:
                nl.ipr.tc("add", "clsact", index=ifindex)
            finally:
                kill_point()
            added = True
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise AttachError(exc.code, f"add clsact qdisc: {exc}") from None
    try:
        _call("attach the egress program", nl.ipr.tc, "replace-filter", "bpf", index=ifindex, handle=HANDLE,
              change=True, fd=prog_fd, name=FILTER_NAME, parent=EGRESS, classid=1, direct_action=True, prio=PRIO,
              protocol=ETH_P_ALL)
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
        _call("detach the egress program", nl.ipr.tc, "del-filter", "bpf", index=ifindex, handle=HANDLE,
              change=True, parent=EGRESS, prio=PRIO, protocol=ETH_P_ALL)
    if own_clsact:
        remove_clsact_if_empty(nl, ifindex)


def remove_clsact_if_empty(nl: Netlink, ifindex: int) -> None:
    if _filters(nl, ifindex, _EGRESS_PARENT) or _filters(nl, ifindex, _INGRESS_PARENT):
        return
    _call("remove the clsact qdisc", nl.ipr.tc, "del", "clsact", change=True, index=ifindex)
