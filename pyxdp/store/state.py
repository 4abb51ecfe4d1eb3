"""The filter's state in its pin directory: the pinned maps, the writers'
lock, the layout record, the double-buffered config and its grace periods,
and the journal that makes every multi-map change all or nothing.

Crash safety (SIGKILL included): a writer records the change it starts in
the ``journal`` map, writes new data where no packet looks yet (new set ids,
uncommitted set epochs, the idle rule generation), then commits with one
word (a set's epoch, or the config switch), then cleans up and clears the
journal. The next writer, before its own work, finishes or undoes what a
dead writer left (see :mod:`pyxdp.store.sets` ``recover``)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, NamedTuple

from .. import layout as L
from ..errors import AttachError, BpfError, IncompatibleMap, NotLoaded, UnreadableState, UsageError
from ..kernel.bpf import Map, Program
from ..kernel.bpffs import BPFFS, ensure_bpffs, is_bpffs, require_privileges
from ..layout import Verdict
from ..model.shapes import shape_for
from ..model.timeouts import default_timeouts
from .clock import RECENT_SWITCH_NS, grace_period, monotonic_ns
from .guard import GUARD_MAP, arm_guard
from .objects import (
    EGRESS_PIN,
    FLOW_MAPS,
    MADE_MARK,
    PINNED_MAPS,
    PROGRAM_PINS,
    RESIZE_JOURNAL,
    STATE_NAMES,
    filter_program,
    object_build_id,
    open_object,
    pin_program,
    start_sweeper,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from .lock import DirLock

    Migration = Callable[["State", "int | None"], int]  # brings older state to this layout; returns the old one
    Refusal = Callable[["State", int], str]  # what to say about state of another layout

DEFAULT_PIN_DIR = "/sys/fs/bpf/pyxdp"
DEFAULT_CAPACITY = 1 << 20  # set elements per family


class Config(NamedTuple):
    """The knobs that change while running (double-buffered in ``cfg``)."""

    policy: Verdict = Verdict.PASS
    trace_every: int = 0
    rgen: int = 0  # the rule-set generation packets use
    nrules: int = 0  # rules in it
    txn: int = 0  # the journal txn of the change that wrote it
    established: bool = True  # replies to flows the host opened pass before the rules
    timeouts: tuple[int, ...] = default_timeouts()  # seconds per flow state

    def encode(self) -> bytes:
        return L.CONFIG.pack(self.policy, self.trace_every, self.rgen, self.nrules, self.txn, int(self.established),
                             *self.timeouts)

    @classmethod
    def decode(cls, raw: bytes) -> Config:
        policy, every, rgen, nrules, txn, established, *timeouts = L.CONFIG.unpack(raw)
        return cls(Verdict(policy & 1), every, rgen & 1, nrules, txn, bool(established), tuple(timeouts))


def _prepare_dir(pin_dir: str) -> bool:
    """Make the pin directory (mode 0700) on a mounted bpffs, with its
    MADE_MARK in it; True if made now. An existing directory must be one root
    (or the caller) owns, not writable by others, holding only what pyxdp
    makes (pyxdp.pindir)."""
    from .pindir import make_pin_dir

    if pin_dir == BPFFS or pin_dir.startswith(BPFFS + "/"):
        ensure_bpffs(BPFFS)
    parent = os.path.dirname(pin_dir)
    if not os.path.isdir(parent):
        raise UsageError(f"pin dir parent {parent} does not exist")
    if not is_bpffs(parent):
        raise UsageError(f"pin dir {pin_dir} is not on a bpffs (mount -t bpf bpf {parent})")
    if not make_pin_dir(pin_dir, STATE_NAMES):
        return False
    try:
        os.mkdir(os.path.join(pin_dir, MADE_MARK), 0o700)
    except OSError as exc:
        try:
            os.rmdir(pin_dir)
        except OSError:
            pass
        raise UsageError(f"cannot make pin dir {pin_dir}: {exc.strerror}") from None
    return True


OLD_LAYOUT_NAMES = ("src4", "lpm4", "lens_count")  # maps only pyxdp 0.1 (the entries model) pinned


def _old_layout(pin_dir: str) -> bool:
    return any(os.path.exists(os.path.join(pin_dir, n)) for n in OLD_LAYOUT_NAMES)


def _complete(pin_dir: str) -> bool:
    """Whether ``pin_dir`` holds whole state: its layout record is pinned and
    written (it is written last when state is made, removed first)."""
    path = os.path.join(pin_dir, "meta")
    if not os.path.exists(path):
        return False
    try:
        with Map.from_pin(path) as m:
            raw = m.lookup(L.U32.pack(0))
    except BpfError:
        return False
    return bool(raw) and L.META.unpack(raw)[0] != 0


def _state_ids(pin_dir: str) -> tuple[set[int], set[int]]:
    """(program ids, map ids) of what is pinned in ``pin_dir`` and can be opened."""
    progs: set[int] = set()
    maps: set[int] = set()
    for name in STATE_NAMES:
        path = os.path.join(pin_dir, name)
        if not os.path.lexists(path):
            continue
        try:
            if name in PROGRAM_PINS:
                with Program.from_pin(path) as p:
                    progs.add(p.id)
            else:
                with Map.from_pin(path) as m:
                    maps.add(m.id)
        except (BpfError, OSError):
            pass
    return progs, maps


def running_interfaces(pin_dir: str) -> list[str]:
    """The interfaces (in the host's namespace and the named ones) running an
    XDP program of the state in ``pin_dir``: one pinned there, or one using a
    map pinned there. Asks the kernel, not the state's records."""
    from ..kernel.rtnl import Links

    progs, maps = _state_ids(pin_dir)
    if not progs and not maps:
        return []
    try:
        named = sorted(os.listdir("/var/run/netns"))
    except OSError:
        named = []
    out = []
    for ns in [None, *named]:
        try:
            with Links(ns) as nl:
                links = nl.all()
        except (UsageError, AttachError, OSError):
            continue
        for link in links:
            if not link.prog_id:
                continue
            ours = link.prog_id in progs
            if not ours:
                try:
                    with Program.from_id(link.prog_id) as p:
                        ours = bool(maps & set(p.map_ids()))
                except BpfError:
                    pass
            if ours:
                out.append(f"{link.ifname}{f' (netns {ns})' if ns else ''} runs its program {link.prog_id}")
    return out


def _records_left(pin_dir: str) -> int:
    """How many interfaces the state's ``ifaces`` map records (0 when it cannot be read)."""
    try:
        with Map.from_pin(os.path.join(pin_dir, "ifaces")) as m:
            return sum(1 for _k in m)
    except (BpfError, OSError):
        return 0


def refuse_unreadable(pin_dir: str, why: str) -> None:
    """Raise UnreadableState when the state in ``pin_dir``, which cannot be
    read (``why``), is still in use: an interface runs its program, or its
    records name interfaces. (State a process died making, or removing,
    is in use by nothing: it may be made afresh.)"""
    running = running_interfaces(pin_dir)
    records = _records_left(pin_dir)
    if not running and not records:
        return
    used = (f"{'; '.join(running)}" if running else
            f"no interface runs its programs, but it records {records} interface{'s' if records > 1 else ''}")
    raise UnreadableState(
        f"the state in {pin_dir} cannot be read ({why}) and is in use: {used}. pyxdp leaves it as it is; "
        "'pyxdp-load attach IFACE --force' makes new state in its place and puts its program on IFACE "
        "(the others keep the old program until you do the same for them)", running)


def _no_state(pin_dir: str) -> None:
    """Raise the error for a pin directory without (complete) state."""
    if _old_layout(pin_dir):
        raise IncompatibleMap(
            f"{pin_dir} holds state of pyxdp 0.1 (before one rule list and sets): this version cannot use it. "
            "Write down its entries and rules, detach every interface with pyxdp 0.1 (or, once nothing is "
            f"attached, rm -r {pin_dir}), then attach again (see CHANGELOG.md)")
    if os.path.exists(os.path.join(pin_dir, "cfg")) or os.path.exists(os.path.join(pin_dir, "meta")):
        refuse_unreadable(pin_dir, "its layout record, map meta, is missing or zeroed")
        raise NotLoaded(f"incomplete pyxdp state in {pin_dir} (a process died making or removing it): "
                        "'pyxdp-load attach IFACE' starts afresh")
    raise NotLoaded(f"no pyxdp state in {pin_dir}: run 'pyxdp-load attach IFACE' first "
                    "(or give --create to prepare state before attaching)")


def remove_pins(pin_dir: str, keep_dir: bool = False) -> None:
    """Unpin what pyxdp makes in ``pin_dir`` (the layout record first: a
    directory without it is state being made or removed), then, unless
    ``keep_dir``, the directory when pyxdp made it (its MADE_MARK says so):
    a directory someone else made stays, empty."""
    for name in STATE_NAMES:
        if name == MADE_MARK:
            continue
        try:
            os.unlink(os.path.join(pin_dir, name))
        except FileNotFoundError:
            pass
    if keep_dir:
        return
    try:
        os.rmdir(os.path.join(pin_dir, MADE_MARK))
    except OSError:
        return  # not ours (or not empty): the directory stays
    try:
        os.rmdir(pin_dir)
    except OSError:
        pass


def writer_lock(pin_dir: str) -> DirLock:
    """The writers' lock; a writer that has to wait says so on stderr."""
    import sys

    from .lock import DirLock

    return DirLock(pin_dir, on_wait=lambda msg: print(f"pyxdp: {msg}", file=sys.stderr, flush=True))


class State:
    """The maps of one pin directory, opened on first use, and the lock."""

    def __init__(self, pin_dir: str, lock: DirLock | None) -> None:
        self.pin_dir = pin_dir
        self._maps: dict[str, Map] = {}
        self._lock = lock
        self.migrated_from = 0  # the layout this open migrated the state from (0: none)

    @classmethod
    def open(cls, pin_dir: str, *, create: bool = False, lock: bool = True, capacity: int | None = None,
             rules: int | None = None, with_program: bool = False, flows: int | None = None,
             migrate: Migration | None = None, refusal: Refusal | None = None,
             force: bool = False, recover: Callable[[State], None] | None = None) -> tuple[State, bool]:
        """Open (with ``create``: make) the state; returns it and whether it
        was made now. ``migrate``: state of an older layout is migrated to
        this one by it (the caller decides: :class:`pyxdp.Filter` passes
        :func:`pyxdp.store.migrate.migrate`) instead of refused; ``refusal``
        words the refusal (see :meth:`check_meta`). State that cannot be read
        while interfaces still run its programs is refused (UnreadableState);
        with ``create`` and ``force``, made anew instead. ``recover``: what
        undoes or finishes a resize a killed process left (its journal
        pinned; :func:`pyxdp.store.resize.recover`), before anything else
        reads the state."""
        require_privileges()
        if not pin_dir:
            raise UsageError("the pin directory is empty: give a path (default /sys/fs/bpf/pyxdp)")
        pin_dir = os.path.abspath(pin_dir)
        if not _complete(pin_dir) and (not create or _old_layout(pin_dir)):
            _no_state(pin_dir)
        if create:
            made_dir = _prepare_dir(pin_dir)
        else:
            from .pindir import check_pin_dir

            made_dir = False
            check_pin_dir(pin_dir, STATE_NAMES)
        lk = writer_lock(pin_dir) if lock or create else None
        st = cls(pin_dir, lk)
        created = False
        try:
            if not _complete(pin_dir):
                if not create:
                    _no_state(pin_dir)  # removed while we waited for the lock
                if not force:
                    refuse_unreadable(pin_dir, "its layout record, map meta, is missing or zeroed")
                remove_pins(pin_dir, keep_dir=True)  # what a process that died making or removing state left
                st._create(capacity or DEFAULT_CAPACITY, rules, with_program, flows)
                created = True
            elif migrate is not None and lk is not None:
                st.migrated_from = migrate(st, flows)
            journal = os.path.join(pin_dir, RESIZE_JOURNAL)
            if recover is not None and lk is not None and (os.path.lexists(journal) or
                                                           os.path.lexists(journal + "_new")):
                recover(st)  # a resize a killed process left: undone or finished
            st.check_meta(refusal)
            missing = [n for n in PINNED_MAPS if not os.path.exists(os.path.join(pin_dir, n))]
            if missing:
                refuse_unreadable(pin_dir, f"no map {', '.join(missing)}")
                raise NotLoaded(f"incomplete pyxdp state in {pin_dir}: no {', '.join(missing)}")
            if create:
                for what, flag, want, have in (("set capacity", "capacity", capacity, st.capacity),
                                               ("rule capacity", "rules", rules, st.rule_capacity),
                                               ("flow capacity", "flows", flows, st.flow_capacity)):
                    if want is not None and have != want:
                        raise IncompatibleMap(f"state in {pin_dir} has {what} {have}, not {want}: 'pyxdp-load "
                                              f"resize --{flag} {want}' changes it in place while the filter runs")
            if not lock and lk is not None:
                lk.release()
                st._lock = None
            return st, created
        except BaseException:
            if created or made_dir:
                st.remove()
            st.close()
            raise

    def _create(self, capacity: int, rules: int | None, with_program: bool, flows: int | None = None) -> None:
        """Make and pin every map (the meta record last: it marks the state
        complete), and the program with ``with_program``."""
        # the program of the shape the first config (below) needs
        shape = shape_for(Config().established, Config().trace_every, 0, 0)
        with open_object(self.pin_dir, capacity, rules, flows=flows, shape=shape) as obj:
            if not with_program:
                obj.only_program("sweep_start")
            obj.load()
            start_sweeper(obj)
            if with_program:
                with obj.program("egress") as eprog:
                    pin_program(eprog, self.pin_dir, EGRESS_PIN)
                with obj.program(filter_program(shape)) as prog:
                    pin_program(prog, self.pin_dir)
            words = obj.map("rvec")
            rule_words = (words.spec.value_size - 8) // 8
            words.close()
        self.map("cfg").update(L.U32.pack(0), Config().encode())
        arm_guard(self.map(GUARD_MAP))  # no flow yet: the guard covers them all
        self.map("meta").update(L.U32.pack(0), L.META.pack(L.PYXDP_LAYOUT, rule_words, object_build_id()))

    def check_meta(self, refusal: Refusal | None = None) -> None:
        """State of this layout, complete, made by this build; ``refusal``
        says what to do about state of another layout."""
        raw = self.map("meta").lookup(L.U32.pack(0))
        layout = L.META.unpack(raw)[0] if raw else 0
        if layout == 0:
            refuse_unreadable(self.pin_dir, "its layout record, map meta, is zeroed")
            raise NotLoaded(f"incomplete pyxdp state in {self.pin_dir} (made by a process that died): "
                            f"rm -r {self.pin_dir} and attach again")
        if layout != L.PYXDP_LAYOUT:
            raise IncompatibleMap(refusal(self, layout) if refusal is not None else
                                  f"state in {self.pin_dir} has layout version {layout}; this pyxdp uses "
                                  f"{L.PYXDP_LAYOUT}")
        words = L.META.unpack(raw)[1] if raw else 0
        if words * 64 != self.rule_capacity:  # the rule vectors' shape says otherwise: another build made it
            raise IncompatibleMap(f"state in {self.pin_dir} was made by another build of pyxdp (map rvec holds "
                                  f"{self.map('rvec').spec.value_size}-byte vectors for {words * 64} rules): "
                                  "detach everywhere and attach again")

    def forget_maps(self) -> None:
        """Close the maps opened so far (they are opened again on next use):
        after their pins were replaced."""
        for m in self._maps.values():
            m.close()
        self._maps = {}

    def close(self) -> None:
        self.forget_maps()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    @property
    def locked(self) -> bool:
        return self._lock is not None

    def require_lock(self) -> None:
        if self._lock is None:
            raise UsageError("this Filter was opened read-only (lock=False)")

    def map(self, name: str) -> Map:
        """The pinned map ``name``, opened on first use."""
        m = self._maps.get(name)
        if m is None:
            if name not in PINNED_MAPS:
                raise KeyError(name)
            m = self._maps[name] = Map.from_pin(os.path.join(self.pin_dir, name))
        return m

    @property
    def capacity(self) -> int:
        return self.map("elem4").spec.max_entries

    @property
    def flow_capacity(self) -> int:
        return self.map(FLOW_MAPS[0]).spec.max_entries

    @property
    def rule_capacity(self) -> int:
        return (self.map("rvec").spec.value_size - 8) * 8

    def remove(self) -> None:
        """Unpin everything, and remove the pin directory when pyxdp made it
        (see :func:`remove_pins`)."""
        for m in self._maps.values():
            m.close()
        self._maps = {}
        remove_pins(self.pin_dir)

    # ---- config ------------------------------------------------------------------

    def selector(self) -> tuple[int, int]:
        """(live config slot, CLOCK_MONOTONIC ns of the last switch)."""
        raw = self.map("cfg_sel").lookup(L.U32.pack(0))
        if not raw:
            return 0, 0
        live, _pad, switched = L.SELECTOR.unpack(raw)
        return live & 1, switched

    def config(self) -> Config:
        raw = self.map("cfg").lookup(L.U32.pack(self.selector()[0]))
        return Config.decode(raw) if raw else Config()

    def wait_recent_switch(self) -> None:
        """A grace period when the last config switch was less than 5 s ago:
        what was live then may still be read."""
        if monotonic_ns() - self.selector()[1] < RECENT_SWITCH_NS:
            grace_period(self)

    def write_config(self, cfg: Config) -> None:
        """Write the idle slot, then switch: a packet sees all of the old
        config or all of the new one. The programs of the state are replaced
        around the switch when ``cfg`` needs another shape (see
        :mod:`pyxdp.store.shapes`): each covers the config a packet can read."""
        from .shapes import switch

        switch(self, cfg, lambda: self._switch_config(cfg))

    def _switch_config(self, cfg: Config) -> None:
        live, switched = self.selector()
        if monotonic_ns() - switched < RECENT_SWITCH_NS:
            grace_period(self)  # the idle slot was live moments ago: a packet may still be reading it
        nxt = live ^ 1
        self.map("cfg").update(L.U32.pack(nxt), cfg.encode())
        self.map("cfg_sel").update(L.U32.pack(0), L.SELECTOR.pack(nxt, 0, monotonic_ns()))

    # ---- journal -----------------------------------------------------------------

    def journal(self) -> tuple[L.JournalOp, int, int]:
        """(op, txn, set id) of the change a writer has under way."""
        raw = self.map("journal").lookup(L.U32.pack(0))
        op, txn, sid, _pad = L.JOURNAL.unpack(raw) if raw else (0, 0, 0, 0)
        return L.JournalOp(op), txn, sid

    def journal_begin(self, op: L.JournalOp, sid: int = 0) -> int:
        """Record the change about to start; returns its txn (a config written
        with it commits an apply)."""
        txn = (self.config().txn + 1) & 0xFFFFFFFF or 1
        self.map("journal").update(L.U32.pack(0), L.JOURNAL.pack(op, txn, sid, 0))
        return txn

    def journal_end(self) -> None:
        self.map("journal").update(L.U32.pack(0), L.JOURNAL.pack(0, 0, 0, 0))
