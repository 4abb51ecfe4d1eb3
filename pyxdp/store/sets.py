"""Named sets of prefixes as the pinned maps hold them: elements with
timeouts and hit counters, their placement (hash probes or the trie), and
every change to them, all or nothing under SIGKILL too.

Storage (see bpf/xdp_filter.bpf.c): every element is in the hash of its
family, keyed by (32 + prefix length, set id, address); per set and family
at most HASHED_MAX lengths are probed there, and the elements of all other
lengths also have a copy in the LPM trie. A change writes new elements with
``born`` = the set's epoch + 1 (invisible), marks removed ones with
``until`` = epoch + 1 (still visible), commits by writing the new epoch (one
word), then deletes what it removed. The journal names the set; a later
writer normalises a set whose change died half-way (:func:`recover`)."""

from __future__ import annotations

import errno
import math
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, NamedTuple

from .. import layout as L
from ..errors import BpfError, MapFull, UsageError
from ..layout import HASHED_MAX, MAX_SETS, IdState, JournalOp
from ..model.prefix import Prefix, check_ttl
from ..model.rules import parse_set_name
from .clock import grace_period, monotonic_ns
from .mapio import BATCH, delete_all, write_all

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..kernel.bpf import Map
    from ..model.rulefile import Element
    from .state import State


class Tally:
    """Counts work done for a progress callback ``(done, total)`` (elements),
    called after each batch; None: nobody asked."""

    __slots__ = ("done", "progress", "total")

    def __init__(self, progress: Callable[[int, int], None] | None, total: int) -> None:
        self.progress, self.total, self.done = progress, total, 0

    def step(self, n: int) -> None:
        if self.progress is not None and n:
            self.done += n
            self.progress(min(self.done, self.total), self.total)


SMALL_SET = 1024  # below this many elements in a family, any length may be hashed
SHARE_TO_HASH = 16  # above it, a hashed length must hold 1/16 of the family's elements
_FAM = {4: ("elem4", "trie4", L.RKEY4, 0, 32), 6: ("elem6", "trie6", L.RKEY6, 33, 128)}


class SetState(NamedTuple):
    """A set as the maps hold it now."""

    name: str
    id: int
    n4: int
    n6: int

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "ipv4": self.n4, "ipv6": self.n6}


class ElementState(NamedTuple):
    """One element of a set now: its prefix, seconds left (None: permanent), hits."""

    prefix: Prefix
    expires_in: float | None
    hits: int

    def to_dict(self) -> dict[str, object]:
        left = None if self.expires_in is None else round(self.expires_in, 3)
        return {"prefix": str(self.prefix), "expires_in": left, "hits": self.hits}


class ChangeResult(NamedTuple):
    added: int  # new elements
    refreshed: int  # elements that were there (their timeout set anew)
    removed: int
    missing: tuple[Prefix, ...]  # asked to remove, not there


class SetInfo(NamedTuple):
    lens4: tuple[int, ...]  # per slot: 1 + length, 0 unused
    lens6: tuple[int, ...]
    trie4: int
    trie6: int
    epoch: int
    state: IdState

    @classmethod
    def decode(cls, raw: bytes) -> SetInfo:
        l4, l6, t4, t6, epoch, state = L.SET_INFO.unpack(raw)
        return cls(tuple(l4), tuple(l6), t4, t6, epoch, IdState(state))

    def encode(self) -> bytes:
        return L.SET_INFO.pack(bytes(self.lens4), bytes(self.lens6), self.trie4, self.trie6, self.epoch, self.state)

    def hashed(self, fam: int) -> set[int]:
        return {s - 1 for s in (self.lens4 if fam == 4 else self.lens6) if s}

    def with_slots(self, fam: int, slots: tuple[int, ...]) -> SetInfo:
        return self._replace(lens4=slots) if fam == 4 else self._replace(lens6=slots)

    def with_trie(self, fam: int, on: bool) -> SetInfo:
        return self._replace(trie4=int(on)) if fam == 4 else self._replace(trie6=int(on))

    def trie(self, fam: int) -> bool:
        return bool(self.trie4 if fam == 4 else self.trie6)


FREE_INFO = SetInfo((0,) * HASHED_MAX, (0,) * HASHED_MAX, 0, 0, 0, IdState.FREE)


def _key(fam: int, sid: int, p: Prefix) -> bytes:
    return _FAM[fam][2].pack(32 + p.plen, sid, p.addr)


def _key_prefix(fam: int, key: bytes) -> tuple[int, Prefix]:
    plen, sid, addr = _FAM[fam][2].unpack(key)
    return sid, Prefix(fam, addr, plen - 32)


def _visible(raw: bytes, epoch: int, now: int) -> bool:
    expires, _hits, born, until = L.ELEM.unpack(raw)
    return born <= epoch and not (until and until <= epoch) and (not expires or now < expires)


# ---- reading ---------------------------------------------------------------------


def names(st: State) -> dict[str, tuple[int, int, int]]:
    """name -> (live id, staged id, pending)."""
    out = {}
    for k, v in st.map("set_names").items():
        live, staged, pending, _pad = L.SET_NAME_VAL.unpack(v)
        out[k.rstrip(b"\0").decode()] = (live, staged, pending)
    return out


