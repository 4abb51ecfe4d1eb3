"""The filter program on interfaces: loading and pinning it once per state,
attaching it (replacing only our own program, atomically), detaching, and
the record of attached interfaces in the ``ifaces`` map."""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING, Any, NamedTuple

from . import layout as L
from .bpf import Program
from .errors import AttachError, BpfError, UsageError
from .state import PROG_PIN, open_object, pin_program, start_sweeper

if TYPE_CHECKING:
    from .state import State

MODES = ("auto", "native", "generic", "offload")


class Attachment(NamedTuple):
    ifname: str
    ifindex: int
    netns: str | None
    mode: str
    prog_id: int
    attached: bool  # the interface still runs the recorded program

    def to_dict(self) -> dict[str, Any]:
        return {"ifname": self.ifname, "ifindex": self.ifindex, "netns": self.netns, "mode": self.mode,
                "prog_id": self.prog_id, "attached": self.attached}


def _iface_key(ifindex: int, netns: str | None) -> bytes:
    return L.IFACE_KEY.pack(ifindex, (netns or "").encode())


def _prog_name(prog_id: int) -> str:
    try:
        with Program.from_id(prog_id) as p:
            return p.name or "unnamed"
    except BpfError:
        return "unknown"


def load_program(st: State) -> Program:
    """A fresh instance of the filter program on this state's maps (unpinned);
    the expiry sweeper is re-armed with the new object's code."""
    with open_object(st.pin_dir) as obj:
        obj.load()
        start_sweeper(obj)
        return obj.program("xdp_filter")


def program(st: State, reload: bool = False) -> Program:
    """The state's pinned program, loaded and pinned first when missing (or when ``reload``)."""
    path = os.path.join(st.pin_dir, PROG_PIN)
    if not reload and os.path.exists(path):
        return Program.from_pin(path)
    st.require_lock()
    prog = load_program(st)
    pin_program(prog, st.pin_dir)
    return prog


def recorded(st: State) -> dict[tuple[str | None, int], Attachment]:
    out = {}
    for k, v in st.map("ifaces").items():
        idx, ns = L.IFACE_KEY.unpack(k)
        name, mode, pid = L.IFACE_VAL.unpack(v)
        netns = ns.rstrip(b"\0").decode() or None
        out[(netns, idx)] = Attachment(name.rstrip(b"\0").decode(), idx, netns, MODES[mode], pid, True)
    return out


def attach(st: State, ifname: str, mode: Any = None, netns: str | None = None, force: bool = False,
           reload: bool = False) -> Attachment:
    """Attach the filter to ``ifname`` (in ``netns``). Replaces our own
    program atomically; refuses another program unless ``force``."""
    from .xdp import Netlink, XdpMode

    st.require_lock()
    mode = mode or XdpMode.AUTO
    with Netlink(netns) as nl:
        ifst = nl.state(ifname)
        from .ruleset import check_attach

        check_attach(st, ifname, ifst.ifindex, netns)
        fresh = reload or not os.path.exists(os.path.join(st.pin_dir, PROG_PIN))
        prog = load_program(st) if fresh else program(st)
        try:
            recs = recorded(st)
            rec = recs.get((netns, ifst.ifindex))
            pinned_id = _pinned_id(st)
            key = _iface_key(ifst.ifindex, netns)
            if ifst.prog_id and ifst.prog_id != prog.id:
                ours = (rec is not None and rec.prog_id == ifst.prog_id) or ifst.prog_id == pinned_id or uses_state(
                    st, ifst.prog_id)
                if not ours and not force:
                    other = _prog_name(ifst.prog_id)
                    raise AttachError(
                        errno.EBUSY,
                        f"{ifname} already runs XDP program {ifst.prog_id} ({other}), not this pyxdp filter; "
                        "--force replaces it",
                    )
            # a new interface is recorded before the netlink call: a writer killed right after attaching leaves
            # a record, so the next detach of the last interface does not remove state an interface runs on
            if rec is None:
                want = mode if mode is not XdpMode.AUTO else XdpMode.AUTO
                st.map("ifaces").update(key, L.IFACE_VAL.pack(ifname.encode(), MODES.index(want.value), prog.id))
            try:
                if ifst.prog_id == prog.id:
                    used = ifst.mode
                elif ifst.prog_id:
                    with Program.from_id(ifst.prog_id) as old:
                        want = ifst.mode if mode is XdpMode.AUTO else mode
                        used = nl.attach(ifname, prog.fd, want or XdpMode.AUTO, replace_fd=old.fd)
                else:
                    used = nl.attach(ifname, prog.fd, mode, force=force)
            except BaseException:
                if rec is None:
                    st.map("ifaces").delete(key)
                raise
            assert used is not None
            if fresh:
                pin_program(prog, st.pin_dir)  # only once it runs: a failed attach changes nothing
            st.map("ifaces").update(key, L.IFACE_VAL.pack(ifname.encode(), MODES.index(used.value), prog.id))
            if reload:  # every interface recorded runs the new program too
                for (ns, idx), a in recs.items():
                    if (ns, idx) != (netns, ifst.ifindex) and a.prog_id != prog.id:
                        _replace_on(st, a, prog)
            return Attachment(ifname, ifst.ifindex, netns, used.value, prog.id, True)
        finally:
            prog.close()


