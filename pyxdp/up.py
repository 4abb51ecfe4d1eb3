"""The declarative config: make the running firewall, and the interfaces it
runs on, what one file says (``pyxdp-load up``), and read both back
(``pyxdp-load save --all``). The file is the rule-set file of
:mod:`pyxdp.model.rulefile` plus ``[[interface]]`` tables; by default
``/etc/pyxdp/pyxdp.toml`` (``$PYXDP_CONFIG`` names another).

``up`` is all or nothing and safe in its order: it checks every interface it
will attach first (it exists, and runs no other XDP program), then applies
the rules and sets in one switch (only when they differ), then attaches the
new interfaces (so none ever runs the old or empty rules), then detaches
the interfaces the file no longer names (last: the filter stays on until
everything else is done). A step that fails undoes the earlier ones; so
does the next command after a kill (the journal of :mod:`pyxdp.store.upjournal`)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, NamedTuple

from .errors import AttachError, PyxdpError, UsageError
from .model.rulefile import Element, InterfaceSpec, RuleSetSpec, format_ruleset, parse_ruleset
from .text import plural

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, Protocol

    from .store.attach import Attachment
    from .store.state import State

    class Filter(Protocol):
        """What :func:`up` uses of a :class:`pyxdp.Filter` (which calls it:
        this module does not import pyxdp.filter)."""

        @property
        def state(self) -> State: ...
        @property
        def pin_dir(self) -> str: ...
        created: bool
        def interfaces(self) -> list[Attachment]: ...
        def ruleset(self, interfaces: bool = False, progress: Callable[[int, int], None] | None = None,
                    ) -> RuleSetSpec: ...
        def apply(self, spec: RuleSetSpec, progress: Callable[[int, int], None] | None = None) -> None: ...
        def attach(self, ifname: str, mode: Any = None, netns: str | None = None, force: bool = False,
                   reload: bool = False) -> Attachment: ...
        def detach(self, ifname: str, netns: str | None = None, keep: bool = False) -> bool: ...

__all__ = ["CONFIG_DIR", "DEFAULT_CONFIG", "ConfigChange", "config_path", "missing_interfaces", "plan_lines",
           "recorded_interfaces", "recover_up", "undo_up", "up", "wait_for_interfaces"]

DEFAULT_CONFIG = "/etc/pyxdp/pyxdp.toml"
CONFIG_DIR = os.path.dirname(DEFAULT_CONFIG)  # 'save' makes it when missing (a fresh machine has none)


def config_path(path: str | None = None) -> str:
    """``path``, else ``$PYXDP_CONFIG``, else :data:`DEFAULT_CONFIG`."""
    return path or os.environ.get("PYXDP_CONFIG") or DEFAULT_CONFIG


class ConfigChange(NamedTuple):
    """One thing ``up`` changed; ``str()`` is the line the CLI prints."""

    action: str  # "apply", "attach", "reattach" (another mode), "detach" or "missing" (an optional one: skipped)
    interface: InterfaceSpec | None  # None for "apply"
    text: str

    def __str__(self) -> str:
        return self.text


def recorded_interfaces(st: State) -> tuple[InterfaceSpec, ...]:
    """The interfaces the state records, with the mode each runs in (what
    ``save --all`` writes), one per name and namespace, sorted. A record
    whose interface or namespace is gone is left out (an 'up' of the file
    would fail on it); one whose interface was made anew is kept ('up'
    attaches it again)."""
    from .kernel.xdp import Netlink
    from .store.attach import recorded

    out: dict[tuple[str, str], InterfaceSpec] = {}
    for (_netns, _idx), a in sorted(recorded(st).items(), key=lambda kv: (kv[0][0] or "", kv[0][1])):
        try:
            with Netlink(a.netns) as nl:
                nl.ifindex(a.ifname)
        except UsageError:  # no such interface, or namespace
            continue
        out.setdefault((a.netns or "", a.ifname), InterfaceSpec(a.ifname, a.netns, a.mode))
    return tuple(out[k] for k in sorted(out))


def _exists(i: InterfaceSpec) -> bool:
    from .kernel.xdp import Netlink

    try:
        with Netlink(i.netns) as nl:
            nl.ifindex(i.name)
    except UsageError:  # no such interface, or namespace
        return False
    return True


def missing_interfaces(interfaces: tuple[InterfaceSpec, ...] | list[InterfaceSpec]) -> list[InterfaceSpec]:
    """Those of ``interfaces`` that do not exist (or whose namespace does not)."""
    return [i for i in interfaces if not _exists(i)]


def wait_for_interfaces(interfaces: tuple[InterfaceSpec, ...] | list[InterfaceSpec], step: float = 0.1,
                        ) -> list[InterfaceSpec]:
    """Wait until each of ``interfaces`` exists or its ``wait`` (seconds from
    now) has passed; returns the ones still missing. Holds no lock: call it
    before opening the state."""
    import time

    start = time.monotonic()
    todo = missing_interfaces(interfaces)
    while todo:
        left = [i for i in todo if time.monotonic() - start < i.wait]
        if not left:
            break
        time.sleep(step)
        todo = [i for i in todo if not _exists(i)]
    return todo


def _differs(spec: RuleSetSpec, running: RuleSetSpec) -> bool:
    """Whether applying ``spec`` would change the running firewall. A field
    the file leaves out (None: the policy) is what runs; set elements are
    compared by prefix and by whether they expire, not by the time left."""
    for field in RuleSetSpec._fields:
        if field in ("sets", "interfaces"):
            continue
        want, have = getattr(spec, field), getattr(running, field)
        if isinstance(want, dict) and isinstance(have, dict):  # a table of the file names some keys
            if any(have.get(k) != v for k, v in want.items()):
                return True
        elif want is not None and want != have:
            return True
    if spec.sets.keys() != running.sets.keys():
        return True
    return any({e.prefix: e.ttl is None for e in elements} != {e.prefix: e.ttl is None for e in running.sets[name]}
               for name, elements in spec.sets.items())


def _keep_running_timeouts(spec: RuleSetSpec, running: RuleSetSpec) -> RuleSetSpec:
    """``spec`` with each timed element that already runs with a timeout
    keeping its time left: ``up`` does not restart a ban's clock."""
    sets: dict[str, list[Element]] = {}
    for name, elements in spec.sets.items():
        left = {e.prefix: e.ttl for e in running.sets.get(name, ())}
        sets[name] = [Element(e.prefix, left[e.prefix]) if e.ttl is not None and left.get(e.prefix) is not None
                      else e for e in elements]
    return spec._replace(sets=sets)


