"""The shape of the XDP program a state runs (:mod:`pyxdp.model.shapes`):
which shape the live configuration needs, which shape runs (read from the
programs themselves: ``knobs`` opens their ``.rodata``), and the program of
another shape replaced on every interface of the state.

The rule this module keeps: every program of the state that a packet can
run covers the live configuration. A config switch (:func:`switch`) that
needs a part the running programs leave out first replaces them, on every
interface, with one covering both the old and the new configuration, waits
for the packets of the old ones, then switches; a switch to a configuration
that needs less switches first, then replaces them with the narrower one. A
switch that keeps the shape loads nothing.

A writer killed inside a replacement leaves interfaces running the old or
the new program (both cover the live configuration), with records marked
changing or naming a program that is not the pinned one; the next switch
sees that (:func:`running`) and replaces them all again. The pinned program
(``prog``) is the one that runs everywhere once a replacement completes: it
is pinned last."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

from .. import layout as L
from ..errors import AttachError, BpfError, UsageError
from ..kernel.bpf import Map, Program
from ..layout import Shape
from ..model.shapes import covers, describe, joint, shape_for
from .clock import grace_period
from .lock import signals_deferred
from .objects import PROG_PIN, filter_program, open_object, pin_program

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Protocol

    class _State(Protocol):  # a State (not imported: state imports this module)
        pin_dir: str

        def map(self, name: str) -> Map: ...

        def config(self) -> Any: ...


def needed(st: _State, cfg: Any) -> Shape:
    """The shape configuration ``cfg`` (a :class:`pyxdp.store.state.Config`)
    needs, with the rule tables of its generation as written in ``rsets``."""
    fields = 0
    if cfg.nrules:
        raw = st.map("rsets").lookup(L.U32.pack(cfg.rgen & 1))
        fields = L.RULESET.unpack_from(raw)[2] if raw else ~0  # unreadable: needs every rule part
    return shape_for(cfg.established, cfg.trace_every, cfg.nrules, fields)


def program_shape(prog: Program) -> Shape:
    """The shape a loaded filter program was loaded with: the knobs at the
    start of its ``.rodata``."""
    for mid in prog.map_ids():
        try:
            m = Map.from_id(mid)
        except BpfError:
            continue
        with m:
            if m.name.endswith(".rodata") and m.value_size >= L.KNOBS.size:
                raw = m.lookup(L.U32.pack(0))
                if raw is not None:
                    return Shape(L.KNOBS.unpack_from(raw)[3])
    raise BpfError(0, f"program {prog.id} has no knobs")


def uses_state(st: _State, prog_id: int) -> bool:
    """Whether program ``prog_id`` is a filter program of this state (it
    uses this state's config map): one a writer attached but died before
    pinning or recording it is still ours."""
    try:
        with Program.from_id(prog_id) as p:
            return st.map("cfg").id in p.map_ids()
    except BpfError:
        return False


class Running(NamedTuple):
    """What the state's programs leave out together (a part is usable only
    when no running program leaves it out), and whether every interface
    runs the pinned program (else a replacement was cut short)."""

    shape: Shape
    settled: bool
    pinned: int  # the pinned program's id (0: none)


def _records(st: _State) -> list[tuple[bytes, bytes]]:
    return list(st.map("ifaces").items())


def running(st: _State) -> Running | None:
    """The shape that runs now (None: no program of this state runs or is
    pinned). Settled: read from the pinned program alone; after a cut-short
    replacement also from what the kernel runs on each interface."""
    import os

    recs = _records(st)
    try:
        pinned = Program.from_pin(os.path.join(st.pin_dir, PROG_PIN))
    except (BpfError, OSError):
        pinned = None
    if pinned is None and not recs:
        return None
    shape = 0
    pid = 0
    if pinned is not None:
        with pinned:
            pid = pinned.id
            shape = program_shape(pinned)
    if all(L.IFACE_VAL.unpack(v)[2] == pid and not L.IFACE_VAL.unpack(v)[4] & L.IFF_CHANGING for _k, v in recs):
        return Running(Shape(shape), True, pid)
    for _key, _ns, _idx, _rec, ifst in _kernel_view(st, recs):
        if ifst is not None and ifst.prog_id and ifst.prog_id != pid and uses_state(st, ifst.prog_id):
            with Program.from_id(ifst.prog_id) as p:
                shape |= program_shape(p)
    return Running(Shape(shape), False, pid)


def _kernel_view(st: _State, recs: list[tuple[bytes, bytes]]) -> list[tuple[bytes, str | None, int, tuple[Any, ...],
                                                                              Any]]:
    """Each record with what its interface runs (None: the interface or its namespace is gone)."""
    from ..kernel.rtnl import Links

    out = []
    for key, raw in recs:
        idx, ns_raw = L.IFACE_KEY.unpack(key)
        ns = ns_raw.rstrip(b"\0").decode() or None
        rec = L.IFACE_VAL.unpack(raw)
        try:
            with Links(ns) as nl:
                ifst = nl.state_by_index(idx)
        except (UsageError, AttachError):
            ifst = None
        out.append((key, ns, idx, rec, ifst))
    return out


def load(st: _State, shape: int) -> Program:
    """A new filter program of ``shape`` on the state's maps (unpinned; the
    egress program and the sweeper are not touched)."""
    name = filter_program(shape)
    with open_object(st.pin_dir, shape=shape) as obj:
        obj.only_program(name)
        obj.load()
        return obj.program(name)


def replace(st: _State, shape: int) -> int:
    """Load the program of ``shape``, run it on every interface of the state
    in place of the state's program there (atomically per interface:
    XDP_FLAGS_REPLACE), then pin it. Returns its id."""
    from ..kernel.xdp import Netlink
    from ..model.modes import XdpMode

    prog = load(st, shape)
    # SIGINT/SIGTERM held (as in every multi-map change): also what a helper process forked for a netns
    # socket (pyroute2) inherits, so that stopping it never runs this process's handlers in the copy
    with prog, signals_deferred():
        ifaces = st.map("ifaces")
        for key, ns, _idx, rec, ifst in _kernel_view(st, _records(st)):
            name, mode, pid, slot, flags = rec
            if ifst is None or not ifst.prog_id:
                continue  # gone, or detached by someone else: 'status' shows it
            if ifst.prog_id != prog.id:
                if ifst.prog_id != pid and not uses_state(st, ifst.prog_id):
                    continue  # another program runs there: not ours to replace
                ifaces.update(key, L.IFACE_VAL.pack(name, mode, pid, slot, flags | L.IFF_CHANGING))  # the intent
                try:
                    with Netlink(ns) as nl, Program.from_id(ifst.prog_id) as old:
                        nl.attach(ifst.ifname, prog.fd, ifst.mode or XdpMode.AUTO, replace_fd=old.fd)
                except (UsageError, AttachError, BpfError) as exc:
                    ifaces.update(key, L.IFACE_VAL.pack(*rec))  # undone: nothing changed there
                    msg = getattr(exc, "msg", str(exc))
                    raise AttachError(getattr(exc, "errno", 0) or 5, f"replacing the program of {ifst.ifname} by "
                                      f"one of another shape: {msg}; its program still covers the rules") from None
            ifaces.update(key, L.IFACE_VAL.pack(name, mode, prog.id, slot, flags & ~L.IFF_CHANGING))
        pin_program(prog, st.pin_dir)
        return int(prog.id)


def switch(st: _State, new_cfg: Any, write: Callable[[], None]) -> None:
    """Run ``write`` (the config switch to ``new_cfg``) with the programs
    replaced around it so that each covers what is live at every moment:
    widened before, narrowed after, untouched when the shape stays."""
    run = running(st)
    if run is None:  # nothing loaded yet: the attach loads the shape the config then needs
        write()
        return
    new = needed(st, new_cfg)
    if not run.settled or not covers(run.shape, new):
        replace(st, joint(needed(st, st.config()), new))
        grace_period(st)  # a packet in a replaced program may still read the config: done before the switch
        run = Running(joint(needed(st, st.config()), new), True, 0)
    write()
    if run.shape != new:
        replace(st, new)


class ShapeState(NamedTuple):
    """What ``status`` shows: the shape the state's programs run (None: no
    program loaded), the shape the live configuration needs, and whether
    every interface runs the pinned program."""

    running: Shape | None
    needed: Shape
    settled: bool

    def to_dict(self) -> dict[str, Any]:
        return {"running": None if self.running is None else describe(self.running), "needed": describe(self.needed),
                "settled": self.settled}


def shape_state(st: _State) -> ShapeState:
    run = running(st)
    return ShapeState(None if run is None else run.shape, needed(st, st.config()), run is None or run.settled)
