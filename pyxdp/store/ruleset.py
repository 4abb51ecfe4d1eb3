"""The filter's ordered rules as its pinned maps hold them: reading them
back, changing them, and replacing the whole firewall (rules, sets, policy)
in one step. The grammar is in :mod:`pyxdp.model.rules`, the compiler in
:mod:`pyxdp.model.compiler`, sets in :mod:`pyxdp.store.sets`.

Every rule change writes the idle generation whole, then switches the config
(``rgen``): a packet sees the old rule list or the new one. Sets are shared
by both generations; ``apply`` stages each set of the file under a new id, so
the new rules see the new contents and the old rules the old ones."""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator, Sequence
from itertools import chain
from typing import TYPE_CHECKING, NamedTuple

from .. import layout as L
from ..errors import BpfError, RuleExists, UsageError
from ..layout import RULE_TEXT, Action, JournalOp, Verdict
from ..model.rules import Plan, Rule, find_rule, parse_rule, parse_set_name, plan_add
from ..model.timeouts import default_timeouts, timeouts_by_name, with_timeouts
from . import sets as S
from .clock import grace_period
from .mapio import delete_all, write_all

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..kernel.bpf import Map
    from ..model.rulefile import RuleSetSpec
    from .state import State


class RuleState(NamedTuple):
    """A rule as the datapath runs it now."""

    number: int  # 1-based position
    rule: Rule
    packets: int
    bytes: int
    id: int

    @property
    def comment(self) -> str | None:
        """The rule's ``comment 'TEXT'`` (ufw's), for the exporter's rule info."""
        return self.rule.comment

    @property
    def app(self) -> str | None:
        """The application profile the rule's ports came from (destination first)."""
        return self.rule.dapp or self.rule.sapp

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"number": self.number, "rule": str(self.rule), "packets": self.packets,
                                  "bytes": self.bytes}
        if self.comment:
            out["comment"] = self.comment
        if self.app:
            out["app"] = self.app
        return out


# ---- reading ---------------------------------------------------------------------


def live_rules(st: State) -> list[tuple[int, Rule]]:
    """(id, rule) of the live generation, in order."""
    cfg = st.config()
    cap = st.rule_capacity
    order, defs = st.map("rorder"), st.map("rdefs")
    out = []
    for pos in range(cfg.nrules):
        raw = order.lookup(L.U32.pack(cfg.rgen * cap + pos))
        if raw is None:
            break
        rid, _action = L.RREF.unpack(raw)
        text = (defs.lookup(L.U32.pack(rid)) or b"").rstrip(b"\0").decode()
        out.append((rid, parse_rule(text)))
    return out


def _sum_counter(raw: bytes) -> tuple[int, int]:
    pk = by = 0
    for off in range(0, len(raw), L.COUNTER.size):
        p, b = L.COUNTER.unpack_from(raw, off)
        pk += p
        by += b
    return pk, by


def rule_states(st: State) -> list[RuleState]:
    hits = st.map("rhits")
    out = []
    for pos, (rid, rule) in enumerate(live_rules(st)):
        pk, by = _sum_counter(hits.lookup(L.U32.pack(rid)) or b"")
        out.append(RuleState(pos + 1, rule, pk, by, rid))
    return out


class RuleCount(NamedTuple):
    """A live rule's counters with its text as stored (not parsed): what a
    scrape of thousands of rules needs."""

    number: int  # 1-based position
    id: int
    action: Action
    text: str  # canonical
    packets: int
    bytes: int


BATCH_FROM = 64  # rules from which rule_counts reads ranges of the rule maps instead of looking each rule up


def _values(m: Map, start: int, count: int) -> bytes:
    """Values ``start`` .. ``start + count - 1`` of an array map: one lookup
    each for a few, batch reads for more."""
    if count >= BATCH_FROM:
        return m.array_values(start, count)
    zero = bytes(m.value_bytes)
    return b"".join(m.lookup(L.U32.pack(i)) or zero for i in range(start, start + count))