def _where(netns: str | None) -> str:
    return f" (netns {netns})" if netns else ""


def _preflight(st: State, todo: list[InterfaceSpec], have: dict[tuple[str | None, str], list[Attachment]],
               ) -> set[tuple[str | None, str]]:
    """Refuse, before anything changes, an interface that is missing or runs
    another XDP program. Returns the interfaces whose records are stale (the
    interface was made anew: another ifindex)."""
    import errno

    from .kernel.xdp import Netlink
    from .store.shapes import uses_state

    stale = set()
    for i in todo:
        with Netlink(i.netns) as nl:
            ifst = nl.state(i.name)
        if ifst.prog_id and not uses_state(st, ifst.prog_id):
            raise AttachError(errno.EBUSY, f"{i}: runs XDP program {ifst.prog_id}, not this pyxdp filter; take it "
                                           f"off first ('pyxdp-load attach {i.name} --force' replaces it)")
        if any(a.ifindex != ifst.ifindex for a in have.get((i.netns, i.name), ())):
            stale.add((i.netns, i.name))
    return stale


def _detach_all(flt: Filter, ifname: str, netns: str | None) -> None:
    """Detach ``ifname`` and forget every record of that name (a stale one
    too), keeping the state."""
    from .store.attach import recorded

    for _ in range(len(recorded(flt.state))):
        if not any(a.ifname == ifname and a.netns == netns for a in recorded(flt.state).values()):
            return
        flt.detach(ifname, netns=netns, keep=True)


def _refuse_empty(spec: RuleSetSpec, have: dict[tuple[str | None, str], list[Attachment]]) -> None:
    """A spec naming no interface over a state that runs on some would take
    the filter off all of them: an empty or truncated config file most
    likely. Refused (UsageError) unless the caller says it is meant."""
    if spec.interfaces:
        return
    live = sorted({str(InterfaceSpec(a.ifname, a.netns)) for recs in have.values() for a in recs if a.attached})
    if live:
        shown = ", ".join(live[:4]) + (f" and {len(live) - 4} more" if len(live) > 4 else "")
        raise UsageError(f"the config names no interface: 'up' would detach the filter from {shown} and leave "
                         f"{'it' if len(live) == 1 else 'them'} unfiltered; refused (give --allow-empty if "
                         "that is meant)")


