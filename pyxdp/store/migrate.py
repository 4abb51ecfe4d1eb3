"""Migrating pinned state made by an older pyxdp (an older layout) to this
one's, in place, while the filter runs (``attach --reload``, ``up``).

A map whose shape did not change between the layouts is reused as it is:
the new programs are loaded against the very same pinned map (libbpf's pin
reuse), so no rule, set or element is copied, hit counters and timeouts
simply stay, and the old and the new program enforce the same rules and bans
throughout. A map whose shape changed is made anew beside the old one,
pinned under a temporary name (``cfg_v3``: bpffs names cannot hold dots),
and filled from the old one by that map's converter. Maps only the new
layout has are made under their own names. Then, in this order:

1. the maps of the new layout (made, or found half-made by a killed
   migration, and filled again from the old ones) and the new programs;
2. every recorded interface: the egress program, then the XDP program
   replaced atomically (``XDP_FLAGS_REPLACE`` with the old program's fd);
3. a grace period: the old program's last runs are over, so counters that
   only it wrote (the old ``stats``) are final and copied; what only the new
   programs keep is filled (layout 4's reply guard: over the flows the old
   egress program recorded, then armed);
4. the new programs pinned (``prog``, ``egress``), then the temporary pins
   renamed over the old names (the old maps go with their last reference);
5. the layout record (``meta``) written last: the commit point.

Until 5 the state reads as the old layout: every other command refuses it
and says to run ``attach IFACE --reload``, which does the whole job again,
idempotently: it recognises its own half-made maps (by their temporary
names, or by their new shape under the old names), and its own programs on
the interfaces (a program using this state's ``cfg_sel`` is ours, whichever
run loaded it). A SIGKILL at any step therefore leaves state the next call
repairs, and no interface is ever without a filter of this state.

:data:`CONVERTERS` is keyed by the layout migrated from; each entry takes
that layout to this one. A future layout adds an entry (and adjusts the
others). Layouts without one are refused as before."""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from .. import layout as L
from ..errors import AttachError, BpfError, IncompatibleMap, UsageError
from ..kernel.bpf import Map, MapSpec, Program
from ..layout import Verdict
from .clock import grace_period, monotonic_ns
from .guard import GUARD_MAP, arm_guard, cover_flows
from .lock import signals_deferred
from .mapio import write_all
from .objects import EGRESS_PIN, FLOW_MAPS, PROG_PIN, object_build_id, open_object, pin_program, start_sweeper, temp_pin
from .state import DEFAULT_PIN_DIR, Config

if TYPE_CHECKING:
    from ..kernel.bpf import BpfObject
    from .state import State

__all__ = ["CONVERTERS", "Converter", "MapChange", "OldIface", "RunMaps", "iface_records", "migrate", "refusal"]

# ---- layout 2 (pyxdp 0.2.0): the structs whose shape changed, as they were ------------------

V2_CONFIG = struct.Struct("=IIIIII")  # policy, trace_every, rgen, nrules, txn, pad
V2_IFACE_VAL = struct.Struct("=16sII")  # ifname, mode, prog_id
V2_REASONS = 8  # enum reason: R_MAX
V2_LOST = V2_REASONS * 2  # stats index of the lost trace events; reason * 2 + verdict before it
V2_STATS_ENTRIES = V2_LOST + 1
STATS_ENTRIES = L.IF_SLOTS * L.STATS_STRIDE + 1  # layouts 3 and 4


class OldIface(NamedTuple):
    """An interface as an ``ifaces`` record names it (in the fields all
    layouts have)."""

    netns: str | None
    ifindex: int
    ifname: str
    mode: int
    prog_id: int


class _Run:
    """What the converters of one migration run share: the new object's maps
    (opened on first use)."""

    def __init__(self, obj: BpfObject) -> None:
        self.obj = obj
        self._maps: dict[str, Map] = {}

    def map(self, name: str) -> Map:
        m = self._maps.get(name)
        if m is None:
            m = self._maps[name] = self.obj.map(name)
        return m

    def close(self) -> None:
        for m in self._maps.values():
            m.close()
        self._maps = {}