def live_ids(st: State) -> dict[str, int]:
    """name -> id of every set the live rules can name now. While an apply
    that has switched the config (committed) has not settled the name table
    yet (it died, or is finishing), its staged ids are the live ones."""
    op, txn, _sid = st.journal()
    committed = op == JournalOp.APPLY and txn == st.config().txn
    out = {}
    for n, (live, staged, pending) in sorted(names(st).items()):
        sid = (staged if committed and pending else live)
        if sid:
            out[n] = sid
    return out


def info(st: State, sid: int) -> SetInfo:
    raw = st.map("sets").lookup(L.U32.pack(sid))
    return SetInfo.decode(raw) if raw else FREE_INFO


def all_info(st: State) -> dict[int, SetInfo]:
    return {L.U32.unpack(k)[0]: SetInfo.decode(v) for k, v in st.map("sets").items()}


def _write_info(st: State, sid: int, si: SetInfo) -> None:
    st.map("sets").update(L.U32.pack(sid), si.encode())


def _ledger(st: State, sid: int) -> list[int]:
    """The control plane's own tally per length slot: elements it inserted
    minus those it deleted (only it writes this map)."""
    raw = st.map("counts").lookup(L.U32.pack(sid))
    return list(L.LEN_COUNTS.unpack(raw)) if raw else [0] * L.LEN_SLOTS


def _swept(st: State, sid: int) -> list[int]:
    raw = st.map("swept").lookup(L.U32.pack(sid))
    return list(L.LEN_COUNTS.unpack(raw)) if raw else [0] * L.LEN_SLOTS


def counts(st: State, sid: int) -> list[int]:
    """Elements per length slot (IPv4 /n at n, IPv6 /n at 33 + n): the
    control plane's tally minus what the sweeper removed. Exact, because each
    side counts only deletions it made itself."""
    return [max(0, x - y) for x, y in zip(_ledger(st, sid), _swept(st, sid))]


def _bump(st: State, sid: int, fam: int, by_len: dict[int, int]) -> None:
    """Add ``by_len`` (prefix length -> change) to the tally of one family."""
    if not any(by_len.values()):
        return
    base = _FAM[fam][3]
    raw = _ledger(st, sid)
    for n, d in by_len.items():
        raw[base + n] += d
    st.map("counts").update(L.U32.pack(sid), L.LEN_COUNTS.pack(*raw))


def _write_counts(st: State, sid: int, n: Sequence[int]) -> None:
    """Set the tally so that counts() says ``n`` (what is there now; the
    caller makes sure the sweeper is not removing anything of the set)."""
    st.map("counts").update(L.U32.pack(sid), L.LEN_COUNTS.pack(*(x + y for x, y in zip(n, _swept(st, sid)))))


def _guard(st: State, sid: int, fam: int, keys: Iterable[bytes], addr_at: int, fresh: bool = False) -> None:
    """Set the trie-guard bits (see tguard in the datapath) for trie copies
    ``keys`` (their address starts at byte ``addr_at``: 4 for short keys, 8
    for full ones), before the copies are written. ``fresh``: start from an
    empty guard (a rebuild from all of the set's trie elements)."""
    m = st.map("tguard")
    idx = L.U32.pack(sid * 2 + (fam == 6))
    old = bytes(8 * L.GUARD_WORDS) if fresh else (m.lookup(idx) or bytes(8 * L.GUARD_WORDS))
    bm = bytearray(old)
    for k in keys:
        plen = k[0] - 32
        hi = int.from_bytes(k[addr_at : addr_at + 2], "big")
        span = 1 << (16 - plen) if plen < 16 else 1
        start = hi & ~(span - 1)
        if span >= 8:
            bm[start >> 3 : (start + span) >> 3] = b"\xff" * (span >> 3)
        else:
            for b in range(start, start + span):
                bm[b >> 3] |= 1 << (b & 7)
    if bytes(bm) != old or fresh:
        m.update(idx, bytes(bm))


def _to_trie(st: State, sid: int, fam: int, si: SetInfo, keys: Sequence[bytes], short: bool,
             fresh_guard: bool = False) -> SetInfo:
    """Give ``keys`` (short KeySet keys, or full ones) trie copies, in the
    order that keeps every element findable: the guard bits first, then the
    copies, then the set's trie flag (its own write). Returns the SetInfo as
    written."""
    _guard(st, sid, fam, keys, 4 if short else 8, fresh=fresh_guard)
    if not keys:
        return si
    tmap = st.map(_FAM[fam][1])
    if short:
        _write_keys(tmap, sid, keys, [k[:4] for k in keys])
    else:
        write_all(tmap, list(keys), [k[:4] for k in keys])
    if not si.trie(fam):
        si = si.with_trie(fam, True)
        _write_info(st, sid, si)
    return si


def _by_len(keys: Iterable[bytes]) -> dict[int, int]:
    """Prefix length -> how many of the (short or full) keys have it."""
    out: dict[int, int] = {}
    for k in keys:
        out[k[0] - 32] = out.get(k[0] - 32, 0) + 1  # plen is the key's first (little-endian) byte
    return out


@contextmanager
def sweeper_held(st: State, held: bool = True) -> Iterator[None]:
    """Keep the sweeper from walking while the block runs (and wait out a
    walk under way): what the block reads of elements stays true."""
    if not held:
        yield
        return
    _set_hold(st, 1)
    try:
        grace_period(st)
        yield
    finally:
        _set_hold(st, 0)


