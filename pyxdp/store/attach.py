"""The filter program on interfaces: loading and pinning it once per state,
attaching it (replacing only our own program, atomically) with the egress
program that records the flows the host opens (pyxdp.tc), detaching, the
record of attached interfaces in the ``ifaces`` map, and their counter
slots (``ifslots``)."""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING, Any, NamedTuple

from .. import layout as L
from ..errors import AttachError, BpfError, UsageError
from ..kernel.bpf import Program
from ..kernel.tc import attach_egress, detach_egress, has_egress
from .mapio import write_all
from .objects import EGRESS_PIN, PROG_PIN, filter_program, open_object, pin_program, start_sweeper
from .shapes import needed, uses_state

if TYPE_CHECKING:
    from .state import State

MODES = ("auto", "native", "generic", "offload")


def iface_label(ifname: str, netns: str | None) -> str:
    """How counters, traces and metrics name an interface: ``eth0``, or
    ``NETNS/eth0`` in a named network namespace."""
    return f"{netns}/{ifname}" if netns else ifname


class Attachment(NamedTuple):
    ifname: str
    ifindex: int
    netns: str | None
    mode: str
    prog_id: int
    attached: bool  # the interface runs this state's program (prog_id, mode: what the kernel has)
    recorded_prog_id: int = 0  # the program the record names when the kernel runs another of this state (0: same)
    interrupted: bool = False  # the record says a change of the interface was under way (its writer was killed)

    def to_dict(self) -> dict[str, Any]:
        return {"ifname": self.ifname, "ifindex": self.ifindex, "netns": self.netns, "mode": self.mode,
                "prog_id": self.prog_id, "attached": self.attached, "recorded_prog_id": self.recorded_prog_id,
                "interrupted": self.interrupted}


def _iface_key(ifindex: int, netns: str | None) -> bytes:
    return L.IFACE_KEY.pack(ifindex, (netns or "").encode())


def _prog_name(prog_id: int) -> str:
    try:
        with Program.from_id(prog_id) as p:
            return p.name or "unnamed"
    except BpfError:
        return "unknown"


def load_programs(st: State) -> tuple[Program, Program]:
    """Fresh instances of the filter and egress programs on this state's maps
    (unpinned); the filter of the shape the live configuration needs; the
    expiry sweeper is re-armed with the new object's code."""
    shape = needed(st, st.config())
    with open_object(st.pin_dir, shape=shape) as obj:
        obj.load()
        start_sweeper(obj)
        prog = obj.program(filter_program(shape))
        try:
            return prog, obj.program("egress")
        except BaseException:
            prog.close()
            raise


def pin_programs(st: State, prog: Program, eprog: Program) -> None:
    pin_program(eprog, st.pin_dir, EGRESS_PIN)
    pin_program(prog, st.pin_dir)


def _pinned_programs(st: State) -> tuple[Program, Program] | None:
    paths = [os.path.join(st.pin_dir, n) for n in (PROG_PIN, EGRESS_PIN)]
    if not all(os.path.exists(p) for p in paths):
        return None
    prog = Program.from_pin(paths[0])
    try:
        return prog, Program.from_pin(paths[1])
    except BaseException:
        prog.close()
        raise


def program(st: State, reload: bool = False) -> Program:
    """The state's pinned program, loaded and pinned first (with the egress
    program) when missing, or when ``reload``."""
    pinned = None if reload else _pinned_programs(st)
    if pinned is not None:
        pinned[1].close()
        return pinned[0]
    st.require_lock()
    prog, eprog = load_programs(st)
    with eprog:
        pin_programs(st, prog, eprog)
    return prog


class _Record(NamedTuple):
    """One ``ifaces`` entry as stored."""

    ifname: str
    mode: int
    prog_id: int
    slot: int
    flags: int

    def pack(self) -> bytes:
        return L.IFACE_VAL.pack(self.ifname.encode(), self.mode, self.prog_id, self.slot, self.flags)