class MapChange(NamedTuple):
    """One map whose shape changed: how to tell the old shape from the new,
    and how to fill the new map from the old one."""

    name: str
    is_old: Callable[[MapSpec], bool]
    is_new: Callable[[MapSpec], bool]
    convert: Callable[[Map, Map, _Run], None]
    after_switch: bool = False  # converted once the old program runs nowhere (what only it writes: counters)


class Converter(NamedTuple):
    """How to take state of layout ``from_layout`` to this pyxdp's."""

    from_layout: int
    made_by: str  # the pyxdp release(s) that made it, for messages
    changes: tuple[MapChange, ...]
    read_ifaces: Callable[[Map], list[OldIface]]
    # once no interface runs the old programs, before the commit: fill what only the new ones keep
    after_switch: tuple[Callable[[State, _Run], None], ...] = ()


def _u32(i: int) -> bytes:
    return L.U32.pack(i)


def _v2_ifaces(m: Map) -> list[OldIface]:
    """The records of a layout-2 ``ifaces`` map (or of one already converted:
    layout 3's record starts with the same fields), sorted."""
    out = []
    for k, v in m.items():
        idx, ns = L.IFACE_KEY.unpack(k)
        name, mode, pid = V2_IFACE_VAL.unpack_from(v)
        out.append(OldIface(ns.rstrip(b"\0").decode() or None, idx, name.rstrip(b"\0").decode(), mode, pid))
    return sorted(out, key=lambda i: (i.netns or "", i.ifindex))


def _v2_cfg(old: Map, new: Map, run: _Run) -> None:
    """Both config slots (cfg_sel, reused, keeps saying which is live):
    connection state on, with the default timeouts."""
    keys, vals = [], []
    for slot in (0, 1):
        raw = old.lookup(_u32(slot)) or bytes(V2_CONFIG.size)
        policy, every, rgen, nrules, txn, _pad = V2_CONFIG.unpack(raw)
        keys.append(_u32(slot))
        vals.append(Config(Verdict(policy & 1), every, rgen & 1, nrules, txn).encode())
    write_all(new, keys, vals)


def _v2_ifaces_convert(old: Map, new: Map, run: _Run) -> None:
    """Each record with a counter slot (one per ifindex, as attach assigns
    them) and its ``ifslots`` entry. A record a killed run converted already
    keeps its program id and flags."""
    had = {}
    for k, v in new.items():
        had[k] = L.IFACE_VAL.unpack(v)
    slots: dict[int, int] = {}
    held: dict[int, int] = {}  # ifslots bucket -> the ifindex it serves
    keys, vals = [], []
    for i in _v2_ifaces(old):
        if i.ifindex not in slots:
            bucket = i.ifindex % L.IF_HASH
            free = len(set(slots.values()) - {0}) + 1
            if held.get(bucket, i.ifindex) != i.ifindex or free >= L.IF_SLOTS:
                slots[i.ifindex] = 0  # counted as no interface, as attach does when no slot is left
            else:
                slots[i.ifindex] = free
                held[bucket] = i.ifindex
        key = L.IFACE_KEY.pack(i.ifindex, (i.netns or "").encode())
        prev = had.get(key)
        pid, flags = (prev[2], prev[4]) if prev else (i.prog_id, 0)
        keys.append(key)
        vals.append(L.IFACE_VAL.pack(i.ifname.encode(), i.mode, pid, slots[i.ifindex], flags))
    write_all(run.map("ifslots"), [_u32(b) for b in held],
              [L.IFSLOT.pack(idx, slots[idx]) for idx in held.values()])
    write_all(new, keys, vals)