def _pinned_id(st: State) -> int:
    try:
        with Program.from_pin(os.path.join(st.pin_dir, PROG_PIN)) as p:
            return int(p.id)
    except (BpfError, OSError):
        return 0


def uses_state(st: State, prog_id: int) -> bool:
    """Whether program ``prog_id`` is a filter program of this state (it
    uses this state's config map): one a writer attached but died before
    pinning or recording it is still ours."""
    try:
        with Program.from_id(prog_id) as p:
            return st.map("cfg").id in p.map_ids()
    except BpfError:
        return False


def _replace_on(st: State, a: Attachment, prog: Program) -> None:
    from .xdp import Netlink, XdpMode

    try:
        with Netlink(a.netns) as nl:
            ifst = nl.state_by_index(a.ifindex)
            if ifst is None or ifst.prog_id != a.prog_id:
                return
            with Program.from_id(a.prog_id) as old:
                nl.attach(ifst.ifname, prog.fd, ifst.mode or XdpMode.AUTO, replace_fd=old.fd)
        st.map("ifaces").update(_iface_key(a.ifindex, a.netns),
                                L.IFACE_VAL.pack(a.ifname.encode(), MODES.index(a.mode), prog.id))
    except (UsageError, AttachError, BpfError):
        pass  # gone meanwhile: 'status' shows it


def detach(st: State, ifname: str, netns: str | None = None) -> list[tuple[str | None, int]]:
    """Take the filter off ``ifname``; returns the records removed."""
    from .xdp import Netlink

    st.require_lock()
    where = f" in netns {netns}" if netns else ""
    by_name = {k: a for k, a in recorded(st).items() if k[0] == netns and a.ifname == ifname}
    try:
        with Netlink(netns) as nl:
            ifst = nl.state(ifname)
            rec = recorded(st).get((netns, ifst.ifindex))
            if ifst.prog_id and ifst.mode is not None and (
                    (rec is not None and ifst.prog_id == rec.prog_id) or uses_state(st, ifst.prog_id)):
                with Program.from_id(ifst.prog_id) as old:
                    nl.detach(ifname, ifst.mode, expected_fd=old.fd)
            gone = [(netns, ifst.ifindex)] if rec is not None else list(by_name)
            if not gone and ifst.prog_id and uses_state(st, ifst.prog_id):
                gone = [(netns, ifst.ifindex)]  # attached by a writer that died before recording it
    except UsageError:
        if not by_name:  # no such interface, and no record of one by that name
            raise
        for (ns, idx), rec in by_name.items():  # renamed, or really gone?
            try:
                with Netlink(ns) as nl:
                    now = nl.state_by_index(idx)
            except UsageError:
                now = None  # its namespace is gone
            if now is not None and now.prog_id == rec.prog_id:
                raise UsageError(f"{ifname}{where} was renamed to {now.ifname} (ifindex {idx}), which still "
                                 f"runs this filter: detach {now.ifname}") from None
        gone = list(by_name)  # the interface (or its namespace) is gone, and its program with it
    if not gone:
        raise UsageError(f"pyxdp is not attached to {ifname}{where} (see 'pyxdp-load status')")
    for ns, idx in gone:
        st.map("ifaces").delete(_iface_key(idx, ns))
    return gone


def interfaces(st: State) -> list[Attachment]:
    """Recorded attachments, each checked against what the kernel runs."""
    from .xdp import Netlink

    out = []
    for (netns, _idx), a in sorted(recorded(st).items(), key=lambda kv: (kv[0][0] or "", kv[0][1])):
        try:
            with Netlink(netns) as nl:
                ifst = nl.state(a.ifname)
            live = ifst.prog_id == a.prog_id and ifst.ifindex == a.ifindex
        except (UsageError, AttachError):
            live = False
        out.append(Attachment(a.ifname, a.ifindex, netns, a.mode, a.prog_id, live))
    return out
