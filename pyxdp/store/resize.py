"""Changing the capacities of existing state (rules, set elements per
family, flows) in place while the filter runs: the migration's machinery
(:mod:`pyxdp.store.migrate`) with a converter from this layout to itself.

The maps whose size changes are made beside the old ones under their
temporary names and filled; the new programs are loaded on them; every
interface switches to them atomically (``XDP_FLAGS_REPLACE``); after a grace
period what the old program counted meanwhile (rule and element hits) is
added and flows it recorded meanwhile are copied; then the programs are
pinned, the new maps renamed over the old names, and the layout record's
rule words written. Rules: the live rule list is first moved to generation
0 (a re-install of the same rules: ids and counters stay), whose class ids
do not depend on the capacity, so the maps both programs share (``rports``,
``riface``, ``rsets``) stay valid; the new rule maps get generation 0 only.

A pinned ``resize_journal`` (the targets and a phase) makes it all or
nothing under SIGKILL: the next command that opens the state with the lock
undoes a resize killed before its switch (drops the new maps, re-arms the
sweeper on the old ones), redoes one killed during the switch, and finishes
one killed after it (renames, layout record)."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from .. import layout as L
from ..errors import IncompatibleMap, UsageError
from ..kernel.bpf import Map, MapSpec, MapType
from .clock import grace_period
from .lock import signals_deferred
from .mapio import write_all
from .migrate import Converter, MapChange, Migration, RunMaps, iface_records
from .objects import (
    ELEMENT_MAPS,
    FLOW_MAPS,
    RESIZE_JOURNAL,
    object_build_id,
    open_object,
    rule_sizes,
    start_sweeper,
    temp_pin,
)

if TYPE_CHECKING:
    from .state import State

__all__ = ["recover", "resize"]

_REC = struct.Struct("=4sIIII")  # magic, phase, rules, set capacity, flows
_MAGIC = b"PXRS"
BUILDING, SWITCHING, FINISHING = 1, 2, 3
RULE_MAPS = ("rlit4", "rlit6", "rvec", "rorder", "rhits", "rdefs")


# ---- the journal ------------------------------------------------------------------------------


def _jpath(pin_dir: str) -> str:
    return os.path.join(pin_dir, RESIZE_JOURNAL)


def _write_journal(pin_dir: str, phase: int, rules: int, capacity: int, flows: int) -> None:
    path = _jpath(pin_dir)
    rec = _REC.pack(_MAGIC, phase, rules, capacity, flows)
    if os.path.lexists(path):
        with Map.from_pin(path) as m:
            m.update(L.U32.pack(0), rec)  # one word-sized update: the phase changes at once
        return
    tmp = path + "_new"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    with Map.create(MapType.ARRAY, "pyxdp_resize", L.U32.size, _REC.size, 1) as m:
        m.update(L.U32.pack(0), rec)
        m.pin(tmp)
    os.replace(tmp, path)


def _read_journal(pin_dir: str) -> tuple[int, int, int, int] | None:
    path = _jpath(pin_dir)
    if not os.path.lexists(path):
        return None
    with Map.from_pin(path) as m:
        raw = m.lookup(L.U32.pack(0)) if m.spec.value_size == _REC.size else None
    if not raw or _REC.unpack(raw)[0] != _MAGIC:
        raise IncompatibleMap(f"{path} is not a journal pyxdp wrote (the record of a resize under way): "
                              "it is left as it is: look at it, then remove it")
    _magic, phase, rules, capacity, flows = _REC.unpack(raw)
    return phase, rules, capacity, flows


# ---- the converter ------------------------------------------------------------------------------


def _copy(old: Map, new: Map, run: RunMaps) -> None:
    keys, vals = [], []
    for k, v in old.items():
        keys.append(k)
        vals.append(v)
    write_all(new, keys, vals)


def _no_op(old: Map, new: Map, run: RunMaps) -> None:
    """Filled by the rule converter (on ``rvec``)."""


def _spec_is(entries: int, vsize: int | None) -> Callable[[MapSpec], bool]:
    def test(spec: MapSpec) -> bool:
        return spec.max_entries == entries and (vsize is None or spec.value_size == vsize)
    return test


def _change(name: str, entries: int, vsize: int | None, conv: Callable[[Map, Map, RunMaps], None]) -> MapChange:
    is_new = _spec_is(entries, vsize)
    return MapChange(name, lambda spec: not is_new(spec), is_new, conv)


class Resize(Migration):
    """One resize of a pin directory to (rules, capacity, flows)."""

    def __init__(self, st: State, rules: int, capacity: int, flows: int) -> None:
        self.target = (rules, capacity, flows)
        self.hits_base: dict[str, dict[bytes, bytes]] = {}  # map -> old values when copied (what to add later)
        changes: list[MapChange] = []
        if rules != st.rule_capacity:
            sizes = rule_sizes(rules)
            for name in RULE_MAPS:
                entries, vsize = sizes[name]
                conv = self._rules if name == "rvec" else self._rule_ids if name in ("rdefs", "rhits") else _no_op
                changes.append(_change(name, entries, vsize, conv))
        for names, want in ((ELEMENT_MAPS, capacity), (FLOW_MAPS, flows)):
            for name in names:
                if st.map(name).spec.max_entries != want:
                    changes.append(_change(name, want, None, self._elements if name in ("elem4", "elem6") else _copy))
        super().__init__(st, Converter(L.PYXDP_LAYOUT, "this pyxdp", tuple(changes), iface_records,
                                       (self._after_switch,)), flows)
        self._ids: dict[int, int] | None = None

    # -- before the switch

    def build(self) -> None:
        self.plan()
        rules, capacity, flows = self.target
        obj = self.obj = open_object(self.st.pin_dir, capacity, rules, flows=flows, pin_as=self.pending)
        obj.load()
        self.run_maps = RunMaps(obj)
        self.prog = obj.program("xdp_filter")
        self.eprog = obj.program("egress")
        start_sweeper(obj)
        self._convert(after_switch=False)

    def _id_map(self) -> dict[int, int]:
        """Old rule id -> new one: kept when below 2 x the new capacity, else
        (a shrink) the lowest id free in the new range."""
        if self._ids is None:
            from .ruleset import live_rules

            n = 2 * self.target[0]
            live = [rid for rid, _r in live_rules(self.st)]
            keep = {rid for rid in live if rid < n}
            free = (i for i in range(n) if i not in keep)
            self._ids = {rid: rid if rid < n else next(free) for rid in live}
        return self._ids

    def _rule_ids(self, old: Map, new: Map, run: RunMaps) -> None:
        """rdefs: every text below the new range (ids given out before) and
        the live rules' texts under their new ids; rhits: the live rules'
        counters (what the old program adds until the switch comes after it)."""
        ids = self._id_map()
        n = new.spec.max_entries
        keys, vals = [], []
        base: dict[bytes, bytes] = {}
        taken = set(ids.values())
        for k, v in old.items():
            rid = L.U32.unpack(k)[0]
            to = ids.get(rid, rid)
            if rid not in ids and (rid in taken or old.spec.type == MapType.PERCPU_ARRAY):
                continue  # a gone rule's counter, or a text whose id a live rule takes now
            if to < n:
                keys.append(L.U32.pack(to))
                vals.append(v)
                base[L.U32.pack(to)] = v
        if old.spec.type == MapType.PERCPU_ARRAY:
            self.hits_base["rhits"] = {L.U32.pack(rid): base[L.U32.pack(to)] for rid, to in ids.items()
                                       if L.U32.pack(to) in base}
        write_all(new, keys, vals)

    def _rules(self, old: Map, new: Map, run: RunMaps) -> None:
        """The live rules (generation 0) compiled for the new capacity into the new rule maps."""
        from ..model.compiler import compile_rules
        from . import sets as S
        from .ruleset import first_word, ifindexes_of, live_rules

        cap = self.target[0]
        cfg = self.st.config()
        assert cfg.rgen == 0
        rules = [r for _rid, r in live_rules(self.st)]
        ifindexes = ifindexes_of(self.st, rules) if any(r.iface for r in rules) else {}
        t = compile_rules(rules, cap, 0, S.live_ids(self.st), ifindexes)
        ids = self._id_map()
        live_ids = [rid for rid, _r in live_rules(self.st)]
        write_all(new, [L.U32.pack(c) for c in sorted(t.vectors)],
                  [t.vectors[c].to_bytes(cap // 8, "little") + first_word(t.vectors[c], cap // 64)
                   for c in sorted(t.vectors)])
        for (d, fam), table in t.lit.items():
            kst = L.RKEY4 if fam == 4 else L.RKEY6
            items = sorted(table.items(), key=lambda kv: (kv[0].plen, kv[0].addr))
            write_all(run.map("rlit4" if fam == 4 else "rlit6"), [kst.pack(32 + p.plen, d, p.addr) for p, _c in items],
                      [L.U32.pack(c) for _p, c in items])
        write_all(run.map("rorder"), [L.U32.pack(i) for i in range(len(rules))],
                  [L.RREF.pack(ids[live_ids[i]], int(r.action)) for i, r in enumerate(rules)])
        # what both programs read from the shared maps must be what this compile says
        sets = [list(t.set_ids[d]) + [0] * (L.RULE_SETS - len(t.set_ids[d])) for d in (0, 1)]
        rs = L.RULESET.pack(t.n_words, t.iface_dflt, t.fields, t.all_cls, *t.proto_cls, *t.lit_dflt, *t.setb,
                            len(t.set_ids[0]), len(t.set_ids[1]), *sets[0], *sets[1], *t.noport)
        if self.st.map("rsets").lookup(L.U32.pack(0)) != rs:
            raise IncompatibleMap(f"state in {self.st.pin_dir}: the live rules do not compile to the tables they "
                                  "run with; 'pyxdp-load reload' (or apply) them, then resize")

    def _elements(self, old: Map, new: Map, run: RunMaps) -> None:
        base = dict(old.items())
        self.hits_base.setdefault("_elem", {}).update({bytes([len(k)]) + k: v for k, v in base.items()})
        write_all(new, list(base), list(base.values()))

    # -- the switch is journaled

    def switch(self) -> None:
        _write_journal(self.st.pin_dir, SWITCHING, *self.target)
        super().switch()

    # -- after it: what the old program did meanwhile

    def final_counters(self) -> None:
        grace_period(self.st)  # the old program's last runs are over
        self._after_switch(self.st, self.run_maps)  # type: ignore[arg-type]

    def _after_switch(self, st: State, run: RunMaps) -> None:
        names = {ch.name for ch in self.conv.changes if ch.name in self.pending}
        if "rhits" in names:
            old, new = st.map("rhits"), run.map("rhits")
            ids = self._id_map()
            for rid, to in ids.items():
                was = self.hits_base.get("rhits", {}).get(L.U32.pack(to))
                now = old.lookup(L.U32.pack(rid))
                if was is None or now is None:
                    continue
                cur = new.lookup(L.U32.pack(to)) or bytes(len(now))
                new.update(L.U32.pack(to), _add_words(cur, now, was))
        for name in ("elem4", "elem6"):
            if name not in names:
                continue
            old, new = st.map(name), run.map(name)
            base = self.hits_base.get("_elem", {})
            for k, v in old.items():
                prev = base.get(bytes([len(k)]) + k)
                got = new.lookup(k)
                if prev is None or got is None:
                    continue
                e = L.ELEM.unpack(got)
                hits = e[1] + L.ELEM.unpack(v)[1] - L.ELEM.unpack(prev)[1]
                new.update(k, L.ELEM.pack(e[0], max(hits, 0), e[2], e[3]))
        for name in FLOW_MAPS:
            if name not in names:
                continue
            old, new = st.map(name), run.map(name)
            for k, v in old.items():  # flows the old egress program recorded after the copy
                if new.lookup(k) is None:
                    try:
                        new.update(k, v)
                    except OSError:
                        pass  # an LRU table full: the oldest goes, as it would anyway

    def pin_programs(self) -> None:
        super().pin_programs()
        _write_journal(self.st.pin_dir, FINISHING, *self.target)

    def commit(self) -> None:
        _commit(self.st, self.target[0])


def _add_words(cur: bytes, now: bytes, was: bytes) -> bytes:
    n = len(cur) // 8
    c, a, b = struct.unpack(f"={n}Q", cur), struct.unpack(f"={n}Q", now), struct.unpack(f"={n}Q", was)
    return struct.pack(f"={n}Q", *((x + max(y - z, 0)) & 0xFFFFFFFFFFFFFFFF for x, y, z in zip(c, a, b)))


def _commit(st: State, rules: int) -> None:
    meta = st.map("meta")
    layout, _words, _build = L.META.unpack(meta[L.U32.pack(0)])
    meta.update(L.U32.pack(0), L.META.pack(layout, rules // 64, object_build_id()))
    os.unlink(_jpath(st.pin_dir))


# ---- the entry points -----------------------------------------------------------------------------


def check(st: State, rules: int | None, capacity: int | None, flows: int | None) -> None:
    """Refuse (UsageError) what cannot be: bad numbers (of those given), or
    less room than what is there."""
    from ..model.rules import check_capacity

    if rules is not None:
        check_capacity(rules)
    for what, n in (("set capacity", capacity), ("flow capacity", flows)):
        if n is not None and (n % 64 or not 64 <= n <= 1 << 26):
            raise UsageError(f"{what} {n}: a multiple of 64 from 64 to {1 << 26}")
    rules, capacity, flows = (rules or st.rule_capacity, capacity or st.capacity, flows or st.flow_capacity)
    nrules = st.config().nrules
    if nrules > rules:
        raise UsageError(f"rule capacity {rules}: the state has {nrules} rules")
    for name in ("elem4", "elem6"):
        have = sum(1 for _k in st.map(name))
        if have > capacity:
            raise UsageError(f"set capacity {capacity}: the state has {have} IPv{name[-1]} elements")
    for name in FLOW_MAPS:
        have = sum(1 for _k in st.map(name))
        if have > flows:
            raise UsageError(f"flow capacity {flows}: the state tracks {have} IPv{name[-1]} flows")


def resize(st: State, rules: int | None = None, capacity: int | None = None, flows: int | None = None) -> bool:
    """Change the state's capacities (None: as it is); False when nothing changes.
    The caller holds the writers' lock."""
    st.require_lock()
    check(st, rules, capacity, flows)
    target = (rules or st.rule_capacity, capacity or st.capacity, flows or st.flow_capacity)
    if target == (st.rule_capacity, st.capacity, st.flow_capacity):
        return False
    if target[0] != st.rule_capacity and st.config().rgen != 0:
        from .ruleset import install, live_rules

        live = live_rules(st)
        install(st, [r for _rid, r in live], live=live)  # the same rules, in generation 0
    with signals_deferred():
        _write_journal(st.pin_dir, BUILDING, *target)
        Resize(st, *target).run()
    return True