def rule_counts(st: State, top: int | None = None) -> list[RuleCount]:
    """The live rules in list order with their hit counters, texts as stored
    (not parsed); with ``top``, only the ``top`` rules with the most packets
    (ties: the first in the list). Reads ranges of the rule maps in batches,
    and texts only of the rules it returns: a few milliseconds for thousands
    of rules, where :func:`rule_states` makes three system calls a rule and
    parses each text."""
    cfg = st.config()
    if not cfg.nrules or top == 0:
        return []
    order, defs, hits = st.map("rorder"), st.map("rdefs"), st.map("rhits")
    refs = list(L.RREF.iter_unpack(_values(order, cfg.rgen * st.rule_capacity, cfg.nrules)))
    ids = [rid for rid, _action in refs]
    per_id = hits.value_bytes // 8  # words per id: packets, bytes, for each CPU
    if len(ids) < BATCH_FROM:
        got = {rid: _values(hits, rid, 1) for rid in ids}
        counters, base = array("Q", b"".join(got[rid] for rid in ids)), {rid: i for i, rid in enumerate(ids)}
    else:  # ids are given out from 0 up: read them all, up to the highest live one
        counters, base = array("Q", _values(hits, 0, max(ids) + 1)), None
    packets = list(map(sum, zip(*(counters[j::per_id] for j in range(0, per_id, 2)))))
    octets = list(map(sum, zip(*(counters[j::per_id] for j in range(1, per_id, 2)))))
    at = [base[rid] for rid in ids] if base is not None else ids  # where each rule's counters are
    shown = list(range(len(refs)))
    if top is not None and top < len(refs):
        live = [packets[a] for a in at]  # the sort is stable: of equal counts, the first in the list comes first
        shown = sorted(sorted(shown, key=live.__getitem__, reverse=True)[:top])
    lo, hi = min(ids[i] for i in shown), max(ids[i] for i in shown) + 1
    if len(shown) >= BATCH_FROM and 4 * len(shown) >= hi - lo:  # dense enough: one range read
        raw, first = _values(defs, lo, hi - lo), lo
    else:
        raw, first = b"", 0
    texts = {}
    for i in shown:
        rid = ids[i]
        if raw:
            start = (rid - first) * RULE_TEXT  # NUL-padded: the text ends at the first NUL
            end = raw.find(b"\0", start, start + RULE_TEXT)
            texts[rid] = raw[start:end if end >= 0 else start + RULE_TEXT].decode()
        else:
            texts[rid] = (defs.lookup(L.U32.pack(rid)) or b"").rstrip(b"\0").decode()
    names = {int(a): a for a in Action}
    return [RuleCount(i + 1, ids[i], names[refs[i][1]], texts[ids[i]], packets[at[i]], octets[at[i]]) for i in shown]


def snapshot(st: State, progress: Callable[[int, int], None] | None = None) -> RuleSetSpec:
    """The running firewall: rules, sets with their elements and remaining
    timeouts, and the policy (what ``save`` writes); ``progress(done, total)``
    as the elements are read."""
    from ..model.rulefile import Element, RuleSetSpec  # not for 'list' or a ban

    ids = S.live_ids(st)
    members = S.members(st, ids.values(), progress=progress)
    sets = {name: [Element(e.prefix, S.ttl_left(e.expires_in)) for e in members[sid]] for name, sid in ids.items()}
    cfg = st.config()
    changed = {k: v for k, v in timeouts_by_name(cfg.timeouts).items() if v != timeouts_by_name(default_timeouts())[k]}
    return RuleSetSpec(tuple(r for _id, r in live_rules(st)), sets, cfg.policy, established=cfg.established,
                       timeouts=changed)


# ---- installing a rule list ----------------------------------------------------------


