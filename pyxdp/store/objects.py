"""The shipped object and what it pins: the pin names, opening the object on
a pin directory's maps (capacities from what is pinned), arming the
sweeper, pinning a program in one step."""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping

from .. import layout as L
from ..errors import BpfError
from ..kernel.bpf import BpfObject, Map
from ..model.rules import DEFAULT_RULES, check_capacity

OBJECT_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "xdp_filter.bpf.o")
PINNED_MAPS = ("meta", "cfg", "cfg_sel", "journal", "stats", "events", "ifaces", "rsets", "rlit4", "rlit6", "rvec",
               "rports", "riface", "rorder", "rhits", "rdefs", "elem4", "elem6", "trie4", "trie6", "sets",
               "set_names", "counts", "swept", "sweeper", "sweep_ctl", "rcu_token", "rcu_sync", "tguard", "ifslots",
               "flows4", "flows6", "flows_made", "ctguard")
FLOW_MAPS = ("flows4", "flows6")  # the flow tables, by family
ELEMENT_MAPS = ("elem4", "elem6", "trie4", "trie6")
PROG_PIN = "prog"
FILTER_PROG = "xdp_filter"  # the general filter program
FAST_PROG = "xdp_filter_fast"  # the same with the fast paths (model/fastpath.py): its own program
EGRESS_PIN = "egress"  # the egress (tc) program that records the flows the host opens


def object_build_id(path: str = OBJECT_PATH) -> bytes:
    import hashlib

    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).digest()[:16]


def rule_sizes(rules: int) -> dict[str, tuple[int, int | None]]:
    """Map -> (max entries, value size or None) for a rule capacity."""
    from ..model.compiler import classes_per_gen

    return {
        "rlit4": (4 * rules, None),
        "rlit6": (4 * rules, None),
        "rvec": (2 * classes_per_gen(rules), rules // 8 + 8),  # the vector, then its first non-zero word
        "rorder": (2 * rules, None),
        "rhits": (2 * rules, None),
        "rdefs": (2 * rules, None),
    }


def filter_program(shape: int) -> str:
    """The object's filter program for ``knobs.shape`` ``shape``: the one with
    the fast paths when the shape has a fast-path bit."""
    return FAST_PROG if shape & (L.Shape.BAN_FIRST | L.Shape.PORT_RULES) else FILTER_PROG


def temp_pin(name: str) -> str:
    """Where a migration pins the new map ``name`` while the old one is still
    there (see pyxdp.store.migrate)."""
    return f"{name}_v{L.PYXDP_LAYOUT}"


def open_object(pin_dir: str, capacity: int | None = None, rules: int | None = None, trace_all: bool = False,
                count_hits: bool = True, flows: int | None = None,
                pin_as: Mapping[str, str] | None = None, shape: int = 0) -> BpfObject:
    """The shipped object with its maps pinned in ``pin_dir``; capacities are
    those of maps already pinned there (checked for shape), else ``capacity``
    (set elements per family), ``rules`` (rule capacity) and ``flows``
    (tracked connections). ``pin_as``: maps pinned (made, or reused) under
    another name in ``pin_dir`` (a migration's temporary pins). ``shape``:
    the parts of the datapath the program leaves out and the fast paths it
    has (:class:`layout.Shape`); only the filter program of that shape is
    loaded (:func:`filter_program`), not the other."""
    obj = BpfObject(OBJECT_PATH, pin_root=pin_dir)
    try:
        obj.skip_program(FILTER_PROG if filter_program(shape) == FAST_PROG else FAST_PROG)
        for name, other in (pin_as or {}).items():
            obj.set_pin_path(name, os.path.join(pin_dir, other))
        rvec = os.path.join(pin_dir, (pin_as or {}).get("rvec", "rvec"))  # a resize's new rule maps: their size
        if os.path.exists(rvec):
            with Map.from_pin(rvec) as pinned:
                rules = (pinned.spec.value_size - 8) * 8
        rules = check_capacity(rules or DEFAULT_RULES)
        for name, (entries, vsize) in rule_sizes(rules).items():
            obj.set_max_entries(name, entries)
            if vsize is not None:
                obj.set_value_size(name, vsize)
        obj.set_rodata(L.KNOBS.pack(int(trace_all), int(count_hits), rules // 64, int(shape)))
        for name in PINNED_MAPS:
            path = os.path.join(pin_dir, (pin_as or {}).get(name, name))
            if os.path.exists(path):
                with Map.from_pin(path) as pinned:
                    if name in ELEMENT_MAPS or name in FLOW_MAPS:
                        obj.set_max_entries(name, pinned.spec.max_entries)
                    obj.check_pinned(name, pinned.spec)
            elif capacity is not None and name in ELEMENT_MAPS:
                obj.set_max_entries(name, capacity)
            elif flows is not None and name in FLOW_MAPS:
                obj.set_max_entries(name, flows)
    except BaseException:
        obj.close()
        raise
    return obj


def start_sweeper(obj: BpfObject) -> None:
    """Arm the expiry sweeper's timer with this object's program."""
    with obj.program("sweep_start") as prog:
        res = prog.test_run(bytes(64))
    if res.retval != L.XDP_PASS:
        raise BpfError(errno.EINVAL, "arming the expiry sweeper failed")


def pin_program(prog: object, pin_dir: str, name: str = PROG_PIN) -> None:
    """Pin ``prog`` as the state's program ``name`` (the XDP filter, or
    EGRESS_PIN), replacing the old pin in one step."""
    path = os.path.join(pin_dir, name)
    tmp = path + "_new"  # bpffs refuses names with dots
    if os.path.exists(tmp):
        os.unlink(tmp)
    prog.pin(tmp)  # type: ignore[attr-defined]
    os.replace(tmp, path)


PROGRAM_PINS = (PROG_PIN, PROG_PIN + "_new", EGRESS_PIN, EGRESS_PIN + "_new")
# An empty directory pyxdp makes inside a pin directory it made itself: the
# record, kept as long as the directory, that removing the state may remove
# the directory too. A directory without it (made by someone else, or by a
# pyxdp 0.2 or older) is left where it is when the state goes.
MADE_MARK = "made_by_pyxdp"
UP_JOURNAL_PINS = ("up_journal", "up_journal_new")  # an 'up' under way (pyxdp.store.upjournal)
RESIZE_JOURNAL = "resize_journal"  # a resize under way (pyxdp.store.resize)
STATE_NAMES = (*PINNED_MAPS, *PROGRAM_PINS, *(temp_pin(n) for n in PINNED_MAPS), MADE_MARK,
               *UP_JOURNAL_PINS, RESIZE_JOURNAL, RESIZE_JOURNAL + "_new")  # what pyxdp makes
