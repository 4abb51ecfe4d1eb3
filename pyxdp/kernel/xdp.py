"""XDP attach: put a program's fd on an interface through rtnetlink (pyroute2),
take it off, and say what an interface runs. Works in other network
namespaces: netlink enters the namespace, the program's fd stays ours."""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, NamedTuple

from ..errors import AttachError, UsageError
from ..model.modes import XDP_FLAGS_REPLACE, XDP_FLAGS_UPDATE_IF_NOEXIST, XdpMode
from ..names import check_ifname, netns_exists

if TYPE_CHECKING:
    from typing import Any

# IFLA_XDP_ATTACHED values, as numbers and as pyroute2's names for them
_ATTACHED: dict[object, int] = {
    None: 0, 0: 0, 1: 1, 2: 2, 3: 3, 4: 4, "xdp": 1, "xdpgeneric": 2, "xdpoffload": 3, "xdpmulti": 4,
}
_MODE_OF = {1: "native", 2: "generic", 3: "offload"}


class XdpState(NamedTuple):
    """What an interface runs: program id (0 for none) and mode."""

    ifname: str
    ifindex: int
    prog_id: int
    mode: XdpMode | None


def _iproute_class() -> Any:
    """pyroute2's IPRoute, imported as the ordinary package."""
    try:
        from pyroute2 import IPRoute
    except ImportError as exc:
        if not isinstance(exc, ModuleNotFoundError) or exc.name not in ("pyroute2", None):  # there, but failing
            raise AttachError(errno.ENOPKG, f"pyroute2 cannot be imported: {exc}") from None
        raise AttachError(errno.ENOPKG, "pyroute2 is not installed (pip install 'pyroute2>=0.9.1')") from None
    return IPRoute


def preload() -> Any:
    """Import pyroute2 in a background thread and return the thread: the
    import (tens of ms) then overlaps a program load, which spends its time
    in the kernel's verifier with the GIL released. Join it before use."""
    import threading

    def _load() -> None:
        try:
            _iproute_class()
        except Exception:  # noqa: BLE001 - Netlink() raises it again, in the caller's thread
            pass

    t = threading.Thread(target=_load, name="pyxdp-preload", daemon=True)
    t.start()
    return t


class Netlink:
    """An rtnetlink socket, in the host's namespace or in ``netns`` (a name
    from ``ip netns``). Use as a context manager."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        if netns is not None and not netns_exists(netns):
            raise UsageError(f"no network namespace {netns!r} (see 'ip netns list')")
        cls = _iproute_class()
        kwargs: dict[str, Any] = {"ext_ack": True}
        if netns is not None:
            kwargs["netns"] = netns
        self._ipr = cls(**kwargs)

    @property
    def ipr(self) -> Any:
        """The pyroute2 IPRoute (for tc, see pyxdp.tc)."""
        return self._ipr

    def close(self) -> None:
        self._ipr.close()

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ifindex(self, ifname: str) -> int:
        check_ifname(ifname)
        idx = self._ipr.link_lookup(ifname=ifname)
        if not idx:
            where = f" in netns {self.netns}" if self.netns else ""
            see = f"'ip -n {self.netns} link'" if self.netns else "'ip link'; in a namespace: --netns NAME"
            raise UsageError(f"no interface {ifname!r}{where} (see {see})")
        return int(idx[0])

    def state_by_index(self, ifindex: int) -> XdpState | None:
        """What interface ``ifindex`` runs, or None when there is no such interface."""
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            link = self._ipr.get_links(ifindex)[0]
        except (NetlinkError, IndexError):
            return None
        return self._xdp_state(link.get_attr("IFLA_IFNAME") or "", ifindex, link)

    def state(self, ifname: str) -> XdpState:
        idx = self.ifindex(ifname)
        return self._xdp_state(ifname, idx, self._ipr.get_links(idx)[0])

    def _xdp_state(self, ifname: str, idx: int, link: Any) -> XdpState:
        xdp = link.get_attr("IFLA_XDP")
        prog_id, mode = 0, None
        if xdp is not None:
            attached = _ATTACHED.get(xdp.get_attr("IFLA_XDP_ATTACHED"), 0)
            prog_id = xdp.get_attr("IFLA_XDP_PROG_ID") or 0
            if attached == 4:  # multi: one in each of driver and skb
                prog_id = xdp.get_attr("IFLA_XDP_DRV_PROG_ID") or xdp.get_attr("IFLA_XDP_SKB_PROG_ID") or 0
                attached = 1 if xdp.get_attr("IFLA_XDP_DRV_PROG_ID") else 2
            if attached:
                mode = XdpMode(_MODE_OF[attached])
        return XdpState(ifname, idx, int(prog_id), mode)

    def _set(self, ifindex: int, attrs: list[tuple[str, int]], what: str) -> None:
        from pyroute2.netlink.exceptions import NetlinkError

        from .bpf import kill_point

        try:
            try:
                self._ipr.link("set", index=ifindex, xdp={"attrs": attrs})
            finally:
                kill_point()
        except NetlinkError as exc:
            msg = exc.args[1] if len(exc.args) > 1 and exc.args[1] else ""
            detail = str(msg) if msg else errno.errorcode.get(exc.code, str(exc.code))
            err = AttachError(exc.code, f"{what}: {detail}")
            raise err from None

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
            attrs = [("IFLA_XDP_FD", prog_fd)]
            flags = m.flags
            if replace_fd is not None:
                flags |= XDP_FLAGS_REPLACE
                attrs.append(("IFLA_XDP_EXPECTED_FD", replace_fd))
            elif not force:
                flags |= XDP_FLAGS_UPDATE_IF_NOEXIST
            attrs.append(("IFLA_XDP_FLAGS", flags))
            try:
                self._set(idx, attrs, f"attach to {ifname} ({m.value})")
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
        attrs = [("IFLA_XDP_FD", -1)]
        flags = mode.flags
        if expected_fd is not None:
            flags |= XDP_FLAGS_REPLACE
            attrs.append(("IFLA_XDP_EXPECTED_FD", expected_fd))
        attrs.append(("IFLA_XDP_FLAGS", flags))
        self._set(idx, attrs, f"detach from {ifname}")