def _before(have: list[Attachment]) -> str | None:
    """The mode an interface runs the filter in (None: it does not)."""
    live = [a for a in have if a.attached]
    return live[0].mode if live else None


def up(flt: Filter, spec: RuleSetSpec, allow_empty: bool = False, only: str | None = None,
       dry_run: bool = False, progress: Callable[[int, int], None] | None = None) -> list[ConfigChange]:
    """Make the running firewall and its interfaces what ``spec`` says, all or
    nothing: apply the rules, sets and policy when they differ (an element
    that runs with a timeout keeps its time left), attach the interfaces not
    running the filter (in their mode; ``auto`` takes whatever runs), attach
    again in the file's mode an interface running in another, detach the
    recorded interfaces the spec does not name. A spec that names no
    interface while the filter runs on some is refused (UsageError), before
    anything changes, unless ``allow_empty``. An interface that does not
    exist fails it (PyxdpError, nothing changed) unless the spec calls it
    ``optional``: then it is skipped (a "missing" change says so). ``only``:
    attach just the interfaces of that name (the firewall is applied only to
    state made now; nothing is detached): what hotplug runs. ``dry_run``:
    change nothing, return what would change (``str()`` says "would ...").
    Returns what changed (empty: nothing to do). ``flt`` must hold the lock
    (not for a dry run).

    Before its first change it pins its journal (:mod:`pyxdp.store.upjournal`):
    each interface it will change with the mode it runs now, and the running
    firewall when the rules change. A failing step, or a kill at any point
    (the next command that opens the state does it), puts all of that back
    (:func:`undo_up`); unpinning the journal, last, is the commit."""
    from .model.modes import XdpMode
    from .store import upjournal
    from .store.clock import monotonic_ns

    if not dry_run:
        flt.state.require_lock()
    have: dict[tuple[str | None, str], list[Attachment]] = {}
    for a in flt.interfaces():
        have.setdefault((a.netns, a.ifname), []).append(a)
    if only is not None:
        if not any(i.name == only for i in spec.interfaces):
            raise UsageError(f"the config names no interface {only!r}: 'up --only' attaches one it names")
        spec = spec._replace(interfaces=tuple(i for i in spec.interfaces if i.name == only))
    elif not allow_empty:
        _refuse_empty(spec, have)
    want = {(i.netns, i.name): i for i in spec.interfaces}
    new: list[InterfaceSpec] = []
    remode: list[tuple[InterfaceSpec, Attachment]] = []
    for key, i in want.items():
        live = [a for a in have.get(key, ()) if a.attached]
        if not live:
            new.append(i)
        elif i.mode != "auto" and live[0].mode != i.mode:
            remode.append((i, live[0]))
    absent = missing_interfaces(new)
    required = [i for i in absent if not i.optional]
    if required:
        raise PyxdpError(_missing_text(required) + ": nothing changed")
    skipped = [ConfigChange("missing", i, _skip_text(i, dry_run)) for i in absent]
    new = [i for i in new if i not in absent]
    gone = [] if only is not None else [key for key in have if key not in want]
    stale = _preflight(flt.state, new, have)
    running = flt.ruleset()
    differs = _differs(spec, running) and (only is None or flt.created)
    if dry_run:
        return _dry(spec, running, differs, new, remode, [have[k] for k in gone]) + skipped

    # the journal: every interface this 'up' changes, in the order it does, with the mode it runs in now
    touched = [(i.netns, i.name, _before(have.get((i.netns, i.name), []))) for i in new]
    touched += [(i.netns, i.name, old.mode) for i, old in remode]
    touched += [(netns, name, _before(have[(netns, name)])) for netns, name in gone]
    if not differs and not touched:
        return skipped
    plan: dict[str, object] = {"v": 1, "at": monotonic_ns(), "old": format_ruleset(running) if differs else None,
            "ifaces": [list(t) for t in touched]}
    upjournal.write(flt.pin_dir, plan)

    changes: list[ConfigChange] = []
    try:
        if differs:
            flt.apply(_keep_running_timeouts(spec, running), progress=progress)
            n = sum(len(v) for v in spec.sets.values())
            changes.append(ConfigChange("apply", None, f"applied {plural(len(spec.rules), 'rule')}, "
                                        f"{plural(len(spec.sets), 'set')} ({plural(n, 'element')})"
                                        + (f", policy {spec.policy.label}" if spec.policy is not None else "")))
        for i in new:
            if (i.netns, i.name) in stale:
                _detach_all(flt, i.name, i.netns)  # the record of the interface gone before: nothing runs on it
            a = flt.attach(i.name, mode=XdpMode(i.mode), netns=i.netns)
            changes.append(ConfigChange("attach", i, f"attached to {i}: {a.mode} mode, program id {a.prog_id}"))
        for i, old in remode:  # native and generic cannot run at once: the filter is off for a moment
            _detach_all(flt, i.name, i.netns)
            a = flt.attach(i.name, mode=XdpMode(i.mode), netns=i.netns)
            changes.append(ConfigChange("reattach", i, f"attached to {i} again: {a.mode} mode (was {old.mode}), "
                                        f"program id {a.prog_id}"))
        for key in gone:
            recs = have[key]
            i = InterfaceSpec(recs[0].ifname, recs[0].netns, recs[0].mode)
            _detach_all(flt, i.name, i.netns)
            changes.append(ConfigChange("detach", i, f"detached from {i}"))
    except BaseException as exc:
        try:
            undo_up(flt, plan)
        except Exception as undo_exc:  # noqa: BLE001 - said with the first failure; the journal stays
            raise PyxdpError(f"{exc}; undoing what 'up' had done failed too ({undo_exc}); the next pyxdp-load "
                             "command tries again (see 'pyxdp-load status')") from exc
        upjournal.clear(flt.pin_dir)
        raise
    upjournal.clear(flt.pin_dir)  # the commit
    return changes + skipped


