"""The filter's ordered rules and named sets as its pinned maps hold them:
reading them back, changing them, and replacing the whole rule set in one
step. The rule grammar and the compiler are in :mod:`pyxdp.rules`; the
:class:`~pyxdp.filter.Filter` methods (``add_rule``, ``apply``, ``set_add``,
...) call in here.

Every rule-table change writes the idle generation whole, then switches the
config (``rgen``): a packet sees the old rule set or the new one. Sets are
shared by both generations; ``apply`` gives each set it writes a new id, so
the new rules see the new contents and the old rules the old ones."""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Sequence

from . import layout as L
from ._record import TYPE_CHECKING, Record
from .entries import Prefix
from .errors import BpfError, UsageError
from .layout import Verdict
from .rules import RULE_TEXT, Rule, Tables, compile_rules, parse_rule, parse_set_name

if TYPE_CHECKING:
    from typing import Any

    from .filter import Filter

class RuleState(Record):
    """A rule as the datapath runs it now."""

    number: int  # 1-based position
    rule: Rule
    packets: int
    bytes: int
    id: int

    def to_dict(self) -> dict[str, Any]:
        return {"number": self.number, "rule": str(self.rule), "packets": self.packets, "bytes": self.bytes}


class SetState(Record):
    name: str
    id: int
    n4: int
    n6: int

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ipv4": self.n4, "ipv6": self.n6}


class RuleSetSpec(Record):
    """A whole rule set: what ``apply`` installs and ``save`` writes."""

    rules: tuple[Rule, ...] = ()
    sets: dict[str, list[Prefix]] = {}  # noqa: RUF012 - a Record default, never mutated
    policy: Verdict | None = None


# ---- reading ---------------------------------------------------------------------


def live_rules(flt: Filter) -> list[tuple[int, Rule]]:
    """(id, rule) of the live generation, in order."""
    cfg = flt.config()
    cap = flt.rule_capacity
    order, defs = flt.map("rorder"), flt.map("rdefs")
    out = []
    for pos in range(cfg.nrules):
        raw = order.lookup(L.U32.pack(cfg.rgen * cap + pos))
        if raw is None:
            break
        rid, _action = L.RREF.unpack(raw)
        text = (defs.lookup(L.U32.pack(rid)) or b"").rstrip(b"\0").decode()
        out.append((rid, parse_rule(text)))
    return out


def rule_states(flt: Filter) -> list[RuleState]:
    hits = flt.map("rhits")
    out = []
    for pos, (rid, rule) in enumerate(live_rules(flt)):
        raw = hits.lookup(L.U32.pack(rid)) or b""
        pk = by = 0
        for off in range(0, len(raw), L.COUNTER.size):
            p, b = L.COUNTER.unpack_from(raw, off)
            pk += p
            by += b
        out.append(RuleState(pos + 1, rule, pk, by, rid))
    return out


def set_table(flt: Filter) -> dict[str, SetState]:
    out = {}
    for k, v in flt.map("set_names").items():
        name = k.rstrip(b"\0").decode()
        sid, _pad, n4, n6 = L.SET_META.unpack(v)
        out[name] = SetState(name, sid, n4, n6)
    return dict(sorted(out.items()))


def _set_key(family: int, sid: int, p: Prefix) -> bytes:
    return (L.RKEY4 if family == 4 else L.RKEY6).pack(32 + p.plen, sid, p.addr)


def _set_keys_of(flt: Filter, ids: set[int]) -> dict[int, list[bytes]]:
    """family -> keys of the set tries whose tag is one of ``ids``."""
    out: dict[int, list[bytes]] = {4: [], 6: []}
    for fam, name in ((4, "set4"), (6, "set6")):
        for k in flt.map(name):
            if L.U32.unpack_from(k, 4)[0] in ids:
                out[fam].append(k)
    return out


def _members(flt: Filter, ids: set[int]) -> dict[int, list[Prefix]]:
    """Set id -> its prefixes, sorted, for ``ids``: one walk of the set tries."""
    out: dict[int, list[Prefix]] = {sid: [] for sid in ids}
    for fam, keys in _set_keys_of(flt, ids).items():
        kst = L.RKEY4 if fam == 4 else L.RKEY6
        for k in keys:
            plen, tag, addr = kst.unpack(k)
            out[tag].append(Prefix(fam, addr, plen - 32))
    for members in out.values():
        members.sort(key=lambda p: (p.family, p.addr, p.plen))
    return out