def _set_hold(st: State, hold: int) -> None:
    ctl = st.map("sweep_ctl")
    raw = ctl.lookup(L.U32.pack(0)) or L.SWEEP_CTL.pack(0, 0, 0)
    hint, seq, _hold = L.SWEEP_CTL.unpack(raw)
    ctl.update(L.U32.pack(0), L.SWEEP_CTL.pack(hint, seq, hold))


def table(st: State, exact: bool = True) -> dict[str, SetState]:
    """The sets with their sizes. The size of a set that a change is working
    on (or that a killed writer left half-changed) is counted from its
    visible elements: its stored counts are settled only when it ends.
    ``exact=False`` takes the stored tally of that set too: no walk of its
    elements, fast at any size, but it counts elements the change has
    written and not yet committed (until a writer recovers a killed one)."""
    op, _txn, busy = st.journal()
    out = {}
    for name, sid in live_ids(st).items():
        if exact and op == JournalOp.SET and sid == busy:
            els = members(st, [sid])[sid]
            n4 = sum(1 for e in els if e.prefix.family == 4)
            out[name] = SetState(name, sid, n4, len(els) - n4)
            continue
        c = counts(st, sid)
        out[name] = SetState(name, sid, sum(c[:33]), sum(c[33:]))
    return out


def _walk(st: State, fam: int, sids: set[int]) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) of every element of ``sids`` in one family (one walk of
    its hash, read in batches: nothing else is held)."""
    for k, v in st.map(_FAM[fam][0]).items(65536):
        if L.U32.unpack_from(k, 4)[0] in sids:
            yield k, v


def members(st: State, sids: Iterable[int], now: int | None = None,
            progress: Callable[[int, int], None] | None = None) -> dict[int, list[ElementState]]:
    """Set id -> its visible elements (sorted), one walk of each hash;
    ``progress(done, total)`` as they are read (total: the sets' stored tallies)."""
    ids = set(sids)
    tally = None
    if progress is not None:
        tally = Tally(progress, sum(sum(counts(st, sid)) for sid in ids))
    now = monotonic_ns() if now is None else now
    epochs = {sid: info(st, sid).epoch for sid in ids}
    out: dict[int, list[ElementState]] = {sid: [] for sid in ids}
    walked = 0
    for fam in (4, 6):
        for k, v in _walk(st, fam, ids):
            walked += 1
            if tally is not None and walked == 65536:
                tally.step(walked)
                walked = 0
            sid, p = _key_prefix(fam, k)
            if not _visible(v, epochs[sid], now):
                continue
            expires, hits, _born, _until = L.ELEM.unpack(v)
            out[sid].append(ElementState(p, (expires - now) / 1e9 if expires else None, hits))
    if tally is not None:
        tally.step(walked)
    for els in out.values():
        els.sort(key=lambda e: (e.prefix.family, e.prefix.addr, e.prefix.plen))
    return out


def lookup_name(st: State, name: str) -> int:
    sid = live_ids(st).get(parse_set_name(name))
    if not sid:
        raise UsageError(f"no set @{parse_set_name(name)}")
    return sid


# ---- ids ---------------------------------------------------------------------------


def _name_key(name: str) -> bytes:
    return name.encode().ljust(L.SET_NAME, b"\0")


def alloc(st: State, state: IdState) -> int:
    """A FREE set id (no element carries it), now in ``state``."""
    used = {x for v in names(st).values() for x in v[:2] if x}
    for sid, si in sorted(all_info(st).items()):
        if sid and si.state == IdState.FREE and sid not in used:
            _write_counts(st, sid, [0] * L.LEN_SLOTS)
            for fam in (4, 6):
                _guard(st, sid, fam, (), 0, fresh=True)
            _write_info(st, sid, FREE_INFO._replace(state=state))
            return sid
    raise UsageError(f"too many sets (at most {MAX_SETS - 1}, counting sets being replaced or removed)")


def create(st: State, name: str) -> int:
    """The id of set ``name``, made (empty) when missing."""
    name = parse_set_name(name)
    sid = live_ids(st).get(name)
    if sid:
        return sid
    st.journal_begin(JournalOp.SET)
    sid = alloc(st, IdState.LIVE)
    st.journal_begin(JournalOp.SET, sid)
    st.map("set_names").update(_name_key(name), L.SET_NAME_VAL.pack(sid, 0, 0, 0))
    st.journal_end()
    return sid


def create_filled(st: State, name: str, add: KeySet, ttl: int | None = None,
                  progress: Callable[[int, int], None] | None = None) -> tuple[int, ChangeResult]:
    """Make set ``name`` (missing now) holding ``add`` as one change: the
    elements are written and committed under a new id that no name refers
    to yet, then the name is written (the commit). A writer killed before
    that leaves an id no name uses, which the next writer's :func:`recover`
    drains: so there is either no set or the whole one, never an empty set
    made for elements that did not come. Returns the id and the change."""
    name = parse_set_name(name)
    sid = alloc(st, IdState.STAGED)
    res = change(st, sid, add=add, ttl=ttl, progress=progress)
    st.map("set_names").update(_name_key(name), L.SET_NAME_VAL.pack(sid, 0, 0, 0))  # from here on it exists
    _write_info(st, sid, info(st, sid)._replace(state=IdState.LIVE))  # (recover does this too, if killed)
    return sid, res


# ---- changing one set ------------------------------------------------------------


def _existing(st: State, fam: int, sid: int, keys: Collection[bytes], held: int) -> dict[bytes, bytes]:
    """Current values of those short ``keys`` (see KeySet) that set ``sid``
    (holding ``held`` elements of this family) has: one lookup per key, or
    one walk of the set's elements when that is cheaper."""
    if not held:
        return {}
    m = st.map(_FAM[fam][0])
    sidb = L.U32.pack(sid)
    if len(keys) <= 256 or len(keys) * 4 < held:
        found = {}
        for k in keys:
            v = m.lookup(k[:4] + sidb + k[4:])
            if v is not None:
                found[k] = v
        return found
    out = {}
    for k, v in _walk(st, fam, {sid}):
        short = k[:4] + k[8:]
        if short in keys:
            out[short] = v
    return out


def _full(sid: int, keys: Iterable[bytes]) -> list[bytes]:
    sidb = L.U32.pack(sid)
    return [k[:4] + sidb + k[4:] for k in keys]


def _write_keys(m: Map, sid: int, keys: Sequence[bytes], values: Sequence[bytes] | bytes,
                tally: Tally | None = None) -> None:
    """Write short ``keys`` of set ``sid`` in batches (one value for all, or one each)."""
    for pos in range(0, len(keys), BATCH):
        chunk = keys[pos : pos + BATCH]
        vals = [values] * len(chunk) if isinstance(values, bytes) else list(values[pos : pos + BATCH])
        write_all(m, _full(sid, chunk), vals)
        if tally is not None:
            tally.step(len(chunk))


def _map_total(st: State, fam: int) -> int:
    """Elements in one family's hash (from the counts; no walk)."""
    total = 0
    base, maxlen = _FAM[fam][3], _FAM[fam][4]
    for sid, si in all_info(st).items():
        if si.state != IdState.FREE:
            total += sum(counts(st, sid)[base : base + maxlen + 1])
    return total


class KeySet:
    """Prefixes parsed and packed without their set id: (32 + length, address)
    per family, one bytes object each and nothing more, so that a million of
    them fit in little memory and bad input is refused before any change."""

    def __init__(self) -> None:
        self.keys: dict[int, set[bytes]] = {4: set(), 6: set()}

    @classmethod
    def of(cls, prefixes: Iterable[Prefix]) -> KeySet:
        ks = cls()
        for p in prefixes:
            ks.keys[p.family].add(L.U32.pack(32 + p.plen) + p.addr)
        return ks

    def __len__(self) -> int:
        return len(self.keys[4]) + len(self.keys[6])


HOLD_MARGIN_NS = 600 * 1_000_000_000  # touching an element expiring sooner than this holds the sweeper


class _Plan(NamedTuple):
    new_keys: dict[int, list[bytes]]  # absent now: inserted
    rewrite: dict[int, dict[bytes, bytes]]  # there now: rewritten (refreshed, made anew, or marked removed)
    gone: dict[int, list[bytes]]  # marked removed; deleted after the commit
    missing: list[Prefix]
    added: int
    refreshed: int
    expiring: bool  # an element it touches may expire (and meet the sweeper) while it works


def _plan(st: State, sid: int, si: SetInfo, adds: dict[int, set[bytes]], drops: dict[int, dict[bytes, Prefix]],
          expires: int, now: int, missing_ok: bool) -> _Plan:
    epoch = si.epoch + 1
    fresh_value = L.ELEM.pack(expires, 0, epoch, 0)
    cnt = counts(st, sid)
    plan = _Plan({}, {}, {}, [], 0, 0, False)
    added = refreshed = 0
    expiring = False
    for fam in (4, 6):
        hname, _t, _kst, base, maxlen = _FAM[fam]
        if not adds[fam] and not drops[fam]:
            continue
        held = sum(cnt[base : base + maxlen + 1])
        old = _existing(st, fam, sid, adds[fam], held) if adds[fam] else {}
        if drops[fam]:
            old.update(_existing(st, fam, sid, drops[fam].keys(), held))
        rewrite: dict[bytes, bytes] = {}
        new_keys: list[bytes] = []
        for k in adds[fam]:
            v = old.get(k)
            if v is None:
                new_keys.append(k)
                continue
            e_old, hits, born, _until = L.ELEM.unpack(v)
            expiring = expiring or bool(e_old and e_old < now + HOLD_MARGIN_NS)
            if _visible(v, si.epoch, now):
                rewrite[k] = L.ELEM.pack(expires, hits, born, 0)
                refreshed += 1
            else:
                rewrite[k] = fresh_value  # expired, not yet swept: made anew
                added += 1
        added += len(new_keys)
        gone: list[bytes] = []
        for k, p in drops[fam].items():
            v = old.get(k)
            if v is None or not _visible(v, si.epoch, now):
                if not missing_ok:
                    raise UsageError(f"{p} is not in the set")
                plan.missing.append(p)
                continue
            e, hits, born, _until = L.ELEM.unpack(v)
            expiring = expiring or bool(e and e < now + HOLD_MARGIN_NS)
            rewrite[k] = L.ELEM.pack(e, hits, born, epoch)
            gone.append(k)
        m = st.map(hname)
        if new_keys and len(new_keys) + _map_total(st, fam) > m.spec.max_entries:
            raise MapFull(28, f"set elements: map {hname} is full ({m.spec.max_entries} per family)")
        if new_keys or rewrite:
            plan.new_keys[fam] = new_keys
            plan.rewrite[fam] = rewrite
            plan.gone[fam] = gone
    return plan._replace(added=added, refreshed=refreshed, expiring=expiring)


def change(st: State, sid: int, add: Iterable[Prefix] | KeySet = (), ttl: int | None = None,
           remove: Iterable[Prefix] = (), missing_ok: bool = False,
           progress: Callable[[int, int], None] | None = None) -> ChangeResult:
    """Add (or refresh) and remove elements of set ``sid`` in one commit.
    ``ttl``: seconds the added elements live (None or 0: permanent). A
    prefix to remove that is not there is refused, or with ``missing_ok``
    reported in the result. All or nothing. Keys stay in KeySet's short form
    (no set id) and are completed batch by batch as they are written, so a
    million prefixes take little memory.

    The sweeper may remove expired elements meanwhile: a change that touches
    an element expiring within HOLD_MARGIN_NS holds it first (and reads
    again), so that what it read stays true; removals are counted only for
    the elements this change itself deleted. ``progress(done, total)`` is
    called as the elements are written (total: those added or refreshed)."""
    ttl = check_ttl(ttl)
    now = monotonic_ns()
    expires = now + ttl * 1_000_000_000 if ttl else 0
    adds = (add if isinstance(add, KeySet) else KeySet.of(add)).keys
    drops: dict[int, dict[bytes, Prefix]] = {4: {}, 6: {}}
    for p in remove:
        k = L.U32.pack(32 + p.plen) + p.addr
        if k in adds[p.family]:
            raise UsageError(f"{p} is both added and removed")
        drops[p.family][k] = p
    si = info(st, sid)
    plan = _plan(st, sid, si, adds, drops, expires, now, missing_ok)
    if not plan.rewrite:
        return ChangeResult(0, 0, 0, tuple(plan.missing))
    with sweeper_held(st, plan.expiring):
        if plan.expiring:  # read again: the sweeper may have removed some of it before the hold
            plan = _plan(st, sid, si, adds, drops, expires, now, missing_ok)
        total = sum(len(plan.new_keys[f]) + len(plan.rewrite[f]) for f in plan.rewrite)
        removed = _apply_plan(st, sid, si, plan, expires, Tally(progress, total))
    if expires:
        _hint_sweeper(st, expires)
    st.journal_end()
    rebalance(st, sid)
    return ChangeResult(plan.added, plan.refreshed, removed, tuple(plan.missing))


def _apply_plan(st: State, sid: int, si: SetInfo, plan: _Plan, expires: int, tally: Tally | None = None) -> int:
    """Write a planned change: new elements (invisible), rewrites, removal
    marks, trie copies and layout, then the commit, then the deletions.
    Returns how many elements were removed."""
    epoch = si.epoch + 1
    fresh_value = L.ELEM.pack(expires, 0, epoch, 0)
    st.journal_begin(JournalOp.SET, sid)
    for fam in plan.rewrite:
        new_keys, rewrite = plan.new_keys[fam], plan.rewrite[fam]
        hname, _t, _kst, _base, _maxlen = _FAM[fam]
        m = st.map(hname)
        _write_keys(m, sid, new_keys, fresh_value, tally)
        lens = _by_len(new_keys)
        _bump(st, sid, fam, lens)
        if rewrite:
            ks = list(rewrite)
            _write_keys(m, sid, ks, [rewrite[k] for k in ks], tally)
        # a new length takes a free hash slot (most populous first); otherwise it goes to the trie
        hashed = si.hashed(fam)
        slots = list(si.lens4 if fam == 4 else si.lens6)
        for n in sorted(lens, key=lambda n: -lens[n]):
            if n not in hashed and 0 in slots:
                slots[slots.index(0)] = n + 1
                hashed.add(n)
                si = si.with_slots(fam, tuple(slots))
                _write_info(st, sid, si)
        si = _to_trie(st, sid, fam, si, [k for k in (*new_keys, *rewrite) if k[0] - 32 not in hashed], short=True)
    _write_info(st, sid, si._replace(epoch=epoch))  # the commit: new elements appear, removed ones vanish
    removed = 0
    for fam, gone in plan.gone.items():
        if gone:
            hname, tname, _kst, _base, _maxlen = _FAM[fam]
            delete_all(st.map(tname), _full(sid, gone))
            deleted = _delete_exact(st.map(hname), _full(sid, gone))  # the sweeper may have taken some
            _bump(st, sid, fam, {n: -c for n, c in _by_len(deleted).items()})
            removed += len(gone)
    return removed


def _delete_exact(m: Map, keys: list[bytes]) -> list[bytes]:
    """Delete ``keys``; returns those that were there (deleted by this call)."""
    deleted: list[bytes] = []
    pos = 0
    while pos < len(keys):
        chunk = keys[pos : pos + BATCH]
        try:
            m.delete_batch(b"".join(chunk))
            deleted += chunk
            pos += len(chunk)
        except BpfError as exc:
            done: int = getattr(exc, "done", 0)
            if exc.errno != errno.ENOENT:
                if done == 0 and exc.errno in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, 524):
                    for k in chunk:  # no batch op for this map
                        try:
                            m.delete(k)
                            deleted.append(k)
                        except BpfError as one:
                            if one.errno != errno.ENOENT:
                                raise
                    pos += len(chunk)
                    continue
                raise
            deleted += chunk[:done]  # the batch stops at the key that is not there
            pos += done + 1
    return deleted