def _ifindexes(st: State, rules: Sequence[Rule], extra: tuple[str, int, str | None] | None = None,
               ) -> dict[str, list[int]]:
    """Interface name -> ifindexes of the attached interfaces of that name
    (``extra``: one about to be attached). XDP tells a packet's interface
    only by ifindex, so a rule 'on NAME' is refused when another attached
    interface (in another namespace) has the same ifindex."""
    out: dict[str, list[int]] = {}
    where: dict[int, set[tuple[str, str | None]]] = {}
    recs = [(L.IFACE_VAL.unpack(v)[0].rstrip(b"\0").decode(), *L.IFACE_KEY.unpack(k)) for k, v in
            st.map("ifaces").items()]
    items = [(name, idx, ns.rstrip(b"\0").decode() or None) for name, idx, ns in recs]
    if extra is not None:
        items.append(extra)
    for name, idx, ns in items:
        out.setdefault(name, []).append(idx)
        where.setdefault(idx, set()).add((name, ns))
    for r in rules:
        if not r.iface:
            continue
        for idx in out.get(r.iface, []):
            others = sorted(f"{n} (netns {ns or 'host'})" for n, ns in where[idx] if n != r.iface)
            if others:
                raise UsageError(f"'on {r.iface}' is ambiguous: ifindex {idx} is also {', '.join(others)}, and XDP "
                                 "tells interfaces apart only by ifindex; use a separate --pin-dir for the other "
                                 "namespace")
    return out


def install(st: State, rules: Sequence[Rule], policy: Verdict | None = None, set_ids: dict[str, int] | None = None,
            conn: tuple[bool | None, dict[str, int]] = (None, {}),
            live: list[tuple[int, Rule]] | None = None, txn: int = 0) -> None:
    """Make ``rules`` the live rule list (and ``policy`` the policy, ``conn``
    connection state on/off and the timeouts it names) in one
    switch. Nothing a packet can see changes before the switch. ``live``:
    the (id, rule) list the caller has just read (read here otherwise);
    ``txn``: the journal txn the new config carries (an apply's commit)."""
    from ..model.compiler import compile_rules

    st.require_lock()
    cap = st.rule_capacity
    cfg = st.config()
    gen = cfg.rgen ^ 1
    if set_ids is None:
        set_ids = S.live_ids(st)
    ifindexes = _ifindexes(st, rules) if any(r.iface for r in rules) else {}
    tables = compile_rules(rules, cap, gen, set_ids, ifindexes)  # validates before anything is written
    st.wait_recent_switch()  # the idle generation was live moments ago: let its readers finish

    # stable ids: a rule that stays keeps its id (and its hit counter)
    if live is None:
        live = live_rules(st)
    by_text: dict[str, list[int]] = {}
    for rid, r in live:
        by_text.setdefault(str(r), []).append(rid)
    in_use = {rid for rid, _r in live}
    defs, hits = st.map("rdefs"), st.map("rhits")
    free: Iterator[int] | None = None  # read when a rule needs a new id (a text given twice may need one too)
    ids, fresh = [], []
    for r in rules:
        same = by_text.get(str(r))
        if same:
            rid = same.pop(0)
        else:
            if free is None:
                free = _free_ids(defs, in_use, 2 * cap)
            rid = next(free)
            fresh.append((rid, r))
        ids.append(rid)

    zero = bytes(hits.value_bytes)
    for rid, r in fresh:
        text = str(r).encode()
        if len(text) >= RULE_TEXT:
            raise UsageError(f"rule too long ({len(text)} bytes, at most {RULE_TEXT - 1}): {r}")
        defs.update(L.U32.pack(rid), text.ljust(RULE_TEXT, b"\0"))
        hits.update(L.U32.pack(rid), zero)

    _clear_generation(st, gen)
    _write_tables(st, tables, gen, cap, ids, rules)
    new_cfg = cfg._replace(rgen=gen, nrules=len(rules), txn=txn or cfg.txn)
    if policy is not None:
        new_cfg = new_cfg._replace(policy=policy)
    established, timeouts = conn
    if established is not None:
        new_cfg = new_cfg._replace(established=established)
    if timeouts:
        new_cfg = new_cfg._replace(timeouts=with_timeouts(new_cfg.timeouts, timeouts))
    st.write_config(new_cfg)