def _records(st: State) -> dict[tuple[str | None, int], _Record]:
    out = {}
    for k, v in st.map("ifaces").items():
        idx, ns = L.IFACE_KEY.unpack(k)
        name, mode, pid, slot, flags = L.IFACE_VAL.unpack(v)
        out[(ns.rstrip(b"\0").decode() or None, idx)] = _Record(name.rstrip(b"\0").decode(), mode, pid, slot, flags)
    return out


def recorded(st: State) -> dict[tuple[str | None, int], Attachment]:
    return {(netns, idx): Attachment(r.ifname, idx, netns, MODES[r.mode], r.prog_id, True)
            for (netns, idx), r in _records(st).items()}


def slot_names(st: State) -> dict[int, str]:
    """Counter slot -> the interface(s) it counts: "eth0", "NETNS/eth0"
    (the same ifindex in two namespaces shares a slot: names joined by ",")."""
    out: dict[int, list[str]] = {}
    for (netns, _idx), r in sorted(_records(st).items(), key=lambda kv: (kv[0][0] or "", kv[0][1])):
        if r.slot:
            out.setdefault(r.slot, []).append(iface_label(r.ifname, netns))
    return {slot: ",".join(names) for slot, names in out.items()}


def _assign_slot(st: State, recs: dict[tuple[str | None, int], _Record], ifindex: int) -> int:
    """The counter slot for a new attachment of ``ifindex``: the slot of a
    recorded interface with the same ifindex (another namespace), else a
    free one with its counters zeroed and ``ifslots`` pointing at it; 0
    (counted as no interface) when all are taken or its ifslots entry
    serves another ifindex."""
    for (_ns, idx), r in recs.items():
        if idx == ifindex and r.slot:
            return r.slot
    hkey = L.U32.pack(ifindex % L.IF_HASH)
    raw = st.map("ifslots").lookup(hkey)
    held, _s = L.IFSLOT.unpack(raw) if raw else (0, 0)
    if held not in (0, ifindex) and any(idx == held for _ns, idx in recs):
        return 0
    used = {r.slot for r in recs.values()}
    free = [s for s in range(1, L.IF_SLOTS) if s not in used]
    if not free:
        return 0
    slot = free[0]
    stats = st.map("stats")
    write_all(stats, [L.U32.pack(slot * L.STATS_STRIDE + i) for i in range(L.STATS_STRIDE)],
              [bytes(stats.value_bytes)] * L.STATS_STRIDE)  # one batch write
    st.map("ifslots").update(hkey, L.IFSLOT.pack(ifindex, slot))
    return slot


def _release_slot(st: State, ifindex: int, slot: int) -> None:
    """After a record went: free the slot's ifslots entry when no recorded
    interface uses it any more."""
    if not slot or any(r.slot == slot for r in _records(st).values()):
        return
    hkey = L.U32.pack(ifindex % L.IF_HASH)
    raw = st.map("ifslots").lookup(hkey)
    if raw and L.IFSLOT.unpack(raw)[0] == ifindex:
        st.map("ifslots").update(hkey, L.IFSLOT.pack(0, 0))