def set_members(flt: Filter, name: str) -> list[Prefix]:
    st = set_table(flt).get(parse_set_name(name))
    if st is None:
        raise UsageError(f"no set @{name}")
    return _members(flt, {st.id})[st.id]


def snapshot(flt: Filter) -> RuleSetSpec:
    """The running rule set, its sets and the policy (what ``save`` writes)."""
    table = set_table(flt)
    members = _members(flt, {st.id for st in table.values()})
    return RuleSetSpec(
        tuple(r for _id, r in live_rules(flt)),
        {name: members[st.id] for name, st in table.items()},
        flt.config().policy,
    )


# ---- installing a rule list ----------------------------------------------------------


def install(flt: Filter, rules: Sequence[Rule], policy: Verdict | None = None,
            set_ids: dict[str, int] | None = None, live: list[tuple[int, Rule]] | None = None) -> None:
    """Make ``rules`` the live rule set (and ``policy`` the policy) in one
    switch. Nothing a packet can see changes before the switch. ``live``:
    the (id, rule) list the caller has just read (read here otherwise)."""
    from .filter import RECENT_SWITCH_NS, _rcu_grace_period, monotonic_ns

    flt._require_lock()
    cap = flt.rule_capacity
    cfg = flt.config()
    gen = cfg.rgen ^ 1
    if set_ids is None:
        set_ids = {name: st.id for name, st in set_table(flt).items()}
    ifindexes: dict[str, list[int]] = {}
    if any(r.iface for r in rules):
        for att in flt.interfaces():
            ifindexes.setdefault(att.ifname, []).append(att.ifindex)
    tables = compile_rules(rules, cap, gen, set_ids, ifindexes)  # validates before anything is written

    if monotonic_ns() - flt._selector()[1] < RECENT_SWITCH_NS:
        _rcu_grace_period()  # the idle generation was live moments ago: let its readers finish

    # stable ids: a rule that stays keeps its id (and its hit counter)
    if live is None:
        live = live_rules(flt)
    by_text: dict[str, list[int]] = {}
    for rid, r in live:
        by_text.setdefault(str(r), []).append(rid)
    in_use = {rid for rid, _r in live}
    free = (i for i in range(2 * cap) if i not in in_use)
    ids, fresh = [], []
    for r in rules:
        same = by_text.get(str(r))
        if same:
            rid = same.pop(0)
        else:
            rid = next(free)
            fresh.append((rid, r))
        ids.append(rid)

    defs, hits = flt.map("rdefs"), flt.map("rhits")
    zero = bytes(hits.value_bytes)
    for rid, r in fresh:
        text = str(r).encode()
        if len(text) >= RULE_TEXT:
            raise UsageError(f"rule too long ({len(text)} bytes, at most {RULE_TEXT - 1}): {r}")
        defs.update(L.U32.pack(rid), text.ljust(RULE_TEXT, b"\0"))
        hits.update(L.U32.pack(rid), zero)

    _clear_generation(flt, gen)
    _write_tables(flt, tables, gen, cap, ids, rules)
    new_cfg = cfg._replace(rgen=gen, nrules=len(rules))
    if policy is not None:
        new_cfg = new_cfg._replace(policy=policy)
    flt._write_config(new_cfg)


def _clear_generation(flt: Filter, gen: int) -> None:
    """Drop the idle generation's rule prefixes and interface classes."""
    from .filter import _delete_all

    for name in ("rlit4", "rlit6"):
        m = flt.map(name)
        stale = [k for k in m if L.U32.unpack_from(k, 4)[0] >> 1 == gen]
        if stale:
            _delete_all(m, stale)
    m = flt.map("riface")
    stale = [k for k in m if L.IFKEY.unpack(k)[0] == gen]
    for k in stale:
        m.delete(k)