def _free_ids(defs: Map, in_use: set[int], n: int) -> Iterator[int]:
    """Ids for new rules: first those no rule has had yet (no text stored
    under them), then those of rules gone. So an id, the key of a rule's
    metrics, names one rule until ids of the 2 x capacity run out."""
    texts = _values(defs, 0, n)
    used = [i for i in range(n) if texts[i * RULE_TEXT] and i not in in_use]
    never = (i for i in range(n) if not texts[i * RULE_TEXT] and i not in in_use)
    return chain(never, used)


def _first_word(vec: int, words: int) -> bytes:
    """The index of the first non-zero 64-bit word of ``vec`` (``words`` when none), as the vector's last word."""
    first = ((vec & -vec).bit_length() - 1) // 64 if vec else words
    return first.to_bytes(8, "little")


def _clear_generation(st: State, gen: int) -> None:
    """Drop the idle generation's rule prefixes and interface classes."""
    for name in ("rlit4", "rlit6"):
        m = st.map(name)
        stale = [k for k in m if L.U32.unpack_from(k, 4)[0] >> 1 == gen]
        delete_all(m, stale)
    m = st.map("riface")
    delete_all(m, [k for k in m if L.IFKEY.unpack(k)[0] == gen])


def _write_tables(st: State, t: object, gen: int, cap: int, ids: list[int], rules: Sequence[Rule]) -> None:
    from ..model.compiler import Tables

    assert isinstance(t, Tables)
    vec_bytes = cap // 8
    words = cap // 64
    cids = sorted(t.vectors)
    # each vector, then the index of its first non-zero word (where the datapath's walk may start)
    write_all(st.map("rvec"), [L.U32.pack(c) for c in cids],
              [t.vectors[c].to_bytes(vec_bytes, "little") + _first_word(t.vectors[c], words) for c in cids])
    for (d, fam), table in t.lit.items():
        if not table:
            continue
        kst = L.RKEY4 if fam == 4 else L.RKEY6
        items = sorted(table.items(), key=lambda kv: (kv[0].plen, kv[0].addr))
        write_all(st.map("rlit4" if fam == 4 else "rlit6"),
                  [kst.pack(32 + p.plen, gen * 2 + d, p.addr) for p, _c in items], [L.U32.pack(c) for _p, c in items])
    ports = st.map("rports")
    for d in (0, 1):
        base = gen << L.GEN_SHIFT | d << L.PORT_DIR_SHIFT
        keys = array("I", range(base, base + 65536)).tobytes()
        vals = t.ports[d].tobytes()
        try:
            ports.update_batch(keys, vals)
        except BpfError:
            write_all(ports, [keys[4 * i : 4 * i + 4] for i in range(65536)],
                      [vals[4 * i : 4 * i + 4] for i in range(65536)])
    riface = st.map("riface")
    for idx, c in t.ifaces.items():
        riface.update(L.IFKEY.pack(gen, idx), L.U32.pack(c))
    if rules:
        write_all(st.map("rorder"), [L.U32.pack(gen * cap + i) for i in range(len(rules))],
                  [L.RREF.pack(ids[i], int(r.action)) for i, r in enumerate(rules)])
    sets = [list(t.set_ids[d]) + [0] * (L.RULE_SETS - len(t.set_ids[d])) for d in (0, 1)]
    rs = L.RULESET.pack(t.n_words, t.iface_dflt, t.fields, t.all_cls, *t.proto_cls, *t.lit_dflt, *t.setb,
                        len(t.set_ids[0]), len(t.set_ids[1]), *sets[0], *sets[1], *t.noport)
    st.map("rsets").update(L.U32.pack(gen), rs)


first_word = _first_word  # for pyxdp.store.resize
ifindexes_of = _ifindexes


# ---- rule edits ----------------------------------------------------------------------