def attach(st: State, ifname: str, mode: Any = None, netns: str | None = None, force: bool = False,
           reload: bool = False) -> Attachment:
    """Attach the filter to ``ifname`` (in ``netns``). Replaces our own
    program atomically; refuses another program unless ``force``."""
    from ..kernel.xdp import Netlink
    from ..model.modes import XdpMode

    st.require_lock()
    mode = mode or XdpMode.AUTO
    with Netlink(netns) as nl:
        ifst = nl.state(ifname)
        from .ruleset import check_attach

        check_attach(st, ifname, ifst.ifindex, netns)
        pinned = None if reload else _pinned_programs(st)
        fresh = pinned is None
        prog, eprog = load_programs(st) if pinned is None else pinned
        try:
            recs = _records(st)
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
            # a new interface is recorded before the netlink calls: a writer killed right after attaching leaves
            # a record, so the next detach of the last interface does not remove state an interface runs on
            if rec is None:
                want = mode if mode is not XdpMode.AUTO else XdpMode.AUTO
                slot = _assign_slot(st, recs, ifst.ifindex)
                new = _Record(ifname, MODES.index(want.value), prog.id, slot, L.IFF_CHANGING)
                st.map("ifaces").update(key, new.pack())
            elif ifst.prog_id != prog.id:  # the intent: a change of what it runs is under way (confirmed below)
                st.map("ifaces").update(key, rec._replace(flags=rec.flags | L.IFF_CHANGING).pack())
            cur = rec._replace(flags=rec.flags | L.IFF_CHANGING) if rec is not None else new
            try:
                # egress first: flows the host opens from now on are known before the filter relies on them
                had_egress = rec is not None and has_egress(nl, ifst.ifindex)
                if attach_egress(nl, ifst.ifindex, eprog.fd):
                    cur = cur._replace(flags=cur.flags | L.IFF_OWN_CLSACT)
                    st.map("ifaces").update(key, cur.pack())
                if ifst.prog_id == prog.id:
                    used = ifst.mode
                elif ifst.prog_id:
                    with Program.from_id(ifst.prog_id) as old:
                        want = ifst.mode if mode is XdpMode.AUTO else mode
                        used = nl.attach(ifname, prog.fd, want or XdpMode.AUTO, replace_fd=old.fd)
                else:
                    used = nl.attach(ifname, prog.fd, mode, force=force)
            except BaseException:
                if rec is None or not had_egress:
                    _quietly(detach_egress, nl, ifst.ifindex, bool(cur.flags & L.IFF_OWN_CLSACT))
                if rec is None:
                    st.map("ifaces").delete(key)
                    _release_slot(st, ifst.ifindex, cur.slot)
                else:
                    st.map("ifaces").update(key, cur._replace(flags=cur.flags & ~L.IFF_CHANGING).pack())
                raise
            assert used is not None
            if fresh:
                pin_programs(st, prog, eprog)  # only once they run: a failed attach changes nothing
            # the confirmation: what runs now
            st.map("ifaces").update(key, cur._replace(mode=MODES.index(used.value), prog_id=prog.id,
                                                      flags=cur.flags & ~L.IFF_CHANGING).pack())
            if reload:  # every interface recorded runs the new programs too
                for (ns, idx), r in recs.items():
                    if (ns, idx) != (netns, ifst.ifindex) and r.prog_id != prog.id:
                        _replace_on(st, ns, idx, r, prog, eprog)
            return Attachment(ifname, ifst.ifindex, netns, used.value, prog.id, True)
        finally:
            prog.close()
            eprog.close()


def _quietly(fn: Any, *args: Any) -> None:
    """An undo step after a failure: its own failure must not hide the first."""
    try:
        fn(*args)
    except (AttachError, UsageError, BpfError):
        pass


def _pinned_id(st: State) -> int:
    try:
        with Program.from_pin(os.path.join(st.pin_dir, PROG_PIN)) as p:
            return int(p.id)
    except (BpfError, OSError):
        return 0


def _replace_on(st: State, netns: str | None, ifindex: int, r: _Record, prog: Program, eprog: Program) -> None:
    from ..kernel.xdp import Netlink
    from ..model.modes import XdpMode

    try:
        with Netlink(netns) as nl:
            ifst = nl.state_by_index(ifindex)
            if ifst is None or ifst.prog_id != r.prog_id:
                return
            key = _iface_key(ifindex, netns)
            st.map("ifaces").update(key, r._replace(flags=r.flags | L.IFF_CHANGING).pack())  # intent
            attach_egress(nl, ifindex, eprog.fd)
            with Program.from_id(r.prog_id) as old:
                nl.attach(ifst.ifname, prog.fd, ifst.mode or XdpMode.AUTO, replace_fd=old.fd)
        st.map("ifaces").update(key, r._replace(prog_id=prog.id, flags=r.flags & ~L.IFF_CHANGING).pack())
    except (UsageError, AttachError, BpfError):
        pass  # gone meanwhile: 'status' shows it