def _write_tables(flt: Filter, t: Tables, gen: int, cap: int, ids: list[int], rules: Sequence[Rule]) -> None:
    from .filter import _no_batch_support, _write_all

    vec_bytes = cap // 8
    cids = sorted(t.vectors)
    _write_all(flt.map("rvec"), [L.U32.pack(c) for c in cids],
              [t.vectors[c].to_bytes(vec_bytes, "little") for c in cids])
    for (d, fam), table in t.lit.items():
        if not table:
            continue
        kst = L.RKEY4 if fam == 4 else L.RKEY6
        items = sorted(table.items(), key=lambda kv: (kv[0].plen, kv[0].addr))
        _write_all(flt.map("rlit4" if fam == 4 else "rlit6"),
                  [kst.pack(32 + p.plen, gen * 2 + d, p.addr) for p, _c in items],
                  [L.U32.pack(c) for _p, c in items])
    ports = flt.map("rports")
    for d in (0, 1):
        base = gen << 17 | d << 16
        keys = array("I", range(base, base + 65536)).tobytes()
        vals = t.ports[d].tobytes()
        try:
            ports.update_batch(keys, vals)
        except BpfError as exc:
            if not _no_batch_support(exc):
                raise
            for i in range(65536):
                ports.update(keys[4 * i : 4 * i + 4], vals[4 * i : 4 * i + 4])
    riface = flt.map("riface")
    for idx, c in t.ifaces.items():
        riface.update(L.IFKEY.pack(gen, idx), L.U32.pack(c))
    if rules:
        _write_all(flt.map("rorder"), [L.U32.pack(gen * cap + i) for i in range(len(rules))],
                  [L.RREF.pack(ids[i], int(r.action)) for i, r in enumerate(rules)])
    sets = [list(t.set_ids[d]) + [0] * (L.RULE_SETS - len(t.set_ids[d])) for d in (0, 1)]
    flags = sum(1 << (d * 2 + (fam == 6)) for (d, fam), table in t.lit.items() if table)
    flags |= L.RS_IFACE if t.ifaces else 0
    rs = L.RULESET.pack(t.n_words, t.iface_dflt, flags, 0, *t.proto_cls, 0, *t.lit_dflt, *t.setb,
                        len(t.set_ids[0]), len(t.set_ids[1]), *sets[0], *sets[1], *t.noport)
    flt.map("rsets").update(L.U32.pack(gen), rs)


# ---- rule edits ----------------------------------------------------------------------


def add_rule(flt: Filter, rule: Rule, position: int | None = None) -> int:
    """Insert ``rule`` before 1-based ``position`` (append when None).
    Returns its number. An identical rule already present is refused."""
    live = live_rules(flt)
    rules = [r for _id, r in live]
    if rule in rules:
        raise UsageError(f"rule exists (number {rules.index(rule) + 1}): {rule}")
    if position is None:
        position = len(rules) + 1
    if not 1 <= position <= len(rules) + 1:
        raise UsageError(f"insert {position}: positions are 1 to {len(rules) + 1}")
    rules.insert(position - 1, rule)
    install(flt, rules, live=live)
    return position


def delete_rules(flt: Filter, which: Iterable[int | Rule]) -> int:
    """Delete rules by 1-based number or by equal rule, all or nothing."""
    live = live_rules(flt)
    rules = [r for _id, r in live]
    drop: set[int] = set()
    for w in which:
        if isinstance(w, int):
            if not 1 <= w <= len(rules):
                raise UsageError(f"no rule number {w} (there are {len(rules)})")
            drop.add(w - 1)
        else:
            if w not in rules:
                raise UsageError(f"no such rule: {w}")
            drop.add(rules.index(w))
    install(flt, [r for i, r in enumerate(rules) if i not in drop], live=live)
    return len(drop)


# ---- sets ----------------------------------------------------------------------------


def _set_trie_count(flt: Filter, fam: int) -> int:
    return sum(st.n4 if fam == 4 else st.n6 for st in set_table(flt).values())


def _new_set_id(used: Iterable[int]) -> int:
    return max(used, default=0) + 1


def _meta_key(name: str) -> bytes:
    return name.encode().ljust(32, b"\0")


def set_add(flt: Filter, name: str, prefixes: Iterable[Prefix]) -> int:
    """Add prefixes to set ``name`` (made when missing), all or nothing.
    Returns how many were new."""
    from .filter import _insert, _rollback

    flt._require_lock()
    name = parse_set_name(name)
    table = set_table(flt)
    st = table.get(name)
    if st is None:
        if len(table) >= flt.map("set_names").spec.max_entries:
            raise UsageError(f"too many sets ({len(table)})")
        st = SetState(name, _new_set_id(s.id for s in table.values()), 0, 0)
    groups: dict[int, dict[bytes, bytes]] = {4: {}, 6: {}}
    for p in prefixes:
        k = _set_key(p.family, st.id, p)
        groups[p.family][k] = L.U32.pack(32 + p.plen)
    done = []
    added = {4: 0, 6: 0}
    try:
        for fam, items in groups.items():
            if items:
                m = flt.map("set4" if fam == 4 else "set6")
                new, old = _insert(m, items, _set_trie_count(flt, fam))
                done.append((m, new, old))
                added[fam] = len(new)
        flt.map("set_names").update(_meta_key(name), L.SET_META.pack(st.id, 0, st.n4 + added[4], st.n6 + added[6]))
    except BaseException:
        for m, new, old in reversed(done):
            _rollback(m, new, old)
        raise
    return added[4] + added[6]