def _v2_stats(old: Map, new: Map, run: _Run) -> None:
    """The old totals (per reason and verdict, per CPU) into slot 0, the one
    no interface has, so that sums over interfaces go on from them; the lost
    trace events to their new place."""
    if old.value_bytes != new.value_bytes:
        raise IncompatibleMap(f"map stats: {old.value_bytes}-byte counters, this pyxdp has {new.value_bytes}")
    keys = [_u32(i) for i in range(V2_LOST)] + [_u32(L.LOST_SLOT)]
    vals = [old.lookup(_u32(i)) or bytes(old.value_bytes) for i in range(V2_STATS_ENTRIES)]
    write_all(new, keys, vals)


RunMaps = _Run  # for converters outside this module (pyxdp.store.resize)
iface_records = _v2_ifaces  # the interface records of a layout 3 or 4 state too


def _value_size(size: int) -> Callable[[MapSpec], bool]:
    return lambda spec: spec.value_size == size


def _entries(n: int) -> Callable[[MapSpec], bool]:
    return lambda spec: spec.max_entries == n


def _cover_flows(st: State, run: _Run) -> None:
    """Layout 4's reply guard (``ctguard``, made empty: not armed) over the
    flows the old egress program recorded, then armed. Runs once every
    interface's egress program raises the guard itself."""
    guard = run.map(GUARD_MAP)
    # the new cfg (renamed over the old one only at the commit): the longest timeout either slot has
    longest = max(max(Config.decode(raw).timeouts) for _key, raw in run.map("cfg").items())
    cover_flows((run.map(n) for n in FLOW_MAPS), guard, monotonic_ns(), longest)
    arm_guard(guard)


CONVERTERS: dict[int, Converter] = {
    2: Converter(2, "pyxdp 0.2", (
        MapChange("cfg", _value_size(V2_CONFIG.size), _value_size(L.CONFIG.size), _v2_cfg),
        MapChange("ifaces", _value_size(V2_IFACE_VAL.size), _value_size(L.IFACE_VAL.size), _v2_ifaces_convert),
        MapChange("stats", _entries(V2_STATS_ENTRIES), _entries(STATS_ENTRIES), _v2_stats, after_switch=True),
    ), _v2_ifaces, (_cover_flows,)),
    # layout 3 (connection state) -> 4: the reply guard is new; no map changed shape
    3: Converter(3, "pyxdp 0.2 with connection state", (), _v2_ifaces, (_cover_flows,)),
}

# ---- refusing old state ----------------------------------------------------------------------


def _pin_dir_option(pin_dir: str) -> str:
    return "" if pin_dir == DEFAULT_PIN_DIR else f" --pin-dir {pin_dir}"


def refusal(st: State, layout: int) -> str:
    """What a command that does not migrate says about state of ``layout``:
    the command that migrates it, naming an interface the old record names."""
    conv = CONVERTERS.get(layout)
    if conv is None:
        return (f"state in {st.pin_dir} has layout version {layout}; this pyxdp knows {L.PYXDP_LAYOUT} and cannot "
                "migrate it: use the pyxdp that made it, or detach everywhere and attach again")
    iface = "IFACE"
    try:
        ifaces = conv.read_ifaces(st.map("ifaces"))
    except (BpfError, struct.error):
        ifaces = []
    if ifaces:
        first = ifaces[0]
        iface = first.ifname + (f" --netns {first.netns}" if first.netns else "")
    return (f"state in {st.pin_dir} has layout version {layout} (made by {conv.made_by}); this pyxdp uses "
            f"{L.PYXDP_LAYOUT}: run 'pyxdp-load{_pin_dir_option(st.pin_dir)} attach {iface} --reload' to migrate "
            "it in place (rules, sets and bans are kept and enforced throughout)")


# ---- migrating -----------------------------------------------------------------------------------