def _missing_text(missing: list[InterfaceSpec]) -> str:
    names = ", ".join(str(i) for i in missing)
    waited = max(i.wait for i in missing)
    return (f"no interface {names}" + (f" (waited {waited:g} s)" if waited else "")
            + " and the config does not call " + ("it" if len(missing) == 1 else "them") + " optional")


def _skip_text(i: InterfaceSpec, dry_run: bool) -> str:
    return (f"warning: {i} is missing (optional" + (f", waited {i.wait:g} s" if i.wait else "") + "): "
            + ("would not be attached" if dry_run else "not attached; 'pyxdp-load up --only "
               f"{i.name}' attaches it when it appears"))


def plan_lines(spec: RuleSetSpec, running: RuleSetSpec) -> list[str]:
    """What applying ``spec`` over ``running`` changes, one line each: rules
    added (+) and taken out (-) with their numbers, elements added and taken
    out per set, the policy and connection state."""
    out = []
    old, new = list(running.rules), list(spec.rules)
    out += [f"- rule {n}: {r}" for n, r in enumerate(old, 1) if r not in new]
    out += [f"+ rule {n}: {r}" for n, r in enumerate(new, 1) if r not in old]
    if [r for r in old if r in new] != [r for r in new if r in old]:
        out.append("rules kept change their order")
    for name in sorted(set(spec.sets) | set(running.sets)):
        if name not in spec.sets:
            out.append(f"- set {name} ({len(running.sets[name])} elements)")
            continue
        have = {e.prefix: e.ttl is None for e in running.sets.get(name, ())}
        want = {e.prefix: e.ttl is None for e in spec.sets[name]}
        add = [p for p in want if p not in have]
        drop = [p for p in have if p not in want]
        retimed = [p for p in want if p in have and want[p] != have[p]]
        if name not in running.sets or add or drop or retimed:
            shown = ", ".join(str(p) for p in add[:3]) + (", ..." if len(add) > 3 else "")
            out.append(("+ set" if name not in running.sets else "  set") + f" {name}: +{len(add)} elements"
                       + (f" ({shown})" if add else "") + f", -{len(drop)}"
                       + (f" ({', '.join(str(p) for p in drop[:3])}{', ...' if len(drop) > 3 else ''})" if drop else "")
                       + (f", {len(retimed)} change permanent/timed" if retimed else ""))
    if spec.policy is not None and spec.policy != running.policy:
        out.append(f"policy {running.policy.label if running.policy else '-'} -> {spec.policy.label}")
    if spec.established is not None and spec.established != running.established:
        out.append(f"connection state {'on' if spec.established else 'off'}")
    if any(running.timeouts.get(k) != v for k, v in spec.timeouts.items()):
        out.append("connection timeouts " + ", ".join(f"{k}={v}" for k, v in spec.timeouts.items()
                                                      if running.timeouts.get(k) != v))
    return out