def _hint_sweeper(st: State, expires: int) -> None:
    """Tell the sweeper an element expires at ``expires``: the earliest hint
    it has not walked for yet wins (a hint it took meanwhile costs at most
    one extra walk)."""
    ctl = st.map("sweep_ctl")
    raw = ctl.lookup(L.U32.pack(0)) or L.SWEEP_CTL.pack(0, 0, 0)
    hint, seq, hold = L.SWEEP_CTL.unpack(raw)
    sw = st.map("sweeper").lookup(L.U32.pack(0))
    seen = L.SWEEP_STATE.unpack_from(sw, len(sw) - L.SWEEP_STATE.size)[1] if sw else seq
    if seen != seq and hint:  # the last hint is still pending
        expires = min(expires, hint)
    # one word per write (the sweeper reads them apart): the hint first, then the new seq that makes it count
    ctl.update(L.U32.pack(0), L.SWEEP_CTL.pack(expires, seq, hold))
    ctl.update(L.U32.pack(0), L.SWEEP_CTL.pack(expires, (seq + 1) & 0xFFFFFFFF, hold))


def same_members(st: State, sid: int, keys: KeySet) -> bool:
    """Whether set ``sid``'s visible elements are exactly ``keys``."""
    now = monotonic_ns()
    epoch = info(st, sid).epoch
    seen = 0
    for fam in (4, 6):
        want = keys.keys[fam]
        for k, v in _walk(st, fam, {sid}):
            if not _visible(v, epoch, now):
                continue
            if k[:4] + k[8:] not in want:
                return False
            seen += 1
    return seen == len(keys)