def recover(st: State) -> None:
    """Undo, redo or finish a resize a killed process left (its journal is
    pinned); the caller holds the writers' lock."""
    stray = _jpath(st.pin_dir) + "_new"
    if os.path.lexists(stray):
        os.unlink(stray)  # killed while pinning the journal: nothing was done yet
    rec = _read_journal(st.pin_dir)
    if rec is None:
        return
    phase, rules, capacity, flows = rec
    with signals_deferred():
        if phase == BUILDING:  # no interface changed: drop the new maps, the old ones' sweeper again
            for name in (*RULE_MAPS, *ELEMENT_MAPS, *FLOW_MAPS):
                tmp = os.path.join(st.pin_dir, temp_pin(name))
                if os.path.lexists(tmp):
                    os.unlink(tmp)
            with open_object(st.pin_dir) as obj:
                obj.only_program("sweep_start")
                obj.load()
                start_sweeper(obj)
            os.unlink(_jpath(st.pin_dir))
        elif phase == SWITCHING:
            Resize(st, rules, capacity, flows).run()
        else:
            for name in (*RULE_MAPS, *ELEMENT_MAPS, *FLOW_MAPS):
                tmp = os.path.join(st.pin_dir, temp_pin(name))
                if os.path.lexists(tmp):
                    os.replace(tmp, os.path.join(st.pin_dir, name))
            st.forget_maps()
            _commit(st, rules)
    st.forget_maps()
