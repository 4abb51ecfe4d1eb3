"""``Filter``: the firewall in one pin directory, as one Python object. A
thin facade: the work is in :mod:`pyxdp.store.state` (pin dir, lock, config,
journal), :mod:`pyxdp.store.ruleset` (rules, apply), :mod:`pyxdp.store.sets` (sets,
bans), :mod:`pyxdp.observe` (stats, trace), :mod:`pyxdp.replay` and
:mod:`pyxdp.store.attach`.

State lives in a pin directory on bpffs (default ``/sys/fs/bpf/pyxdp``).
Every change takes an exclusive ``flock`` on that directory, so concurrent
callers never interleave; readers take no lock."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NamedTuple

from . import audit
from .errors import LockTimeout, UsageError
from .layout import PYXDP_LAYOUT, Verdict
from .model.prefix import Prefix, parse_prefix
from .model.rules import Plan, Rule, parse_rule, parse_set_name
from .store import sets as S
from .store.lock import DirLock, signals_deferred
from .store.state import DEFAULT_PIN_DIR, Config, State, writer_lock

if TYPE_CHECKING:
    from .kernel.bpf import Program
    from .model.rulefile import RuleSetSpec
    from .observe import Event, Stats, Tracer
    from .replay import ReplayResult, Tester
    from .store.attach import Attachment
    from .store.flows import Flow
    from .store.ruleset import RuleCount, RuleState
    from .store.sets import ChangeResult, ElementState, KeySet, SetState
    from .store.shapes import ShapeState
    from .up import ConfigChange

Progress = Callable[[int, int], None]  # (done, total): a bulk call's progress, after each batch

__all__ = ["DEFAULT_PIN_DIR", "BanResult", "Config", "Filter"]

BANNED = "banned"  # the set `ban` fills by default


class BanResult(NamedTuple):
    added: int  # newly banned
    refreshed: int  # banned already: timeout set anew
    rule: int  # number of the 'deny from @SET' rule inserted now, 0: one was there


def _prefixes(items: Iterable[str | Prefix]) -> Iterator[Prefix]:
    for p in items:
        yield p if isinstance(p, Prefix) else parse_prefix(p)


def _rule(r: str | Rule) -> Rule:
    return parse_rule(r) if isinstance(r, str) else r


def _recover_resize(st: State) -> None:
    from .store.resize import recover  # only when a killed resize left its journal

    recover(st)


def _migrate(st: State, flows: int | None) -> int:
    from .store.migrate import migrate  # only 'attach --reload' and 'up' migrate

    return migrate(st, flows)


def _refusal(st: State, layout: int) -> str:
    from .store.migrate import refusal

    return refusal(st, layout)


def _netns_text(netns: str | None) -> str:
    return f" (netns {netns})" if netns else ""


def _ttl_text(ttl: int | None) -> str:
    return f"ttl {ttl}s" if ttl else "permanent"


def _up_pinned(pin_dir: str) -> bool:
    """Whether an 'up' journal is pinned (pyxdp.store.upjournal.pinned without its imports: one stat)."""
    import os

    from .store.objects import UP_JOURNAL_PINS

    return os.path.lexists(os.path.join(pin_dir, UP_JOURNAL_PINS[0]))


def _trace_text(old: int, new: int) -> str | None:
    if old == new:
        return None
    return f"tracing {f'1 in {old}' if old else 'off'} -> {f'1 in {new}' if new else 'off'}"


class _Change:
    """What a change says in the audit trail: ``audited`` (whether anything
    is recorded: work done only for the record can be skipped), ``text``
    (the record, written when the change is done; None: none)."""

    __slots__ = ("audited", "text")

    def __init__(self, audited: bool) -> None:
        self.audited = audited
        self.text: str | None = None


def _ban_into(st: State, name: str, keys: KeySet, ttl: int | None,
              progress: Progress | None = None) -> tuple[ChangeResult, int]:
    """The change a ban makes: the set (made when missing), the rule 'deny
    from @SET' as rule 1 when no rule uses the set yet (its number, else 0),
    then the elements. A failure takes back the rule and the set it made,
    so a failed ban changes nothing."""
    from .store.ruleset import add_rule, delete_rules, referenced_sets

    made = name not in S.live_ids(st)
    sid = S.create(st, name)
    num = 0
    try:
        if name not in referenced_sets(st):
            num = add_rule(st, parse_rule(f"deny from @{name}"), 1).number
        return S.change(st, sid, add=keys, ttl=ttl, progress=progress), num
    except Exception:
        if num:
            delete_rules(st, [num])
        if made:
            S.destroy(st, name)
        raise


class Filter:
    """Handle on the filter state in one pin directory. Open it with
    :meth:`open`, use it as a context manager (or :meth:`close` it: an open
    writer holds the lock)."""

    def __init__(self, st: State, created: bool = False) -> None:
        self._st = st
        self.created = created  # this handle made the state: a failure inside 'with' removes it
        self.recovered: str | None = None  # what opening it put back (an 'up' a killed writer left)

    @classmethod
    def open(cls, pin_dir: str = DEFAULT_PIN_DIR, *, create: bool = False, lock: bool = True,
             capacity: int | None = None, rules: int | None = None, with_program: bool = False,
             flows: int | None = None, migrate: bool = False, force: bool = False) -> Filter:
        """Open the state in ``pin_dir``. ``create`` makes it when missing
        (mounting bpffs if needed); ``lock`` holds the directory's lock until
        :meth:`close` (take it for any change; a writer waiting for it says
        so, and gives up after 30 s or $PYXDP_LOCK_TIMEOUT). ``capacity``:
        set elements per family, ``rules``: the rule capacity (a multiple of
        64 up to 8,192), ``flows``: tracked connections per family (default 65,536), all
        for state made now. ``with_program``: load and
        pin the program too when the state is made now. ``migrate``: state
        an older pyxdp made (an older layout) is migrated in place, with every
        rule, set and element, while the filter keeps running (see
        :mod:`pyxdp.store.migrate`; :attr:`migrated` says from which layout);
        without it such state is refused. A writer first finishes or undoes
        any change a killed writer left. The lock is not re-entrant: while
        this process holds it through another open Filter, a second writer's
        open is refused at once (:class:`~pyxdp.errors.LockTimeout` saying
        this process holds it), or, when other threads run, waits for the
        first to close, as for another process. State pyxdp cannot read while
        interfaces still run its programs is refused (UnreadableState, naming
        them); ``create`` with ``force`` makes new state in its place."""
        st, created = State.open(pin_dir, create=create, lock=lock, capacity=capacity, rules=rules,
                                 with_program=with_program, flows=flows, migrate=_migrate if migrate else None,
                                 recover=_recover_resize,
                                 refusal=_refusal, force=force)
        flt = cls(st, created)
        if created and audit.active():
            audit.record(st.pin_dir, f"state created ({st.capacity} set elements per family, {st.rule_capacity} rules)")
        if st.migrated_from and audit.active():
            audit.record(st.pin_dir, f"state migrated from layout {st.migrated_from} to {PYXDP_LAYOUT}")
        try:
            if st.locked:
                flt._recover()
            else:
                flt._recover_unlocked()
        except BaseException:
            st.close()
            raise
        return flt

    @contextmanager
    def _change(self, lock: bool = True, defer: bool = True) -> Iterator[_Change]:
        """One change, the same way each time: the writers' lock required
        (``lock``), SIGINT and SIGTERM held until it is done (``defer``: a
        change that spans several maps), then its audit record, when the
        body set one and auditing is on. A change that fails records nothing."""
        if lock:
            self._st.require_lock()
        ch = _Change(audit.active())
        if defer:
            with signals_deferred():
                yield ch
        else:
            yield ch
        if ch.text is not None and ch.audited:
            audit.record(self.pin_dir, ch.text)

    def _recover(self) -> None:
        """Finish or undo what a killed writer left: a change of maps (the
        journal map), then an ``up`` (its pinned journal, pyxdp.store.upjournal)."""
        st = self._st
        with self._change(lock=False) as ch:  # the lock is held: by open, or by _recover_unlocked
            left = st.journal()[0] if ch.audited else None
            S.recover(st, st.config().txn)
            if left:  # JournalOp.NONE is 0
                ch.text = f"recovery: the {left.name.lower()} change a killed writer left was finished or undone"
        if _up_pinned(st.pin_dir):
            from .up import recover_up

            with self._change(lock=False) as ch:
                if recover_up(self):
                    self.recovered = ("an 'up' killed part-way was undone: rules, sets and interfaces are as "
                                      "before it")
                ch.text = "recovery: the 'up' a killed writer left was undone"

    def _recover_unlocked(self) -> None:
        """A reader: an ``up`` a killed writer left is undone now too, when no
        writer holds the lock (one that does is alive, and finishes it)."""
        if not _up_pinned(self.pin_dir):
            return
        try:
            lk = DirLock(self.pin_dir, timeout=0)
        except LockTimeout:
            return
        self._st._lock = lk
        try:
            self._recover()
        finally:
            self._st._lock = None
            lk.release()

    @property
    def pin_dir(self) -> str:
        return self._st.pin_dir

    @property
    def state(self) -> State:
        """The state layer underneath (maps, config, journal)."""
        return self._st

    @property
    def migrated(self) -> int:
        """The layout :meth:`open` migrated the state from (0: it did not)."""
        return self._st.migrated_from

    def close(self) -> None:
        self._st.close()

    def __enter__(self) -> Filter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None and self.created and self._st.locked:
            self._st.remove()  # nothing half-made stays behind
            if audit.active():
                audit.record(self.pin_dir, "state removed again: the change it was made for failed")
        self.close()

    def __del__(self, _finalizing: Callable[[], bool] = sys.is_finalizing) -> None:
        st = getattr(self, "_st", None)
        if st is not None and st.locked:
            try:
                if not _finalizing():  # at interpreter exit: no warning (it could not be formatted), only close
                    warnings.warn(f"unclosed pyxdp Filter on {st.pin_dir} (it held the writers' lock)",
                                  ResourceWarning, stacklevel=2)
            finally:
                st.close()

    @property
    def capacity(self) -> int:
        """Set elements each family's hash holds."""
        return self._st.capacity

    @property
    def rule_capacity(self) -> int:
        return self._st.rule_capacity

    def resize(self, rules: int | None = None, capacity: int | None = None, flows: int | None = None) -> bool:
        """Change the rule capacity, the set elements per family and the
        tracked flows per family (None: as they are) in place while the filter
        runs: every rule, set, element, flow and counter stays, every attached
        interface runs the new program from one atomic switch on; all or
        nothing, under SIGKILL too (see :mod:`pyxdp.store.resize`). UsageError
        for a number that is not a multiple of 64, too large, or smaller than
        what is there. False when nothing changes."""
        from .store.resize import resize

        before = (self._st.rule_capacity, self._st.capacity, self._st.flow_capacity)
        with self._change() as ch:
            done = resize(self._st, rules, capacity, flows)
            if done:
                ch.text = (f"resized: rules {before[0]} -> {self._st.rule_capacity}, set elements {before[1]} -> "
                           f"{self._st.capacity}, flows {before[2]} -> {self._st.flow_capacity}")
        return done

    def config(self) -> Config:
        return self._st.config()

    # ---- policy ---------------------------------------------------------------

    @property
    def policy(self) -> Verdict:
        return self._st.config().policy

    def set_policy(self, policy: Verdict) -> None:
        with self._change(defer=False) as ch:
            old = self._st.config()
            self._st.write_config(old._replace(policy=policy))
            ch.text = f"policy {old.policy.label} -> {policy.label}"

    def set_trace(self, every: int) -> None:
        """Trace one packet in ``every`` (0 turns tracing off)."""
        if every < 0:
            raise UsageError("trace sampling must be 0 (off) or a positive number")
        with self._change(defer=False) as ch:
            old = self._st.config()
            self._st.write_config(old._replace(trace_every=every))
            ch.text = _trace_text(old.trace_every, every)

    # ---- connection state -------------------------------------------------------

    @property
    def established(self) -> bool:
        """Whether replies to connections the host opened pass before the rules."""
        return self.config().established

    def set_established(self, on: bool) -> None:
        """Turn connection state on or off (``pyxdp-load state on|off``). Off:
        replies go through the rules like any packet, and nothing is recorded."""
        with self._change(defer=False) as ch:
            old = self._st.config()
            self._st.write_config(old._replace(established=bool(on)))
            ch.text = f"connection state {'on' if old.established else 'off'} -> {'on' if on else 'off'}"

    def timeouts(self) -> dict[str, int]:
        """Seconds a tracked connection lives after its last packet, per
        name (see :data:`pyxdp.model.timeouts.TIMEOUTS`)."""
        from .model.timeouts import timeouts_by_name

        return timeouts_by_name(self.config().timeouts)

    def set_timeouts(self, timeouts: Mapping[str, int]) -> None:
        """Change the named timeouts (seconds); the others stay."""
        from .model.timeouts import with_timeouts

        with self._change(defer=False) as ch:
            cfg = self._st.config()
            self._st.write_config(cfg._replace(timeouts=with_timeouts(cfg.timeouts, timeouts)))
            ch.text = "connection timeouts: " + ", ".join(f"{k} {v}s" for k, v in timeouts.items())

    def flows(self) -> list[Flow]:
        """The connections the host opened that are tracked now."""
        from .store.flows import read_flows

        return read_flows(self._st)

    def flows_opened(self) -> dict[int, int]:
        """Connections the host opened since the state was made, per family
        (4, 6), as the egress program counted them when it started tracking."""
        from .store.flows import flows_made

        return flows_made(self._st)

    # ---- rules ------------------------------------------------------------------

    def rules(self) -> list[RuleState]:
        """The live rules in order, with their hit counters."""
        from .store.ruleset import rule_states

        return rule_states(self._st)

    def rule_counts(self, top: int | None = None) -> list[RuleCount]:
        """The live rules' counters with their stored canonical texts, not
        parsed: :meth:`rules` for thousands of rules in a few milliseconds;
        with ``top``, only the ``top`` rules with the most packets (in list
        order; ties: the first in the list)."""
        from .store.ruleset import rule_counts

        return rule_counts(self._st, top)

    def add_rule(self, rule: str | Rule, position: int | None = None) -> int:
        """Append ``rule`` (or insert it before 1-based ``position``); returns
        its number. The rule list switches atomically. As in ufw, a rule
        whose match is there with another action or comment replaces that
        one in place (:meth:`put_rule` says which happened), and one that is
        there already raises :class:`pyxdp.RuleExists`."""
        return self.put_rule(rule, position).number

    def put_rule(self, rule: str | Rule, position: int | None = None) -> Plan:
        """:meth:`add_rule`, returning what it did: ``outcome`` ``added``,
        ``inserted`` or ``updated``, and the rule's ``number``."""
        from .store.ruleset import add_rule

        r = _rule(rule)
        with self._change() as ch:
            plan = add_rule(self._st, r, position)
            if ch.audited:
                n = self._st.config().nrules
                ch.text = (f"rule {plan.number} updated: {r}" if plan.outcome == "updated" else
                           f"rule {plan.number} added: {r} (rules {n - 1} -> {n})")
        return plan

    def allow(self, words: str, position: int | None = None) -> int:
        """``flt.allow("22/tcp")``, ``flt.allow("from 192.0.2.0/24 to any port 22")``."""
        return self.add_rule("allow " + words, position)

    def deny(self, words: str, position: int | None = None) -> int:
        return self.add_rule("deny " + words, position)

    def delete_rules(self, which: Iterable[int | str | Rule]) -> int:
        """Delete rules by number or text, all or nothing."""
        from .store.ruleset import delete_rules

        items = [w if isinstance(w, int) else _rule(w) for w in which]
        with self._change() as ch:
            before = self._rule_list() if ch.audited else []
            n = delete_rules(self._st, items)
            if ch.audited:
                after = set(self._rule_list())
                gone = ", ".join(f"{i} '{r}'" for i, r in enumerate(before, 1) if r not in after)
                ch.text = f"rules deleted: {gone} (rules {len(before)} -> {len(after)})"
        return n

    def _rule_list(self) -> list[Rule]:
        from .store.ruleset import live_rules

        return [r for _id, r in live_rules(self._st)]

    def replace_rules(self, rules: Iterable[str | Rule]) -> None:
        """Make ``rules`` the whole rule list in one switch (sets unchanged)."""
        from .store.ruleset import install

        items = [_rule(r) for r in rules]
        with self._change() as ch:
            old = self._st.config().nrules
            install(self._st, items)
            ch.text = f"rules replaced: {old} -> {len(items)} rules"

    # ---- the whole firewall -------------------------------------------------------

    def apply(self, spec: RuleSetSpec, progress: Progress | None = None) -> None:
        """Replace rules, sets (with their elements and timeouts) and (when the
        spec names it) the policy in one switch. ``progress(done, total)`` is
        called as set elements are written (see :meth:`ban`)."""
        from .store.ruleset import apply

        with self._change() as ch:
            before = self._summary() if ch.audited else {}
            apply(self._st, spec, progress=progress)
            if ch.audited:
                after = self._summary()
                ch.text = "applied: " + ", ".join(f"{k} {before[k]} -> {after[k]}" for k in before)

    def _summary(self) -> dict[str, object]:
        """What an audit record of a whole-firewall change compares."""
        cfg = self._st.config()
        sets = self.sets()
        return {"policy": cfg.policy.label, "rules": cfg.nrules, "sets": len(sets),
                "elements": sum(s.n4 + s.n6 for s in sets)}

    def ruleset(self, interfaces: bool = False, progress: Progress | None = None) -> RuleSetSpec:
        """The running firewall: rules, sets with elements and remaining
        timeouts, policy (``save`` writes this); with ``interfaces``, also
        the recorded interfaces that still exist and the mode each runs in
        (``save --all``). ``progress(done, total)`` as set elements are read."""
        from .store.ruleset import snapshot

        spec = snapshot(self._st, progress=progress)
        if interfaces:
            from .up import recorded_interfaces

            spec = spec._replace(interfaces=recorded_interfaces(self._st))
        return spec

    def up(self, spec: RuleSetSpec, allow_empty: bool = False, only: str | None = None,
           dry_run: bool = False, progress: Progress | None = None) -> list[ConfigChange]:
        """Make the running firewall and the interfaces it runs on what
        ``spec`` says (``pyxdp-load up``), all or nothing: rules and sets
        first, then new interfaces, then detaching the ones ``spec`` no
        longer names (see :func:`pyxdp.up.up`). A ``spec`` naming no
        interface while the filter runs on some (an empty config file) is
        refused with UsageError unless ``allow_empty``. A missing interface
        fails it (PyxdpError) unless ``optional`` in ``spec``: it is skipped,
        with a "missing" change. ``only``: attach just the interfaces of that
        name. ``dry_run``: change nothing, return what would change. Returns
        the changes (none: it was so already). SIGINT and SIGTERM wait until
        it is done. ``progress(done, total)`` as set elements are written (see
        :meth:`apply`)."""
        from .up import up

        if dry_run:
            return up(self, spec, allow_empty, only=only, dry_run=True)
        with self._change(lock=False):  # up takes what it changes under the lock, and writes its own records
            return up(self, spec, allow_empty, only=only, progress=progress)

    # ---- sets and bans ----------------------------------------------------------------

    def sets(self, exact: bool = True) -> list[SetState]:
        """The sets and their element counts. While a change works on a set
        (or a killed writer left one half-changed), its count is its visible
        elements, counted by walking them; ``exact=False`` takes the stored
        tally instead, which may already count elements not yet committed
        (no walk: what a metrics scrape wants with a million elements)."""
        return list(S.table(self._st, exact).values())

    def set_members(self, name: str) -> list[ElementState]:
        """The elements of a set now: prefix, seconds left, hits."""
        sid = S.lookup_name(self._st, name)
        return S.members(self._st, [sid])[sid]

    def set_add(self, name: str, prefixes: Iterable[str | Prefix] | KeySet, ttl: int | None = None,
                progress: Progress | None = None) -> ChangeResult:
        """Add prefixes to a set (made when missing), all or nothing; an
        element there already gets the new timeout. ``ttl``: seconds (None
        or 0: permanent). ``progress(done, total)``: see :meth:`ban`."""
        keys = prefixes if isinstance(prefixes, S.KeySet) else S.KeySet.of(_prefixes(prefixes))  # parsed first
        with self._change() as ch:
            sid = S.live_ids(self._st).get(parse_set_name(name), 0)
            made = not sid
            if made:  # made with its elements in one change: killed, it leaves no set or the whole one
                try:
                    sid, res = S.create_filled(self._st, name, keys, ttl, progress=progress)
                except Exception:  # a failed add changes nothing: what it wrote under the new id goes again
                    S.recover(self._st, self._st.config().txn)
                    raise
            else:
                res = S.change(self._st, sid, add=keys, ttl=ttl, progress=progress)
            if ch.audited:
                ch.text = (f"set @{parse_set_name(name)}{' made' if made else ''}: add "
                           f"{audit.prefixes_text(keys, len(keys))} {_ttl_text(ttl)} ({res.added} new, "
                           f"{res.refreshed} refreshed)")
        return res

    def set_remove(self, name: str, prefixes: Iterable[str | Prefix], missing_ok: bool = False) -> ChangeResult:
        """Remove prefixes from a set, all or nothing: each must be in it
        (unless ``missing_ok``: those not there are listed in the result)."""
        items = list(_prefixes(prefixes))
        with self._change() as ch:
            res = S.change(self._st, S.lookup_name(self._st, name), remove=items, missing_ok=missing_ok)
            if ch.audited:
                ch.text = (f"set @{parse_set_name(name)}: remove {audit.prefixes_text(items, len(items))}"
                           f" ({res.removed} removed)")
        return res

    def set_flush(self, name: str) -> int:
        """Remove every element of a set; returns how many."""
        with self._change() as ch:
            n = S.flush(self._st, S.lookup_name(self._st, name))
            ch.text = f"set @{parse_set_name(name)} flushed: {n} -> 0 elements"
        return n

    def set_destroy(self, name: str) -> None:
        """Remove a set no rule uses."""
        from .store.ruleset import referenced_sets

        with self._change() as ch:
            if parse_set_name(name) in referenced_sets(self._st):
                raise UsageError(f"set @{parse_set_name(name)} is used by a rule; delete the rule first")
            S.destroy(self._st, name)
            ch.text = f"set @{parse_set_name(name)} destroyed"

    def ban(self, prefixes: Iterable[str | Prefix] | KeySet, ttl: int | None = None, set: str = BANNED,
            progress: Progress | None = None) -> BanResult:
        """Add to set ``set`` (default ``banned``); when no rule refers to that
        set yet, first insert ``deny from @SET`` as rule 1. ``progress``: a
        callable given ``(done, total)`` elements after each batch written
        (65,536 elements; the prefixes are parsed before, the commit after)."""
        name = parse_set_name(set)
        keys = prefixes if isinstance(prefixes, S.KeySet) else S.KeySet.of(_prefixes(prefixes))  # parsed first
        with self._change() as ch:
            res, num = _ban_into(self._st, name, keys, ttl, progress)
            if ch.audited:
                ch.text = (f"ban @{name}: {audit.prefixes_text(keys, len(keys))} {_ttl_text(ttl)} "
                           f"({res.added} new, {res.refreshed} refreshed)"
                           + (f"; rule {num} added: deny from @{name}" if num else ""))
        return BanResult(res.added, res.refreshed, num)

    def unban(self, prefixes: Iterable[str | Prefix], set: str = BANNED) -> ChangeResult:
        """Remove from set ``set``; an address not banned is reported, not an error."""
        items = list(_prefixes(prefixes))
        with self._change() as ch:
            sid = S.live_ids(self._st).get(parse_set_name(set))
            if not sid:
                return S.ChangeResult(0, 0, 0, tuple(items))
            res = S.change(self._st, sid, remove=items, missing_ok=True)
            if res.removed and ch.audited:
                ch.text = (f"unban @{parse_set_name(set)}: {audit.prefixes_text(items, len(items))} "
                           f"({res.removed} removed, {len(res.missing)} not banned)")
        return res

    # ---- statistics and tracing -----------------------------------------------------

    def stats(self) -> Stats:
        from .observe import read_stats

        return read_stats(self._st)

    def trace(self, every: int = 1, match: Callable[[Event], bool] | None = None) -> Tracer:
        """Stream events (``with flt.trace() as t: for ev in t: ...``): one
        packet in ``every``, kept when ``match`` (e.g. a
        :class:`pyxdp.observe.TraceFilter`) accepts it, each with its
        interface's name."""
        from .observe import Tracer

        return Tracer(self._st, self._trace_switch, every, match)

    def _trace_switch(self, every: int) -> None:
        if self._st.locked:
            self.set_trace(every)
            return
        lk = writer_lock(self.pin_dir)
        try:
            with self._change(lock=False, defer=False) as ch:  # under the lock taken here
                old = self._st.config()
                self._st.write_config(old._replace(trace_every=every))
                ch.text = _trace_text(old.trace_every, every)
        finally:
            lk.release()

    # ---- program and interfaces ---------------------------------------------------------

    def shape(self) -> ShapeState:
        """The shape of the program that runs (what it leaves out), the shape
        the live configuration needs, and whether every interface runs the
        pinned program (see :mod:`pyxdp.model.shapes`)."""
        from .store.shapes import shape_state

        return shape_state(self._st)

    def program(self, reload: bool = False) -> Program:
        """The filter program pinned in this state, loaded and pinned first
        when missing (or when ``reload``)."""
        from .store.attach import program

        return program(self._st, reload)

    def attach(self, ifname: str, mode: Any = None, netns: str | None = None, force: bool = False,
               reload: bool = False) -> Attachment:
        """Attach the filter to ``ifname`` (in ``netns``). Replaces our own
        program atomically; refuses another program unless ``force``."""
        from .store.attach import attach

        if self.migrated:
            reload = False  # the migration loaded and pinned the programs, and they run everywhere already
        with self._change(lock=False) as ch:  # attach.attach requires the lock
            att = attach(self._st, ifname, mode, netns, force, reload)
            self._refresh_iface_rules()
            ch.text = (f"attach {ifname}{_netns_text(netns)}: program {att.prog_id}, {att.mode} mode"
                       + (", reloaded" if reload else "") + (", forced" if force else ""))
        return att

    def detach(self, ifname: str, netns: str | None = None, keep: bool = False) -> bool:
        """Take the filter off ``ifname``. When no interface is left, the
        state is removed unless ``keep`` (and the pin directory with it when
        pyxdp made it; one made by someone else stays, empty). Returns True
        if the state was removed."""
        from .store.attach import detach, recorded

        with self._change(lock=False) as ch:  # detach requires the lock
            detach(self._st, ifname, netns)
            removed = not keep and not recorded(self._st)
            if removed:
                self._st.remove()
            else:
                self._refresh_iface_rules()
            ch.text = f"detach {ifname}{_netns_text(netns)}" + ("; no interface left: state removed" if removed else "")
        return removed

    def _refresh_iface_rules(self) -> None:
        """Rules that name an interface match by ifindex: recompute them when
        the attached interfaces change."""
        from .store.ruleset import install, live_rules

        live = live_rules(self._st)
        if any(r.iface for _id, r in live):
            install(self._st, [r for _id, r in live], live=live)

    def interfaces(self) -> list[Attachment]:
        """Recorded attachments, each checked against what the kernel runs."""
        from .store.attach import interfaces

        return interfaces(self._st)

    def remove_state(self) -> None:
        """Unpin everything, and remove the pin directory when pyxdp made it."""
        with self._change(defer=False) as ch:
            self._st.remove()
            ch.text = "state removed"

    # ---- replay ---------------------------------------------------------------------------

    def replay(self, packets: Iterable[bytes]) -> Iterator[ReplayResult]:
        """Run each packet through BPF_PROG_TEST_RUN on a private instance of
        the filter that shares this state's rules (see :class:`Tester`)."""
        with self.tester() as t:
            for i, pkt in enumerate(packets, 1):
                yield t.run(pkt, i)

    def tester(self, shape: int = 0) -> Tester:
        from .replay import Tester

        return Tester(self.pin_dir, shape)