def set_timeouts(st: State, sid: int, elements: Sequence[Element]) -> None:
    """Give the elements of set ``sid`` the timeouts of ``elements`` (the same
    prefixes; membership does not change, so this needs no commit). The
    sweeper is held meanwhile; an element it removed just before comes back."""
    now = monotonic_ns()
    want: dict[int, dict[bytes, int]] = {4: {}, 6: {}}
    for e in elements:
        ttl = check_ttl(e.ttl)
        want[e.prefix.family][L.U32.pack(32 + e.prefix.plen) + e.prefix.addr] = now + ttl * 1_000_000_000 if ttl else 0
    with sweeper_held(st):
        si = info(st, sid)
        for fam in (4, 6):
            hname, _t, _kst, _base, _maxlen = _FAM[fam]
            todo = dict(want[fam])
            keys: list[bytes] = []
            vals: list[bytes] = []
            for k, v in _walk(st, fam, {sid}):
                exp = todo.pop(k[:4] + k[8:], None)
                if exp is None:
                    continue
                old_exp, hits, born, until = L.ELEM.unpack(v)
                if old_exp != exp:
                    keys.append(k)
                    vals.append(L.ELEM.pack(exp, hits, born, until))
            write_all(st.map(hname), keys, vals)
            if todo:  # expired and removed by the sweeper since the apply compared them: back they come
                back = list(todo)
                _write_keys(st.map(hname), sid, back, [L.ELEM.pack(todo[k], 0, si.epoch, 0) for k in back])
                _bump(st, sid, fam, _by_len(back))
                si = _to_trie(st, sid, fam, si, [k for k in back if k[0] - 32 not in si.hashed(fam)], short=True)
    soonest = min((x for w in want.values() for x in w.values() if x), default=0)
    if soonest:
        _hint_sweeper(st, soonest)