def set_remove(flt: Filter, name: str, prefixes: Iterable[Prefix]) -> int:
    """Remove prefixes from a set, all or nothing: each must be in it."""
    from .filter import _delete_all, _exact

    flt._require_lock()
    st = set_table(flt).get(parse_set_name(name))
    if st is None:
        raise UsageError(f"no set @{name}")
    plan: dict[int, list[bytes]] = {4: [], 6: []}
    for p in dict.fromkeys(prefixes):
        k = _set_key(p.family, st.id, p)
        if _exact(flt.map("set4" if p.family == 4 else "set6"), k) is None:
            raise UsageError(f"{p} is not in set @{st.name}")
        plan[p.family].append(k)
    for fam, keys in plan.items():
        if keys:
            _delete_all(flt.map("set4" if fam == 4 else "set6"), keys)
    flt.map("set_names").update(_meta_key(st.name), L.SET_META.pack(
        st.id, 0, st.n4 - len(plan[4]), st.n6 - len(plan[6])))
    return len(plan[4]) + len(plan[6])


def _referenced(flt: Filter) -> set[str]:
    return {s for _id, r in live_rules(flt) for s in r.sets()}


def set_destroy(flt: Filter, name: str) -> None:
    flt._require_lock()
    st = set_table(flt).get(parse_set_name(name))
    if st is None:
        raise UsageError(f"no set @{name}")
    if st.name in _referenced(flt):
        raise UsageError(f"set @{st.name} is used by a rule; delete the rule first")
    from .filter import RECENT_SWITCH_NS, _rcu_grace_period, monotonic_ns

    flt.map("set_names").delete(_meta_key(st.name))  # from here on no rule can name it
    if monotonic_ns() - flt._selector()[1] < RECENT_SWITCH_NS:
        _rcu_grace_period()  # a rule set live moments ago may still be looking into it
    _drop_set_entries(flt, {st.id})


def _drop_set_entries(flt: Filter, ids: set[int]) -> None:
    from .filter import _delete_all

    for fam, keys in _set_keys_of(flt, ids).items():
        if keys:
            _delete_all(flt.map("set4" if fam == 4 else "set6"), keys)


# ---- whole rule sets -------------------------------------------------------------------


def apply(flt: Filter, spec: RuleSetSpec) -> None:
    """Replace rules, sets and (when given) the policy in one switch. Each
    set of ``spec`` is written under a new id first; on failure those are
    dropped and nothing a packet sees has changed."""
    from .filter import _rcu_grace_period, _write_all

    flt._require_lock()
    old = set_table(flt)
    named = {parse_set_name(name): prefixes for name, prefixes in spec.sets.items()}
    if len(named) > flt.map("set_names").spec.max_entries:
        raise UsageError(f"too many sets ({len(named)})")
    next_id = _new_set_id(s.id for s in old.values())
    new_ids: dict[str, int] = {}
    counts: dict[str, tuple[int, int]] = {}
    pending = {4: 0, 6: 0}
    try:
        for name, prefixes in named.items():
            sid = new_ids[name] = next_id
            next_id += 1
            groups: dict[int, dict[bytes, bytes]] = {4: {}, 6: {}}
            for p in prefixes:
                groups[p.family][_set_key(p.family, sid, p)] = L.U32.pack(32 + p.plen)
            for fam, items in groups.items():
                m = flt.map("set4" if fam == 4 else "set6")
                pending[fam] += len(items)
                if _set_trie_count(flt, fam) + pending[fam] > m.spec.max_entries:
                    raise UsageError(f"set @{name}: map {m.name} is full ({m.spec.max_entries} prefixes)")
                _write_all(m, list(items), list(items.values()))
            counts[name] = (len(groups[4]), len(groups[6]))
        install(flt, spec.rules, policy=spec.policy, set_ids=new_ids)
    except BaseException:
        _drop_set_entries(flt, set(new_ids.values()))
        raise
    # after the switch: old names go first, so the name table never holds both
    names = flt.map("set_names")
    for name in old:
        if name not in new_ids:
            names.delete(_meta_key(name))
    for name, sid in new_ids.items():
        names.update(_meta_key(name), L.SET_META.pack(sid, 0, *counts[name]))
    _rcu_grace_period()  # packets that read the old generation may still look up the old sets
    _drop_set_entries(flt, {st.id for st in old.values()})