def add_rule(st: State, rule: Rule, position: int | None = None) -> Plan:
    """Append ``rule`` (insert it before 1-based ``position``) with ufw's
    identity of a rule (:func:`pyxdp.model.rules.plan_add`): the same match
    with another action or comment is updated in place. What is there
    already raises RuleExists (``inserting`` when it was an insert)."""
    live = live_rules(st)
    plan = plan_add([r for _id, r in live], rule, position)
    if not plan.changes:
        raise RuleExists(plan.message(rule), plan.number, inserting=plan.outcome == "exists-insert")
    install(st, plan.rules, live=live)
    return plan


def plan_delete(rules: Sequence[Rule], which: Iterable[int | Rule]) -> list[int]:
    """The 0-based indexes ``delete`` removes: by 1-based number, or the rule
    ufw's ``delete RULE`` finds (:func:`pyxdp.model.rules.find_rule`)."""
    drop: set[int] = set()
    for w in which:
        if isinstance(w, int):
            if not 1 <= w <= len(rules):
                raise UsageError(f"no rule number {w} (there are {len(rules)})")
            drop.add(w - 1)
        else:
            at = find_rule(rules, w)
            if at is None:
                raise UsageError(f"Could not delete non-existent rule: {w}")
            drop.add(at)
    return sorted(drop)


def delete_rules(st: State, which: Iterable[int | Rule]) -> int:
    """Delete rules by 1-based number or by their words, all or nothing."""
    live = live_rules(st)
    rules = [r for _id, r in live]
    drop = set(plan_delete(rules, which))
    install(st, [r for i, r in enumerate(rules) if i not in drop], live=live)
    return len(drop)


def check_attach(st: State, ifname: str, ifindex: int, netns: str | None) -> None:
    """Refuse an attach that would make a rule 'on IFACE' ambiguous."""
    rules = [r for _id, r in live_rules(st)]
    if any(r.iface for r in rules):
        _ifindexes(st, rules, (ifname, ifindex, netns))


def referenced_sets(st: State) -> set[str]:
    return {s for _id, r in live_rules(st) for s in r.sets()}


# ---- the whole firewall ------------------------------------------------------------------


def apply(st: State, spec: RuleSetSpec, progress: Callable[[int, int], None] | None = None) -> None:
    """Replace rules, sets and (when given) the policy in one switch. Each
    set of ``spec`` is staged under a new id first, except a set whose
    elements are the ones the running set of that name has (it keeps its id,
    its elements their hit counters, and takes the file's timeouts after the
    switch); the config switch that installs the rules commits it all (it
    carries the journal's txn). A writer killed before the switch leaves
    nothing a packet sees; the next writer drops what was staged (or, after
    the switch, finishes). ``progress(done, total)`` as the staged sets'
    elements are written."""
    st.require_lock()
    live = S.live_ids(st)
    keep: dict[str, int] = {}
    for name, elements in spec.sets.items():
        sid = live.get(parse_set_name(name))
        if sid and S.same_members(st, sid, S.KeySet.of(e.prefix for e in elements)):
            keep[parse_set_name(name)] = sid
    txn = st.journal_begin(JournalOp.APPLY)
    new_ids: dict[str, int] = dict(keep)
    tally = S.Tally(progress, sum(len(els) for name, els in spec.sets.items() if parse_set_name(name) not in keep))
    try:
        for name, elements in spec.sets.items():
            if parse_set_name(name) not in keep:
                new_ids[parse_set_name(name)] = S.stage(st, elements, tally=tally)
        S.mark_apply(st, new_ids)
        install(st, spec.rules, policy=spec.policy, set_ids=new_ids, txn=txn,
                conn=(spec.established, spec.timeouts))
    except BaseException:
        S.finish_apply(st, committed=False)
        S.drain(st, {sid for name, sid in new_ids.items() if name not in keep})
        st.journal_end()
        raise
    old = S.finish_apply(st, committed=True)
    st.journal_end()
    for name, elements in spec.sets.items():
        if parse_set_name(name) in keep:
            S.set_timeouts(st, keep[parse_set_name(name)], elements)
    if old:
        grace_period(st)  # packets that read the old generation may still look up the old sets
        S.drain(st, old)