# ---- placement ---------------------------------------------------------------------


def plan_hashed(cnt: Sequence[int], current: set[int]) -> set[int]:
    """The lengths a family of one set should probe in the hash (at most
    HASHED_MAX), from its per-length counts. A hashed length costs one probe
    per packet; the trie costs one lookup as soon as it holds anything. So:
    when every length fits, hash them all and leave the trie empty;
    otherwise hash only lengths that earn their probe (at least 1/16 of the
    elements, or any while there are fewer than 1,024), most populous first;
    a length already hashed stays unless one in the trie holds more than
    twice as many (the margin stops flapping)."""
    present = {n for n, c in enumerate(cnt) if c}
    if len(present) <= HASHED_MAX:
        return present
    total = sum(cnt)
    earns = {n for n in present if total < SMALL_SET or cnt[n] * SHARE_TO_HASH >= total}
    keep = [n for n in current if n in earns]
    rest = sorted((n for n in earns if n not in keep), key=lambda n: (-cnt[n], -n))
    chosen = sorted(keep, key=lambda n: (-cnt[n], -n))
    for n in rest:
        if len(chosen) < HASHED_MAX:
            chosen.append(n)
            continue
        weakest = min(chosen, key=lambda m: (cnt[m], -m))
        if cnt[n] > 2 * cnt[weakest]:
            chosen[chosen.index(weakest)] = n
    return set(chosen)


def rebalance(st: State, sid: int) -> None:
    """Move lengths between hash probes and the trie toward plan_hashed.
    Every step keeps every element findable: hash -> trie writes the trie
    copies before the slot is cleared; trie -> hash takes the slot, waits
    a grace period, then drops the trie copies."""
    cnt = counts(st, sid)
    for fam in (4, 6):
        base, maxlen = _FAM[fam][3], _FAM[fam][4]
        fc = cnt[base : base + maxlen + 1]
        si = info(st, sid)
        cur = si.hashed(fam)
        want = plan_hashed(fc, cur)
        slots = list(si.lens4 if fam == 4 else si.lens6)
        # empty lengths leave their slot (probing them finds nothing anyway)
        for i, s in enumerate(slots):
            if s and not fc[s - 1] and s - 1 not in want:
                slots[i] = 0
                si = si.with_slots(fam, tuple(slots))
                _write_info(st, sid, si)
        cur = si.hashed(fam)
        out_ = [n for n in cur if n not in want and fc[n]]
        in_ = [n for n in want if n not in cur]
        if not out_ and not in_:
            _trie_flag(st, sid, fam, fc)
            continue
        with sweeper_held(st):  # the copies come from a snapshot of the elements: keep it true
            _move(st, sid, fam, si, slots, out_, in_)
        _trie_flag(st, sid, fam, fc)