def detach(st: State, ifname: str, netns: str | None = None) -> list[tuple[str | None, int]]:
    """Take the filter off ``ifname``; returns the records removed."""
    from ..kernel.xdp import Netlink

    st.require_lock()
    where = f" in netns {netns}" if netns else ""
    recs = _records(st)
    by_name = {k: r for k, r in recs.items() if k[0] == netns and r.ifname == ifname}
    try:
        with Netlink(netns) as nl:
            ifst = nl.state(ifname)
            rec = recs.get((netns, ifst.ifindex))
            if ifst.prog_id and ifst.mode is not None and (
                    (rec is not None and ifst.prog_id == rec.prog_id) or uses_state(st, ifst.prog_id)):
                key = _iface_key(ifst.ifindex, netns)
                if rec is not None:  # the intent: a detach is under way (confirmed by removing the record)
                    st.map("ifaces").update(key, rec._replace(flags=rec.flags | L.IFF_CHANGING).pack())
                with Program.from_id(ifst.prog_id) as old:
                    try:
                        nl.detach(ifname, ifst.mode, expected_fd=old.fd)
                    except BaseException:
                        if rec is not None:
                            st.map("ifaces").update(key, rec.pack())
                        raise
            gone = [(netns, ifst.ifindex)] if rec is not None else list(by_name)
            if not gone and ifst.prog_id and uses_state(st, ifst.prog_id):
                gone = [(netns, ifst.ifindex)]  # attached by a writer that died before recording it
            if (netns, ifst.ifindex) in gone:
                detach_egress(nl, ifst.ifindex, rec is not None and bool(rec.flags & L.IFF_OWN_CLSACT))
    except UsageError as exc:
        if not by_name:  # no such interface, and no record of one by that name
            raise UsageError(_attached_elsewhere(st, ifname, netns) or str(exc)) from None
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
        raise UsageError(_attached_elsewhere(st, ifname, netns)
                         or f"pyxdp is not attached to {ifname}{where} (see 'pyxdp-load status')")
    for ns, idx in gone:
        st.map("ifaces").delete(_iface_key(idx, ns))
        if (ns, idx) in recs:
            _release_slot(st, idx, recs[(ns, idx)].slot)
    return gone


def _attached_elsewhere(st: State, ifname: str, netns: str | None) -> str | None:
    """What to tell a detach of ``ifname`` in ``netns`` when the state records
    that name only in other namespaces: where, and the option that reaches it."""
    others = {ns for (ns, _idx), a in recorded(st).items() if a.ifname == ifname and ns != netns}
    if not others:
        return None
    named = sorted(ns for ns in others if ns)
    places = [f"netns {ns}" for ns in named] + (["the host's namespace"] if None in others else [])
    ways = [f"{'add' if netns is None else 'use'} --netns {ns}" for ns in named]
    ways += ["leave out --netns"] if None in others else []
    here = "" if netns is None else f" is not attached in netns {netns}; it"
    return f"{ifname}{here} is attached in {' and '.join(places)}: {' or '.join(ways)}"


def interfaces(st: State) -> list[Attachment]:
    """Recorded attachments, each checked against what the kernel runs."""
    from ..kernel.rtnl import Links  # read-only netlink without pyroute2's import: 'status' stays quick

    out = []
    for (netns, idx), r in sorted(_records(st).items(), key=lambda kv: (kv[0][0] or "", kv[0][1])):
        a = Attachment(r.ifname, idx, netns, MODES[r.mode], r.prog_id, False,
                       interrupted=bool(r.flags & L.IFF_CHANGING))
        try:
            with Links(netns) as nl:
                ifst = nl.state(r.ifname)
        except (UsageError, AttachError):
            out.append(a)
            continue
        if ifst.ifindex == idx and ifst.prog_id:
            if ifst.prog_id == r.prog_id:
                a = a._replace(attached=True)
            elif uses_state(st, ifst.prog_id):  # a writer was killed between its netlink call and the record
                a = a._replace(prog_id=ifst.prog_id, attached=True, recorded_prog_id=r.prog_id)
            if a.attached and ifst.mode is not None:
                a = a._replace(mode=ifst.mode.value)
        out.append(a)
    return out