def _dry(spec: RuleSetSpec, running: RuleSetSpec, differs: bool, new: list[InterfaceSpec],
         remode: list[tuple[InterfaceSpec, Attachment]], gone: list[list[Attachment]]) -> list[ConfigChange]:
    out = []
    if differs:
        out += [ConfigChange("apply", None, f"would apply: {line}") for line in plan_lines(spec, running)]
    out += [ConfigChange("attach", i, f"would attach to {i}: {i.mode} mode") for i in new]
    out += [ConfigChange("reattach", i, f"would attach to {i} again: {i.mode} mode (was {old.mode})")
            for i, old in remode]
    for recs in gone:
        i = InterfaceSpec(recs[0].ifname, recs[0].netns, recs[0].mode)
        out.append(ConfigChange("detach", i, f"would detach from {i}"))
    return out


def _restore_iface(flt: Filter, netns: str | None, name: str, mode: str | None) -> None:
    """Make interface ``name`` run the filter in ``mode`` again (None: not at
    all), whatever part of a change to it was done."""
    import errno

    from .kernel.xdp import Netlink
    from .model.modes import XdpMode
    from .store.attach import recorded
    from .store.shapes import uses_state

    try:
        with Netlink(netns) as nl:
            ifst = nl.state(name)
    except UsageError:  # the interface (or its namespace) is gone, and its program with it: forget it
        _detach_all(flt, name, netns)
        return
    ours = bool(ifst.prog_id) and uses_state(flt.state, ifst.prog_id)
    if ifst.prog_id and not ours:
        raise AttachError(errno.EBUSY, f"{name}{_where(netns)} runs XDP program {ifst.prog_id}, not this pyxdp "
                                       "filter: cannot put back what ran there")
    if ours and (mode is None or ifst.mode is None or ifst.mode.value != mode):
        if any(a.ifname == name and a.netns == netns for a in recorded(flt.state).values()):
            _detach_all(flt, name, netns)
        else:
            flt.detach(name, netns=netns, keep=True)  # attached by a writer killed before recording it
    elif mode is None:
        _detach_all(flt, name, netns)  # records of it, if any
    if mode is None:
        return
    flt.attach(name, mode=XdpMode(mode), netns=netns)  # running already: records it (and the pinned program)


def _aged(spec: RuleSetSpec, seconds: int) -> RuleSetSpec:
    """``spec`` ``seconds`` later: timed elements have that much less time
    left (those run out are left out)."""
    if seconds <= 0:
        return spec
    return spec._replace(sets={name: [e if e.ttl is None else Element(e.prefix, e.ttl - seconds)
                                      for e in elements if e.ttl is None or e.ttl > seconds]
                               for name, elements in spec.sets.items()})


def undo_up(flt: Filter, plan: dict[str, object]) -> None:
    """Put back what the ``up`` of journal ``plan`` changed, in the reverse
    order: each interface it touched runs the filter as it did before (in
    the same mode, or not at all), then the firewall it replaced (when the
    running one differs). Each step looks at what runs now, so it can be
    done again after a kill part-way through."""
    from .store.clock import monotonic_ns

    ifaces = plan.get("ifaces")
    old = plan.get("old")
    at = plan.get("at")
    if not isinstance(ifaces, list) or not (old is None or isinstance(old, str)) or not isinstance(at, int):
        raise PyxdpError(f"the journal of an 'up' in {flt.pin_dir} is not one this pyxdp wrote")
    for netns, name, mode in reversed(ifaces):
        _restore_iface(flt, netns, name, mode)
    if old is not None:
        before = _aged(parse_ruleset(old, "the journal of the 'up'"), (monotonic_ns() - at) // 1_000_000_000)
        if _differs(before, flt.ruleset()):
            flt.apply(before)


def recover_up(flt: Filter) -> bool:
    """Undo the ``up`` a killed writer left (its journal is pinned); True if
    there was one. ``flt`` holds the lock."""
    from .store import upjournal

    plan = upjournal.read(flt.pin_dir)
    if plan is None:
        return False
    undo_up(flt, plan)
    upjournal.clear(flt.pin_dir)
    return True