def _move(st: State, sid: int, fam: int, si: SetInfo, slots: list[int], out_: list[int], in_: list[int]) -> None:
    """Lengths ``out_`` leave the hash probes for the trie, ``in_`` come in."""
    els = list(_walk(st, fam, {sid}))
    tname = _FAM[fam][1]
    for n in out_:
        si = _to_trie(st, sid, fam, si, [k for k, _v in els if k[0] - 32 == n], short=False)
        slots[slots.index(n + 1)] = 0
        si = si.with_slots(fam, tuple(slots))
        _write_info(st, sid, si)
    moved: list[bytes] = []
    for n in in_:
        if 0 not in slots:
            break
        slots[slots.index(0)] = n + 1
        si = si.with_slots(fam, tuple(slots))
        _write_info(st, sid, si)
        moved += [k for k, _v in els if L.U32.unpack_from(k)[0] - 32 == n]
    if moved:
        grace_period(st)  # packets that read the old layout may still look in the trie
        delete_all(st.map(tname), moved)


def _trie_flag(st: State, sid: int, fam: int, fc: Sequence[int]) -> None:
    si = info(st, sid)
    hashed = si.hashed(fam)
    want = any(c for n, c in enumerate(fc) if n not in hashed)
    if si.trie(fam) and not want:
        _write_info(st, sid, si.with_trie(fam, False))


# ---- whole sets: stage, drain, recover -------------------------------------------


def stage(st: State, elements: Sequence[Element], state: IdState = IdState.STAGED, tally: Tally | None = None) -> int:
    """A new set id holding ``elements`` (committed at once: nothing refers to it yet);
    ``tally`` counts the elements as they are written."""
    sid = alloc(st, state)
    now = monotonic_ns()
    cnt = [0] * L.LEN_SLOTS
    by_fam: dict[int, dict[bytes, bytes]] = {4: {}, 6: {}}
    latest = 0
    for e in elements:
        p = e.prefix
        ttl = check_ttl(e.ttl)
        exp = now + ttl * 1_000_000_000 if ttl else 0
        latest = max(latest, exp)
        k = _key(p.family, sid, p)
        if k not in by_fam[p.family]:
            cnt[_FAM[p.family][3] + p.plen] += 1
        by_fam[p.family][k] = L.ELEM.pack(exp, 0, 1, 0)
    si = FREE_INFO._replace(state=state, epoch=1)
    for fam, items in by_fam.items():
        hname, tname, _kst, base, maxlen = _FAM[fam]
        m = st.map(hname)
        if len(items) + _map_total(st, fam) > m.spec.max_entries:
            raise MapFull(28, f"set elements: map {hname} is full ({m.spec.max_entries} per family): apply writes "
                              "each set beside the one it replaces, so the element maps need room for both "
                              "(attach --capacity N when the state is made)")
        hashed = plan_hashed(cnt[base : base + maxlen + 1], set())
        si = si.with_slots(fam, tuple(sorted(n + 1 for n in hashed)) + (0,) * (HASHED_MAX - len(hashed)))
        ks = list(items)
        for pos in range(0, len(ks), BATCH):
            chunk = ks[pos : pos + BATCH]
            write_all(m, chunk, [items[k] for k in chunk])
            if tally is not None:
                tally.step(len(chunk))
        to_trie = [k for k in ks if L.U32.unpack_from(k)[0] - 32 not in hashed]
        _guard(st, sid, fam, to_trie, 8, fresh=True)
        if to_trie:
            write_all(st.map(tname), to_trie, [k[:4] for k in to_trie])
            si = si.with_trie(fam, True)
    _write_counts(st, sid, cnt)
    _write_info(st, sid, si)
    if latest:
        _hint_sweeper(st, min(now + (check_ttl(e.ttl) or 0) * 1_000_000_000 for e in elements if e.ttl))
    return sid


def _trie_keys(st: State, fam: int, sids: set[int]) -> list[bytes]:
    """Keys of the trie of one family that belong to ``sids`` (a walk of the
    trie: LPM tries have no batch reads)."""
    return [k for k in st.map(_FAM[fam][1]) if L.U32.unpack_from(k, 4)[0] in sids]


def drain(st: State, sids: set[int]) -> None:
    """Remove every element (and trie copy) of ``sids`` and free the ids
    (nothing may refer to them)."""
    if not sids:
        return
    for sid in sids:
        _write_info(st, sid, info(st, sid)._replace(state=IdState.DRAINING))
    for fam in (4, 6):
        delete_all(st.map(_FAM[fam][1]), _trie_keys(st, fam, sids))
        keys = [k for k, _v in _walk(st, fam, sids)]
        if keys:
            delete_all(st.map(_FAM[fam][0]), keys)
    for sid in sids:
        _write_counts(st, sid, [0] * L.LEN_SLOTS)
        for fam in (4, 6):
            _guard(st, sid, fam, (), 0, fresh=True)
        _write_info(st, sid, FREE_INFO)