def migrate(st: State, flows: int | None = None) -> int:
    """Bring the state to this pyxdp's layout (the caller holds the writers'
    lock). Returns the layout it was in, 0 when it was current already."""
    raw = st.map("meta").lookup(_u32(0))
    layout, words = (int(v) for v in L.META.unpack(raw)[:2]) if raw else (0, 0)
    if layout in (0, L.PYXDP_LAYOUT):
        return 0  # incomplete state, or current: State.check_meta says which
    conv = CONVERTERS.get(layout)
    if conv is None:
        raise IncompatibleMap(refusal(st, layout))
    st.require_lock()
    rvec = st.map("rvec").spec.value_size
    if words * 64 != (rvec - 8) * 8:
        raise IncompatibleMap(f"state in {st.pin_dir} was made by another build of pyxdp (map rvec holds "
                              f"{rvec}-byte vectors for {words * 64} rules): detach everywhere and attach again")
    with signals_deferred():
        Migration(st, conv, flows).run()
    return layout


class Migration:
    """One run of a converter on a pin directory: see the module's text. Its
    steps are methods so that a test can stop between them as a killed
    process would."""

    def __init__(self, st: State, conv: Converter, flows: int | None = None) -> None:
        self.st = st
        self.conv = conv
        self.flows = flows
        self.pending: dict[str, str] = {}  # changed map -> its temporary pin name, while the old one is there
        self.obj: BpfObject | None = None
        self.run_maps: _Run | None = None
        self.prog: Program | None = None
        self.eprog: Program | None = None
        self.switched: list[OldIface] = []

    def _path(self, name: str) -> str:
        return os.path.join(self.st.pin_dir, name)

    def run(self) -> None:
        try:
            self.build()
            self.switch()
            self.finish()
        finally:
            self.close()

    def close(self) -> None:
        for p in (self.prog, self.eprog):
            if p is not None:
                p.close()
        self.prog = self.eprog = None
        if self.run_maps is not None:
            self.run_maps.close()
            self.run_maps = None
        if self.obj is not None:
            self.obj.close()
            self.obj = None
        self.st.forget_maps()  # some names now pin other maps

    # ---- 1: the new maps and programs ----------------------------------------------------

    def plan(self) -> None:
        """Which changed maps still have the old shape under their name (their
        new map gets the temporary pin); a temporary pin of another shape (a
        run by another build) is dropped."""
        self.pending = {}
        for ch in self.conv.changes:
            with Map.from_pin(self._path(ch.name)) as m:
                spec = m.spec
            if ch.is_new(spec):
                continue  # renamed by a run that was killed after it
            if not ch.is_old(spec):
                raise IncompatibleMap(f"map {ch.name} in {self.st.pin_dir} has neither the shape of layout "
                                      f"{self.conv.from_layout} nor of {L.PYXDP_LAYOUT}: detach everywhere and "
                                      "attach again")
            tmp = temp_pin(ch.name)
            if os.path.exists(self._path(tmp)):
                with Map.from_pin(self._path(tmp)) as t:
                    stray = not ch.is_new(t.spec)
                if stray:
                    os.unlink(self._path(tmp))
            self.pending[ch.name] = tmp

    def build(self) -> None:
        """Load the object against the state (unchanged maps reused, changed
        ones at their temporary pins), re-arm the sweeper with its code, and
        fill the new maps that the old program does not write to."""
        self.plan()
        obj = self.obj = open_object(self.st.pin_dir, flows=self.flows, pin_as=self.pending)
        obj.load()
        self.run_maps = _Run(obj)
        self.prog = obj.program("xdp_filter")
        self.eprog = obj.program("egress")
        start_sweeper(obj)
        self._convert(after_switch=False)

    def _convert(self, after_switch: bool) -> None:
        assert self.run_maps is not None
        for ch in self.conv.changes:
            if ch.after_switch == after_switch and ch.name in self.pending:
                with Map.from_pin(self._path(ch.name)) as old:
                    ch.convert(old, self.run_maps.map(ch.name), self.run_maps)

    # ---- 2: every recorded interface runs the new programs --------------------------------

    def _ours(self, prog_id: int) -> bool:
        """Whether program ``prog_id`` belongs to this state (the old program,
        or a new one a killed run attached): it uses the state's cfg_sel,
        which both layouts share."""
        try:
            with Program.from_id(prog_id) as p:
                return self.st.map("cfg_sel").id in p.map_ids()
        except BpfError:
            return False

    def switch(self) -> None:
        """Egress first (flows the host opens from now on are known before the
        filter relies on them), then the XDP program, replaced atomically. An
        interface gone, or running no program of this state, is left as it is
        ('status' shows it); a replacement that fails stops the migration
        (the old program still filters there)."""
        from ..kernel.tc import attach_egress, has_clsact
        from ..kernel.xdp import Netlink
        from ..model.modes import XdpMode

        assert self.run_maps is not None and self.prog is not None and self.eprog is not None
        ifaces = self.run_maps.map("ifaces")  # of this layout (converted, or renamed already)
        self.switched = []
        for key, raw in sorted(ifaces.items()):
            idx, ns = L.IFACE_KEY.unpack(key)
            name, mode, pid, slot, flags = L.IFACE_VAL.unpack(raw)
            i = OldIface(ns.rstrip(b"\0").decode() or None, idx, name.rstrip(b"\0").decode(), mode, pid)
            try:
                nl = Netlink(i.netns)
            except UsageError:
                continue  # its namespace is gone, and the interface with it
            with nl:
                ifst = nl.state_by_index(i.ifindex)
                if ifst is None or not ifst.prog_id or not self._ours(ifst.prog_id):
                    continue
                if not flags & L.IFF_OWN_CLSACT and not has_clsact(nl, i.ifindex):
                    # recorded before it is added: a process killed right after adding it leaves it known as ours
                    flags |= L.IFF_OWN_CLSACT
                # the intent (a change of what it runs is under way), then the change, then the record of it
                ifaces.update(key, L.IFACE_VAL.pack(name, mode, pid, slot, flags | L.IFF_CHANGING))
                attach_egress(nl, i.ifindex, self.eprog.fd)
                with Program.from_id(ifst.prog_id) as old:
                    try:
                        nl.attach(ifst.ifname, self.prog.fd, ifst.mode or XdpMode.AUTO, replace_fd=old.fd)
                    except AttachError as exc:
                        raise AttachError(exc.errno or errno.EIO, f"migrating {ifst.ifname}: {exc.msg}; the old "
                                          "program still filters there: run 'attach --reload' again") from None
            ifaces.update(key, L.IFACE_VAL.pack(name, mode, self.prog.id, slot, flags & ~L.IFF_CHANGING))
            self.switched.append(i)

    # ---- 3-5: final counters, pins, the commit ----------------------------------------------

    def finish(self) -> None:
        self.final_counters()
        self.pin_programs()
        self.rename()
        self.commit()

    def final_counters(self) -> None:
        """Copy what only the old program counted, once it runs nowhere, and
        fill what only the new programs keep."""
        if any(ch.after_switch and ch.name in self.pending for ch in self.conv.changes):
            grace_period(self.st)  # its last runs (on other CPUs) are over: the old counters are final
            self._convert(after_switch=True)
        assert self.run_maps is not None
        for step in self.conv.after_switch:
            step(self.st, self.run_maps)

    def pin_programs(self) -> None:
        """Pin the new programs over the old one, where the state pins one or
        an interface runs them."""
        assert self.prog is not None and self.eprog is not None
        if self.switched or os.path.exists(self._path(PROG_PIN)):
            pin_program(self.eprog, self.st.pin_dir, EGRESS_PIN)
            pin_program(self.prog, self.st.pin_dir, PROG_PIN)

    def rename(self) -> None:
        """The new maps take the old ones' names (each rename is atomic; the
        old map goes with its last reference)."""
        for ch in self.conv.changes:
            if ch.name in self.pending:
                os.replace(self._path(self.pending[ch.name]), self._path(ch.name))

    def commit(self) -> None:
        """Write this layout into the layout record: the state is migrated."""
        meta = self.st.map("meta")
        _layout, words, _build = L.META.unpack(meta[_u32(0)])
        meta.update(_u32(0), L.META.pack(L.PYXDP_LAYOUT, words, object_build_id()))