def normalize(st: State, sid: int) -> None:
    """Make set ``sid`` consistent after a writer died inside a change:
    undo uncommitted additions and removal marks, finish committed removals,
    count the elements anew, and rebuild the trie copies (dropping copies of
    hashed lengths and copies without an element). The sweeper is held
    meanwhile, so the count is exact."""
    with sweeper_held(st):
        si = info(st, sid)
        cnt = [0] * L.LEN_SLOTS
        for fam in (4, 6):
            hname, tname, _kst, base, _maxlen = _FAM[fam]
            m = st.map(hname)
            dead: list[bytes] = []
            keep: list[bytes] = []
            for k, v in _walk(st, fam, {sid}):
                expires, hits, born, until = L.ELEM.unpack(v)
                if born > si.epoch or (until and until <= si.epoch):
                    dead.append(k)
                    continue
                if until:
                    m.update(k, L.ELEM.pack(expires, hits, born, 0))
                keep.append(k)
                cnt[base + k[0] - 32] += 1
            delete_all(st.map(tname), dead)
            delete_all(m, dead)
            hashed = si.hashed(fam)
            t = st.map(tname)
            kept = set(keep)
            stale = [k for k in _trie_keys(st, fam, {sid}) if k[0] - 32 in hashed or k not in kept]
            delete_all(t, stale)
            si = _to_trie(st, sid, fam, si, [k for k in keep if k[0] - 32 not in hashed], short=False,
                          fresh_guard=True)
        _write_counts(st, sid, cnt)
    rebalance(st, sid)


def recover(st: State, rule_txn_live: int) -> None:
    """Finish or undo what a dead writer left (the journal names it), then
    settle set ids: an id a name uses is LIVE; any other id that is not FREE
    (staged by a dead apply, draining, made by a dead create) is drained.
    ``rule_txn_live``: the txn of the live config (an apply whose txn it
    carries has committed). Writes nothing when there is nothing to do."""
    op, txn, sid = st.journal()
    if op == JournalOp.SET and sid:
        normalize(st, sid)
    elif op == JournalOp.APPLY:
        finish_apply(st, committed=txn == rule_txn_live)
    # a destroy commits when it deletes the name: before that it is undone
    # (nothing else changed), after it the orphan scan below drains the id
    if op != JournalOp.NONE:
        st.journal_end()
    ctl = st.map("sweep_ctl").lookup(L.U32.pack(0))
    if ctl and L.SWEEP_CTL.unpack(ctl)[2]:
        _set_hold(st, 0)  # we hold the writers' lock: a hold left set is a dead writer's
    used = {v[0] for v in names(st).values() if v[0]}
    orphans = set()
    for s, si in all_info(st).items():
        if s in used and si.state != IdState.LIVE:
            _write_info(st, s, si._replace(state=IdState.LIVE))
        elif s not in used and si.state != IdState.FREE:
            orphans.add(s)
    if orphans:
        grace_period(st)  # a rule generation that named them may have been live moments ago
        drain(st, orphans)


def finish_apply(st: State, committed: bool) -> set[int]:
    """Settle the name table after an apply: roll forward (committed: the new
    ids become the names' ids) or back. Returns the ids to drain."""
    nm = st.map("set_names")
    old: set[int] = set()
    for name, (live, staged, pending) in names(st).items():
        if not pending:
            continue
        keep, drop = (staged, live) if committed else (live, staged)
        if drop == keep:  # a set the apply kept as it was
            drop = 0
        if keep:
            if committed:  # the id is LIVE before the name points at it alone
                _write_info(st, keep, info(st, keep)._replace(state=IdState.LIVE))
            nm.update(_name_key(name), L.SET_NAME_VAL.pack(keep, 0, 0, 0))
        else:
            nm.delete(_name_key(name))
        if drop:
            old.add(drop)
    return old


def mark_apply(st: State, new_ids: dict[str, int]) -> None:
    """Record in the name table what an apply will do at its switch."""
    nm = st.map("set_names")
    cur = names(st)
    for name, (live, _s, _p) in cur.items():
        if name not in new_ids:
            nm.update(_name_key(name), L.SET_NAME_VAL.pack(live, 0, 1, 0))
    for name, sid in new_ids.items():
        live = cur.get(name, (0, 0, 0))[0]
        nm.update(_name_key(name), L.SET_NAME_VAL.pack(live, sid, 1, 0))


def destroy(st: State, name: str) -> None:
    """Remove a set (the caller checked no rule uses it)."""
    sid = lookup_name(st, name)
    st.journal_begin(JournalOp.DESTROY, sid)
    st.map("set_names").delete(_name_key(parse_set_name(name)))  # from here on no rule can name it
    st.wait_recent_switch()  # a rule set live moments ago may still look into it
    drain(st, {sid})
    st.journal_end()


def flush(st: State, sid: int) -> int:
    """Remove every element of a set (all at once)."""
    now = monotonic_ns()
    epoch = info(st, sid).epoch
    present: list[Prefix] = []
    for fam in (4, 6):
        for k, v in _walk(st, fam, {sid}):
            if _visible(v, epoch, now):
                present.append(_key_prefix(fam, k)[1])
    return change(st, sid, remove=present, missing_ok=True).removed


def ttl_left(expires_in: float | None) -> int | None:
    """Whole seconds to write for a remaining time (rounded up; None: permanent)."""
    return None if expires_in is None else max(1, math.ceil(expires_in))
