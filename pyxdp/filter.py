"""The shipped firewall: its pinned state, its entries, policy, statistics,
tracing and replay, and attaching it to interfaces.

State lives in a pin directory on bpffs (default ``/sys/fs/bpf/pyxdp``).
Every change takes an exclusive ``flock`` on that directory, so concurrent
callers never interleave; readers take no lock."""

from __future__ import annotations

import errno
import fcntl
import os
import time

# _socket, not socket: socket.py builds its enums at import (3 ms a CLI call)
from _socket import AF_INET, AF_INET6, inet_ntop
from collections import Counter
from collections.abc import Iterable, Iterator

from . import layout as L
from ._record import TYPE_CHECKING, Record
from .bpf import BPFFS, BpfObject, Map, MapType, Program, RingBuffer, ensure_bpffs, is_bpffs, require_privileges
from .entries import MASKS4, MASKS6, Entry, Port, Prefix, parse_prefix
from .errors import AttachError, BpfError, IncompatibleMap, KeyNotFound, MapFull, NotLoaded, UsageError
from .layout import Action, Reason, Verdict
from .rules import DEFAULT_RULES, check_capacity, classes_per_gen

if TYPE_CHECKING:
    from typing import Any

    from .entries import Target
    from .rules import Rule
    from .ruleset import RuleSetSpec, RuleState, SetState

DEFAULT_PIN_DIR = "/sys/fs/bpf/pyxdp"
OBJECT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "xdp_filter.bpf.o")
PINNED_MAPS = ("cfg", "cfg_sel", "src4", "src6", "lpm4", "lpm6", "ports", "stats", "events", "ifaces", "lens_count",
               "rsets", "rlit4", "rlit6", "set4", "set6", "rvec", "rports", "riface", "rorder", "rhits", "rdefs",
               "set_names")
PREFIX_MAPS = ("src4", "src6", "lpm4", "lpm6")
ENOTSUPP = 524  # the kernel's own "no such operation for this map type" (not in errno)
NO_BATCH_ERRNOS = (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, ENOTSUPP)
RECENT_SWITCH_NS = 5_000_000_000  # a slot live less than this ago waits for an RCU grace period
SMALL_TABLE = 1024  # below this many entries in a family, any length may be hashed
SHARE_TO_HASH = 16  # above it, a hashed length must hold 1/16 of the family's entries
# family -> (hash map, trie map, first lens_count slot, longest prefix)
_FAMILIES = {4: ("src4", "lpm4", 0, 32), 6: ("src6", "lpm6", 33, 128)}
PROG_PIN = "prog"
DEFAULT_CAPACITY = 1 << 20


def monotonic_ns() -> int:
    """The datapath's clock for expiry (it reads CLOCK_MONOTONIC coarsely)."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


class Config(Record):
    """The knobs that change while running, and the prefix index's layout:
    which prefix lengths are hashed (longest first) and whether the LPM
    tries hold entries."""

    policy: Verdict = Verdict.PASS
    trace_every: int = 0
    lens4: tuple[int, ...] = ()
    lens6: tuple[int, ...] = ()
    trie4: bool = False
    trie6: bool = False
    rgen: int = 0  # the rule-set generation packets use
    nrules: int = 0  # rules in it

    def encode(self) -> bytes:
        out = [L.CONFIG_HEAD.pack(self.policy, self.trace_every, len(self.lens4), len(self.lens6),
                                  int(self.trie4), int(self.trie6), self.rgen, self.nrules)]
        out += [L.LEN4.pack(n, MASKS4[n]) for n in self.lens4]
        out.append(b"\0" * (L.LEN4.size * (L.LENS4_SLOTS - len(self.lens4))))
        out += [L.LEN6.pack(n, MASKS6[n]) for n in self.lens6]
        out.append(b"\0" * (L.LEN6.size * (L.LENS6_SLOTS - len(self.lens6))))
        return b"".join(out)

    @classmethod
    def decode(cls, raw: bytes) -> Config:
        policy, every, n4, n6, trie4, trie6, rgen, nrules = L.CONFIG_HEAD.unpack_from(raw)
        off4 = L.CONFIG_HEAD.size
        off6 = off4 + L.LEN4.size * L.LENS4_SLOTS
        lens4 = tuple(L.LEN4.unpack_from(raw, off4 + i * L.LEN4.size)[0] for i in range(min(n4, L.LENS4_SLOTS)))
        lens6 = tuple(L.LEN6.unpack_from(raw, off6 + i * L.LEN6.size)[0] for i in range(min(n6, L.LENS6_SLOTS)))
        return cls(Verdict(policy & 1), every, lens4, lens6, bool(trie4), bool(trie6), rgen & 1, nrules)

    def hashed(self, family: int) -> tuple[int, ...]:
        return self.lens4 if family == 4 else self.lens6

    def with_index(self, family: int, hashed: Iterable[int], trie: bool) -> Config:
        lens = tuple(sorted(set(hashed), reverse=True))
        if family == 4:
            return self._replace(lens4=lens, trie4=trie)
        return self._replace(lens6=lens, trie6=trie)


class EntryState(Record):
    """An entry as the maps hold it now."""

    target: Target
    action: Action
    hits: int
    expires_in: float | None  # seconds left; None: never; <= 0: expired, not yet swept

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"action": self.action.name.lower(), "hits": self.hits}
        if isinstance(self.target, Prefix):
            d["prefix"] = str(self.target)
        else:
            d["port"] = self.target.port
            d["proto"] = self.target.proto
        d["expires_in"] = None if self.expires_in is None else round(self.expires_in, 3)
        return d


class StatLine(Record):
    verdict: Verdict
    reason: Reason
    packets: int
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict.label, "reason": self.reason.label, "packets": self.packets,
                "bytes": self.bytes}


class Stats(Record):
    lines: tuple[StatLine, ...]
    lost_events: int

    def get(self, verdict: Verdict, reason: Reason) -> StatLine:
        for ln in self.lines:
            if ln.verdict == verdict and ln.reason == reason:
                return ln
        return StatLine(verdict, reason, 0, 0)

    def total(self, verdict: Verdict) -> int:
        return sum(ln.packets for ln in self.lines if ln.verdict == verdict)


_PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6"}


class Event(Record):
    """One traced packet, as the datapath decided it."""

    ts_ns: int
    ifindex: int
    pkt_len: int
    verdict: Verdict
    reason: Reason
    family: int
    proto: int
    sport: int
    dport: int
    src: str
    dst: str
    plen: int
    vlans: int
    fragment: int
    ethertype: int
    rule: int = 0  # number (1-based position) of the rule that decided, 0: none
    rule_id: int = -1  # that rule's stable id

    @classmethod
    def decode(cls, raw: bytes) -> Event:
        (ts, ifindex, plen_b, verdict, reason, family, proto, sport, dport, src, dst, plen, vlans, frag, _pad,
         ethertype, rule, rule_id, _pad2) = L.EVENT.unpack_from(raw)
        if family == 4:
            s, d = inet_ntop(AF_INET, src[:4]), inet_ntop(AF_INET, dst[:4])
        elif family == 6:
            s, d = inet_ntop(AF_INET6, src), inet_ntop(AF_INET6, dst)
        else:
            s = d = ""
        return cls(ts, ifindex, plen_b, Verdict(verdict), Reason(reason), family, proto, sport, dport, s, d,
                   plen, vlans, frag, ethertype, rule, rule_id - 1)

    @property
    def proto_name(self) -> str:
        if not self.family:
            return "arp" if self.ethertype == 0x0806 else f"ether-0x{self.ethertype:04x}"
        return _PROTO_NAMES.get(self.proto, str(self.proto))

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict.label,
            "reason": self.reason.label,
            "src": self.src,
            "dst": self.dst,
            "proto": self.proto_name,
            "sport": self.sport,
            "dport": self.dport,
            "ifindex": self.ifindex,
            "len": self.pkt_len,
            "prefix_len": self.plen if self.reason in (Reason.SRC_ALLOW, Reason.SRC_DENY) else None,
            "vlans": self.vlans,
            "fragment": ("", "first", "later")[self.fragment] or None,
            "rule": self.rule or None,
            "ts_ns": self.ts_ns,
        }

    @property
    def flow(self) -> str:
        """``udp 192.0.2.1 -> 198.51.100.1 40000 -> 53``"""
        where = f"{self.src} -> {self.dst}" if self.family else "-"
        ports = f" {self.sport} -> {self.dport}" if self.proto in (6, 17) else ""
        if self.proto in (1, 58):
            ports = f" type {self.sport} code {self.dport}"
        return f"{self.proto_name} {where}{ports}"

    def __str__(self) -> str:
        rule = f" (rule {self.rule})" if self.rule else ""
        return f"{self.verdict.label:4} {self.reason.label:10} if{self.ifindex} {self.flow}{rule}"


class Attachment(Record):
    ifname: str
    ifindex: int
    netns: str | None
    mode: str
    prog_id: int
    attached: bool  # the interface still runs the recorded program

    def to_dict(self) -> dict[str, Any]:
        return {"ifname": self.ifname, "ifindex": self.ifindex, "netns": self.netns, "mode": self.mode,
                "prog_id": self.prog_id, "attached": self.attached}


def _iface_key(ifindex: int, netns: str | None) -> bytes:
    return L.IFACE_KEY.pack(ifindex, (netns or "").encode())


def _prefix_key(p: Prefix) -> bytes:
    return (L.KEY4 if p.family == 4 else L.KEY6).pack(p.plen, p.addr)



class _DirLock:
    """An exclusive flock on the pin directory (released with the fd)."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def release(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)




class Filter:
    """Handle on the filter state in one pin directory. Open it with
    :meth:`open` (or :meth:`create`), use it as a context manager."""

    def __init__(self, pin_dir: str, maps: dict[str, Map], lock: _DirLock | None) -> None:
        self.pin_dir = pin_dir
        self._maps = maps
        self._lock = lock
        self.created = False  # this handle made the state: a failure removes it again

    # ---- opening and state --------------------------------------------------

    @classmethod
    def open(cls, pin_dir: str = DEFAULT_PIN_DIR, *, create: bool = False, lock: bool = True,
             capacity: int | None = None, with_program: bool = False, rules: int | None = None) -> Filter:
        """Open the state in ``pin_dir``. ``create`` makes it when missing
        (mounting bpffs if needed); ``lock`` holds the directory's lock until
        :meth:`close` (take it for any change). ``with_program``: when the
        state is made now, load and pin the program in the same object load
        (what attach wants; one load instead of two). ``rules``: the rule
        capacity of new state (a multiple of 64, at most 8,192; default 1,024)."""
        require_privileges()
        pin_dir = os.path.abspath(pin_dir)
        made_dir = False
        had_cfg = os.path.exists(os.path.join(pin_dir, "cfg"))
        if create and not had_cfg:
            made_dir = _prepare_dir(pin_dir)
        elif not os.path.exists(os.path.join(pin_dir, "cfg")):
            raise NotLoaded(f"no pyxdp filter state in {pin_dir} (run 'pyxdp-load attach IFACE' first)")
        lk = _DirLock(pin_dir) if lock or create else None
        try:
            if create:
                _create_maps(pin_dir, capacity, with_program, rules)
            created = create and (made_dir or not had_cfg)
            missing = [n for n in PINNED_MAPS if not os.path.exists(os.path.join(pin_dir, n))]
            if missing:
                raise NotLoaded(f"incomplete pyxdp state in {pin_dir}: no {', '.join(missing)}")
            flt = cls(pin_dir, {}, lk)
            flt.created = created
            for what, want, have in (("prefix capacity", capacity, flt.capacity),
                                     ("rule capacity", rules, flt.rule_capacity)):
                if create and want is not None and have != want:
                    flt.close()
                    raise IncompatibleMap(
                        f"state in {pin_dir} has {what} {have}, not {want}; "
                        "detach everywhere (without --keep) to change it"
                    )
            if not lock and lk is not None:
                lk.release()
                flt._lock = None
            return flt
        except BaseException:
            if lk is not None:
                lk.release()
            if made_dir:
                _remove_pins(pin_dir)
            raise

    def close(self) -> None:
        for m in self._maps.values():
            m.close()
        self._maps = {}
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> Filter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None and self.created and self._lock is not None:
            self.remove_state()  # nothing half-made stays behind
        self.close()

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
        return self.map("src4").spec.max_entries

    @property
    def rule_capacity(self) -> int:
        return self.map("rvec").spec.value_size * 8

    def _require_lock(self) -> None:
        if self._lock is None:
            raise UsageError("this Filter was opened read-only (lock=False)")

    # ---- config ---------------------------------------------------------------

    def _selector(self) -> tuple[int, int]:
        """(live config slot, CLOCK_MONOTONIC ns of the last switch)."""
        raw = self.map("cfg_sel").lookup(L.U32.pack(0))
        if not raw:
            return 0, 0
        live, _pad, switched = L.SELECTOR.unpack(raw)
        return live & 1, switched

    def _sel(self) -> int:
        return self._selector()[0]

    def config(self) -> Config:
        raw = self.map("cfg").lookup(L.U32.pack(self._sel()))
        return Config.decode(raw) if raw else Config()

    def _write_config(self, cfg: Config) -> None:
        """Write the idle generation, then switch: a packet sees all of the old
        config or all of the new one."""
        live, switched = self._selector()
        if monotonic_ns() - switched < RECENT_SWITCH_NS:
            # the idle slot was live moments ago: a packet may still be reading it
            _rcu_grace_period()
        nxt = live ^ 1
        self.map("cfg").update(L.U32.pack(nxt), cfg.encode())
        self.map("cfg_sel").update(L.U32.pack(0), L.SELECTOR.pack(nxt, 0, monotonic_ns()))

    @property
    def policy(self) -> Verdict:
        return self.config().policy

    def set_policy(self, policy: Verdict) -> None:
        self._require_lock()
        cur = self.config()
        self._write_config(cur._replace(policy=policy))

    def set_trace(self, every: int) -> None:
        """Trace one packet in ``every`` (0 turns tracing off)."""
        if every < 0:
            raise UsageError("trace sampling must be 0 (off) or a positive number")
        cur = self.config()
        self._write_config(cur._replace(trace_every=every))

    def _len_counts(self) -> list[int]:
        counts = [0] * (33 + 129)
        for k, v in self.map("lens_count").items():
            counts[L.U32.unpack(k)[0]] = int.from_bytes(v[:8], "little")
        return counts

    def _apply_counts(self, delta: Counter[int], hashed: dict[int, list[int]] | None = None) -> None:
        """Add ``delta`` (slot -> change) to the per-length counts, write the
        index layout (``hashed`` overrides the hashed lengths of a family),
        then rebalance."""
        counts = self._len_counts()
        m = self.map("lens_count")
        for slot, d in delta.items():
            if d:
                counts[slot] = max(0, counts[slot] + d)
                m.update(L.U32.pack(slot), counts[slot].to_bytes(8, "little"))
        cur = self.config()
        cfg = cur
        for fam, (_h, _t, base, maxlen) in _FAMILIES.items():
            lens = [n for n in (hashed or {}).get(fam, cfg.hashed(fam)) if counts[base + n]]
            trie = any(counts[base + n] for n in range(maxlen + 1) if n not in lens)
            cfg = cfg.with_index(fam, lens, trie)
        if cfg != cur:
            self._write_config(cfg)
        self._rebalance(counts)

    def _rebalance(self, counts: list[int]) -> None:
        """Decide which prefix lengths are hashed. A hashed length costs one
        probe per packet; the trie costs one lookup per packet as soon as it
        holds anything. So: when every trie length fits in the free hash
        slots, move them all and leave the trie empty; otherwise hash only
        lengths that earn their probe (at least 1/16 of the family's entries,
        or any length while the family has fewer than 1,024 entries), most
        populous first, swapping when a trie length holds more than twice the
        entries of the smallest hashed one (the margin stops flapping)."""
        for fam in _FAMILIES:
            try:
                self._rebalance_family(fam, counts)
            except _MoveSkipped:
                pass  # an optimisation only: the index is valid as it stands

    def _rebalance_family(self, fam: int, counts: list[int]) -> None:
        _h, _t, base, maxlen = _FAMILIES[fam]
        total = sum(counts[base : base + maxlen + 1])

        def earns(n: int, total: int = total, base: int = base) -> bool:
            return total < SMALL_TABLE or counts[base + n] * SHARE_TO_HASH >= total

        for _ in range(4 * L.HASHED_MAX):  # each step moves toward the fixed point; bounded anyway
            hashed = list(self.config().hashed(fam))
            in_trie = {n: counts[base + n] for n in range(maxlen + 1) if counts[base + n] and n not in hashed}
            free = L.HASHED_MAX - len(hashed)
            if not in_trie:
                break
            if len(in_trie) <= free:
                for n in in_trie:
                    self._move(fam, n, to_hash=True, counts=counts)
                break
            weak = [n for n in hashed if not earns(n)]
            if weak:
                self._move(fam, min(weak, key=lambda n: (counts[base + n], -n)), to_hash=False, counts=counts)
                continue
            best = max(in_trie, key=lambda n: (in_trie[n], n))
            if not earns(best):
                break
            if free:
                self._move(fam, best, to_hash=True, counts=counts)
                continue
            worst = min(hashed, key=lambda n: (counts[base + n], -n))
            if in_trie[best] <= 2 * counts[base + worst]:
                break
            self._move(fam, worst, to_hash=False, counts=counts)
            self._move(fam, best, to_hash=True, counts=counts)

    def _move(self, fam: int, plen: int, to_hash: bool, counts: list[int]) -> None:
        """Move every entry of one prefix length between the hash and the trie.
        Copy, switch the config, then delete: a packet finds each entry in one
        place or the other throughout (hits counted during the move may be
        lost)."""
        hname, tname, base, maxlen = _FAMILIES[fam]
        src, dst = (self.map(tname), self.map(hname)) if to_hash else (self.map(hname), self.map(tname))
        cfg = self.config()
        in_hash = sum(counts[base + n] for n in cfg.hashed(fam))
        held = in_hash if to_hash else sum(counts[base : base + maxlen + 1]) - in_hash
        if held + counts[base + plen] > dst.spec.max_entries:
            raise _MoveSkipped(f"map {dst.name} has no room to take /{plen}")
        items = [(k, v) for k, v in src.items() if _key_plen(k) == plen]
        keys = [k for k, _v in items]
        try:
            _write_all(dst, keys, [v for _k, v in items])
        except BpfError as exc:
            _delete_present(dst, keys)  # the config still says src: take the partial copy back
            raise _MoveSkipped(str(exc)) from None
        hashed = [n for n in cfg.hashed(fam) if n != plen] + ([plen] if to_hash else [])
        trie = any(counts[base + n] for n in range(maxlen + 1) if n not in hashed)
        self._write_config(cfg.with_index(fam, hashed, trie))
        # Packets that read the old config may still look in src: wait them
        # out, then delete. From here on the old copies must go (a copy left
        # in the trie would shadow the hash), so failures are not skipped.
        _rcu_grace_period()
        try:
            _delete_all(src, keys)
        except BpfError:
            for k in keys:
                try:
                    src.delete(k)
                except KeyNotFound:
                    pass

    # ---- entries --------------------------------------------------------------

    def allow(self, *targets: str | Target, ttl: int | None = None) -> None:
        self.add([Entry(_target(t), Action.ALLOW, ttl) for t in targets])

    def deny(self, *targets: str | Target, ttl: int | None = None) -> None:
        self.add([Entry(_target(t), Action.DENY, ttl) for t in targets])

    def add(self, entries: Iterable[Entry]) -> int:
        """Add or replace entries, all or nothing. Returns how many."""
        return self._add(entries)

    def add_targets(self, targets: Iterable[Target], action: Action, ttl: int | None = None) -> int:
        """Like :meth:`add` for many targets with one action and ttl (a
        million prefixes from a file go in without an Entry each)."""
        return self._add((t, action, ttl) for t in targets)

    def _add(self, entries: Iterable[tuple[Target, Action, int | None]]) -> int:
        with _signals_deferred():
            return self._add_now(entries)

    def _add_now(self, entries: Iterable[tuple[Target, Action, int | None]]) -> int:
        self._require_lock()
        now = monotonic_ns()
        # family -> prefix length -> key -> value
        prefixes: dict[int, dict[int, dict[bytes, bytes]]] = {4: {}, 6: {}}
        ports: dict[bytes, bytes] = {}
        values: dict[tuple[int, int, int], bytes] = {}
        n = 0
        for t, action, ttl in entries:
            n += 1
            if action is not Action.ALLOW and action is not Action.DENY:
                raise UsageError(f"entry {t}: action must be allow or deny")
            expires = now + ttl * 1_000_000_000 if ttl else 0
            if type(t) is Prefix or isinstance(t, Prefix):
                plen = t.plen
                v = values.get((expires, action, plen))
                if v is None:
                    v = values[(expires, action, plen)] = L.ENTRY.pack(expires, 0, action, plen)
                group = prefixes[t.family].get(plen)
                if group is None:
                    group = prefixes[t.family][plen] = {}
                group[(L.KEY4 if t.family == 4 else L.KEY6).pack(plen, t.addr)] = v
            else:
                ports[L.U32.pack(t.slot)] = L.ENTRY.pack(expires, 0, action, 0)
        done: list[tuple[Map, list[bytes], dict[bytes, bytes]]] = []
        hashed: dict[int, list[int]] = {}
        delta: Counter[int] = Counter()
        try:
            if prefixes[4] or prefixes[6]:
                counts = self._len_counts()
                cfg = self.config()
                for fam, groups in prefixes.items():
                    if not groups:
                        continue
                    hname, tname, base, maxlen = _FAMILIES[fam]
                    lens = list(cfg.hashed(fam))
                    held_hash = sum(counts[base + n] for n in lens)
                    held_trie = sum(counts[base : base + maxlen + 1]) - held_hash
                    room = self.map(hname).spec.max_entries - held_hash
                    for plen in sorted(groups, reverse=True):
                        if (plen not in lens and not counts[base + plen] and len(lens) < L.HASHED_MAX
                                and len(groups[plen]) <= room):
                            lens.append(plen)  # a new length takes a free hash slot
                            room -= len(groups[plen])
                    hashed[fam] = lens
                    for name, held, want_hashed in ((hname, held_hash, True), (tname, held_trie, False)):
                        part: dict[bytes, bytes] = {}
                        for plen, group in groups.items():
                            if (plen in lens) == want_hashed:
                                part.update(group)
                                delta[base + plen] += len(group)
                        if part:
                            m = self.map(name)
                            new, old = _insert(m, part, held)
                            done.append((m, new, old))
                            delta.subtract(base + _key_plen(k) for k in old)  # replaced, not added
            if ports:
                m = self.map("ports")
                old_ports = {k: m[k] for k in ports}
                done.append((m, [], old_ports))
                for k, v in ports.items():
                    m.update(k, v)
        except BaseException:
            for m, new, old in reversed(done):
                _rollback(m, new, old)
            raise
        if delta or hashed:
            self._apply_counts(delta, hashed)
        return n

    def delete(self, targets: Iterable[Target], action: Action = Action.NONE) -> int:
        """Delete entries, all or nothing: every target must exist (and have
        ``action``, unless it is NONE). Returns how many."""
        with _signals_deferred():
            return self._delete_now(targets, action)

    def _delete_now(self, targets: Iterable[Target], action: Action) -> int:
        self._require_lock()
        cfg = self.config()
        plan: list[tuple[Map, bytes, bytes]] = []
        for t in dict.fromkeys(targets):  # each once, in order
            m, key = self._locate(t, cfg)
            raw = _exact(m, key)
            cur = L.ENTRY.unpack(raw)[2] if raw else Action.NONE
            if cur == Action.NONE:
                raise UsageError(f"no entry for {t}")
            if action != Action.NONE and cur != action:
                raise UsageError(f"{t} is an {Action(cur).name.lower()} entry, not {action.name.lower()}")
            assert raw is not None
            plan.append((m, key, raw))
        delta: Counter[int] = Counter()
        gone: list[tuple[Map, bytes, bytes]] = []
        try:
            for m, key, raw in plan:
                if m.name == "ports":
                    m.update(key, L.ENTRY.pack(0, 0, 0, 0))
                else:
                    m.delete(key)
                    delta[(0 if m.name in ("src4", "lpm4") else 33) + _key_plen(key)] -= 1
                gone.append((m, key, raw))
        except BaseException:
            for m, key, raw in reversed(gone):
                m.update(key, raw)
            raise
        if delta:
            self._apply_counts(delta)
        return len(plan)

    def _locate(self, t: Target, cfg: Config) -> tuple[Map, bytes]:
        if isinstance(t, Prefix):
            hname, tname, _base, _maxlen = _FAMILIES[t.family]
            return self.map(hname if t.plen in cfg.hashed(t.family) else tname), _prefix_key(t)
        return self.map("ports"), L.U32.pack(t.slot)

    def entries(self) -> list[EntryState]:
        """Every entry with its hits and time left, prefixes first."""
        now = monotonic_ns()
        out: list[EntryState] = []
        for fam, (hname, tname, _base, _maxlen) in _FAMILIES.items():
            kst = L.KEY4 if fam == 4 else L.KEY6
            for name in (hname, tname):
                for k, v in self.map(name).items():
                    plen, addr = kst.unpack(k)
                    out.append(_state(Prefix(fam, addr, plen), v, now))
        for k, v in self.map("ports").items():
            if L.ENTRY.unpack_from(v)[2] == Action.NONE:
                continue
            idx = L.U32.unpack(k)[0]
            out.append(_state(Port("udp" if idx >= 65536 else "tcp", idx & 0xFFFF), v, now))
        out.sort(key=lambda s: (s.target.kind == "port", getattr(s.target, "family", 0), s.target))
        return out

    def sweep(self) -> int:
        """Remove expired entries (the datapath already ignores them)."""
        self._require_lock()
        expired = [s.target for s in self.entries() if s.expires_in is not None and s.expires_in <= 0]
        return self.delete(expired) if expired else 0

    # ---- ordered rules and sets (pyxdp.ruleset does the work) ----------------

    def rules(self) -> list[RuleState]:
        """The live rules in order, with their hit counters."""
        from .ruleset import rule_states

        return rule_states(self)

    def add_rule(self, rule: str | Rule, position: int | None = None) -> int:
        """Append ``rule`` (or insert it before 1-based ``position``); returns
        its number. The rule set switches atomically."""
        from .rules import parse_rule
        from .ruleset import add_rule

        with _signals_deferred():
            return add_rule(self, parse_rule(rule) if isinstance(rule, str) else rule, position)

    def delete_rules(self, which: Iterable[int | str | Rule]) -> int:
        """Delete rules by number or text, all or nothing."""
        from .rules import parse_rule
        from .ruleset import delete_rules

        with _signals_deferred():
            return delete_rules(self, [parse_rule(w) if isinstance(w, str) else w for w in which])

    def replace_rules(self, rules: Iterable[str | Rule]) -> None:
        """Make ``rules`` the whole rule list in one switch (sets unchanged)."""
        from .rules import parse_rule
        from .ruleset import install

        with _signals_deferred():
            install(self, [parse_rule(r) if isinstance(r, str) else r for r in rules])

    def apply(self, spec: RuleSetSpec) -> None:
        """Replace rules, sets and (when the spec names it) the policy in one switch."""
        from .ruleset import apply

        with _signals_deferred():
            apply(self, spec)

    def ruleset(self) -> RuleSetSpec:
        """The running rules, sets and policy (``save`` writes this)."""
        from .ruleset import snapshot

        return snapshot(self)

    def sets(self) -> list[SetState]:
        from .ruleset import set_table

        return list(set_table(self).values())

    def set_members(self, name: str) -> list[Prefix]:
        from .ruleset import set_members

        return set_members(self, name)

    def set_add(self, name: str, prefixes: Iterable[str | Prefix]) -> int:
        """Add prefixes to a set (made when missing), all or nothing; returns how many were new."""
        from .ruleset import set_add

        with _signals_deferred():
            return set_add(self, name, (_prefix(p) for p in prefixes))

    def set_remove(self, name: str, prefixes: Iterable[str | Prefix]) -> int:
        from .ruleset import set_remove

        with _signals_deferred():
            return set_remove(self, name, [_prefix(p) for p in prefixes])

    def set_destroy(self, name: str) -> None:
        """Remove a set no rule uses."""
        from .ruleset import set_destroy

        with _signals_deferred():
            set_destroy(self, name)

    # ---- statistics and tracing ---------------------------------------------

    def stats(self) -> Stats:
        lines = []
        lost = 0
        for k, v in self.map("stats").items():
            slot = L.U32.unpack(k)[0]
            pk = by = 0
            for off in range(0, len(v), L.COUNTER.size):
                p, b = L.COUNTER.unpack_from(v, off)
                pk += p
                by += b
            if slot == L.LOST_SLOT:
                lost = pk
            elif slot < L.LOST_SLOT and pk:
                lines.append(StatLine(Verdict(slot & 1), Reason(slot >> 1), pk, by))
        return Stats(tuple(lines), lost)

    def trace(self, every: int = 1) -> Tracer:
        """Stream events (``with flt.trace() as t: for ev in t: ...``)."""
        return Tracer(self, every)

    # ---- program and interfaces -----------------------------------------------

    def program(self, reload: bool = False) -> Program:
        """The filter program pinned in this state, loaded and pinned first
        when missing (or when ``reload``)."""
        path = os.path.join(self.pin_dir, PROG_PIN)
        if not reload and os.path.exists(path):
            return Program.from_pin(path)
        self._require_lock()
        prog = self._load_program()
        _pin_program(prog, self.pin_dir)
        return prog

    def _load_program(self) -> Program:
        """A fresh instance of the filter program on this state's maps (unpinned)."""
        with _open_object(self.pin_dir, None) as obj:
            obj.load()
            return obj.program("xdp_filter")

    def attach(self, ifname: str, mode: Any = None, netns: str | None = None, force: bool = False,
               reload: bool = False) -> Attachment:
        """Attach the filter to ``ifname`` (in ``netns``). Replaces our own
        program atomically; refuses another program unless ``force``."""
        from .xdp import Netlink, XdpMode

        self._require_lock()
        mode = mode or XdpMode.AUTO
        with Netlink(netns) as nl:
            st = nl.state(ifname)
            fresh = reload or not os.path.exists(os.path.join(self.pin_dir, PROG_PIN))
            prog = self._load_program() if fresh else self.program()
            try:
                rec = self._ifaces().get((netns, st.ifindex))
                if st.prog_id == prog.id:
                    used = st.mode
                elif st.prog_id:
                    ours = rec is not None and rec.prog_id == st.prog_id
                    if not ours and not force:
                        other = _prog_name(st.prog_id)
                        raise AttachError(
                            errno.EBUSY,
                            f"{ifname} already runs XDP program {st.prog_id} ({other}), not this pyxdp filter; "
                            "--force replaces it",
                        )
                    with Program.from_id(st.prog_id) as old:
                        want = st.mode if mode is XdpMode.AUTO else mode
                        used = nl.attach(ifname, prog.fd, want or XdpMode.AUTO, replace_fd=old.fd)
                else:
                    used = nl.attach(ifname, prog.fd, mode, force=force)
                assert used is not None
                if fresh:
                    _pin_program(prog, self.pin_dir)  # only once it runs: a failed attach changes nothing
                self.map("ifaces").update(
                    _iface_key(st.ifindex, netns), L.IFACE_VAL.pack(ifname.encode(), _MODES.index(used.value), prog.id)
                )
                self._refresh_iface_rules()
                return Attachment(ifname, st.ifindex, netns, used.value, prog.id, True)
            finally:
                prog.close()

    def detach(self, ifname: str, netns: str | None = None, keep: bool = False) -> bool:
        """Take the filter off ``ifname``. When no interface is left, the pin
        directory is removed unless ``keep``. Returns True if it was removed."""
        from .xdp import Netlink

        self._require_lock()
        where = f" in netns {netns}" if netns else ""
        by_name = {k: a for k, a in self._ifaces().items() if k[0] == netns and a.ifname == ifname}
        try:
            with Netlink(netns) as nl:
                st = nl.state(ifname)
                rec = self._ifaces().get((netns, st.ifindex))
                if rec is not None and st.prog_id == rec.prog_id and st.mode is not None:
                    with Program.from_id(st.prog_id) as old:
                        nl.detach(ifname, st.mode, expected_fd=old.fd)
                gone = [(netns, st.ifindex)] if rec is not None else list(by_name)
        except UsageError:
            if not by_name:  # no such interface, and no record of one by that name
                raise
            for (ns, idx), rec in by_name.items():  # renamed, or really gone?
                try:
                    with Netlink(ns) as nl:
                        now = nl.state_by_index(idx)
                except UsageError:
                    now = None  # its namespace is gone
                if now is not None and now.prog_id == rec.prog_id:
                    raise UsageError(f"{ifname}{where} was renamed to {now.ifname} (ifindex {idx}), which still "
                                     f"runs this filter: detach {now.ifname}") from None
            gone = list(by_name)  # the interface (or its namespace) is gone, and its program with it
        if not gone:
            raise UsageError(f"pyxdp is not attached to {ifname}{where} (see 'pyxdp-load status')")
        for ns, idx in gone:
            self.map("ifaces").delete(_iface_key(idx, ns))
        if not keep and not self._ifaces():
            self.remove_state()
            return True
        self._refresh_iface_rules()
        return False

    def _refresh_iface_rules(self) -> None:
        """Rules that name an interface match by ifindex: recompute them when
        the attached interfaces change."""
        from .ruleset import install, live_rules

        live = live_rules(self)
        if any(r.iface for _id, r in live):
            install(self, [r for _id, r in live], live=live)

    def _ifaces(self) -> dict[tuple[str | None, int], Attachment]:
        out = {}
        for k, v in self.map("ifaces").items():
            idx, ns = L.IFACE_KEY.unpack(k)
            name, mode, pid = L.IFACE_VAL.unpack(v)
            netns = ns.rstrip(b"\0").decode() or None
            out[(netns, idx)] = Attachment(name.rstrip(b"\0").decode(), idx, netns, _MODES[mode], pid, True)
        return out

    def interfaces(self) -> list[Attachment]:
        """Recorded attachments, each checked against what the kernel runs."""
        from .xdp import Netlink

        out = []
        for (netns, _idx), a in sorted(self._ifaces().items(), key=lambda kv: (kv[0][0] or "", kv[0][1])):
            try:
                with Netlink(netns) as nl:
                    st = nl.state(a.ifname)
                live = st.prog_id == a.prog_id and st.ifindex == a.ifindex
            except (UsageError, AttachError):
                live = False
            out.append(Attachment(a.ifname, a.ifindex, netns, a.mode, a.prog_id, live))
        return out

    def remove_state(self) -> None:
        """Unpin everything and remove the pin directory."""
        self._require_lock()
        for m in self._maps.values():
            m.close()
        self._maps = {}
        _remove_pins(self.pin_dir)

    # ---- replay ---------------------------------------------------------------

    def replay(self, packets: Iterable[bytes]) -> Iterator[ReplayResult]:
        """Run each packet through BPF_PROG_TEST_RUN on a private instance of
        the filter that shares this state's rules (see :class:`Tester`)."""
        with self.tester() as t:
            for i, pkt in enumerate(packets, 1):
                yield t.run(pkt, i)

    def tester(self) -> Tester:
        return Tester(self.pin_dir)


XDP_SHORT = -1  # replay: frame shorter than Ethernet, the kernel refuses to run it


class ReplayResult(Record):
    number: int
    length: int
    verdict: Verdict
    reason: Reason
    event: Event | None
    retval: int

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"packet": self.number, "len": self.length}
        if self.event:
            d.update(self.event.to_dict())
            for k in ("ts_ns", "ifindex", "len"):
                d.pop(k, None)
        d["verdict"] = self.verdict.label
        d["reason"] = self.reason.label
        return d


class Tester:
    """A private instance of the filter program for BPF_PROG_TEST_RUN: it
    reads this state's rules and policy, but has its own counters and trace
    ring, traces every packet (so each result has its reason) and leaves the
    live hit counters alone. Needs no interface attached."""

    def __init__(self, pin_dir: str) -> None:
        # an event for every packet (its reason), live hit counters left alone
        self._obj = _open_object(pin_dir, None, trace_all=True, count_hits=False)
        try:
            self._obj.private_map("stats")
            self._obj.private_map("events")
            self._obj.load()
            self.program = self._obj.program("xdp_filter")
            self._got: list[bytes] = []
            self._ring = self._obj.map("events")
            try:
                self._rb = RingBuffer(self._ring, self._got.append)
            except BaseException:
                self._ring.close()
                raise
        except BaseException:
            if hasattr(self, "program"):
                self.program.close()
            self._obj.close()
            raise

    def run(self, pkt: bytes, index: int = 0) -> ReplayResult:
        if len(pkt) < 14:  # the kernel refuses to run XDP on less than an Ethernet header
            return ReplayResult(index, len(pkt), Verdict.DROP, Reason.MALFORMED, None, XDP_SHORT)
        res = self.program.test_run(pkt)
        self._got.clear()
        self._rb.poll(0)
        ev = Event.decode(self._got[-1]) if self._got else None
        verdict = Verdict.DROP if res.retval == L.XDP_DROP else Verdict.PASS
        reason = ev.reason if ev else Reason.POLICY
        return ReplayResult(index, len(pkt), verdict, reason, ev, res.retval)

    def close(self) -> None:
        self._rb.close()
        self._ring.close()
        self.program.close()
        self._obj.close()

    def __enter__(self) -> Tester:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Tracer:
    """Turns tracing on while open and yields :class:`Event` objects. One
    tracer at a time per state: a ring buffer has one reader."""

    def __init__(self, flt: Filter, every: int) -> None:
        if every < 1:
            raise UsageError("sample must be 1 (every packet) or more")
        self._flt = flt
        self._every = every
        self._queue: list[bytes] = []
        self._rb: RingBuffer | None = None
        self._lost0 = 0

    def _set(self, every: int) -> None:
        if self._flt._lock is not None:
            self._flt.set_trace(every)
            return
        lk = _DirLock(self._flt.pin_dir)
        try:
            self._flt.set_trace(every)
        finally:
            lk.release()

    def __enter__(self) -> Tracer:
        self._rb = RingBuffer(self._flt.map("events"), self._queue.append)
        try:
            self._rb.poll(0)  # events left from an earlier tracer
            self._queue.clear()
            self._lost0 = self._flt.stats().lost_events
            self._set(self._every)
        except BaseException:
            self._rb.close()
            self._rb = None
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._rb is not None:
            try:
                self._set(0)
            finally:
                self._rb.close()
                self._rb = None

    @property
    def lost(self) -> int:
        """Events the datapath could not queue since this tracer started."""
        return self._flt.stats().lost_events - self._lost0

    def poll(self, timeout_ms: int = 100) -> list[Event]:
        """Events that arrived within ``timeout_ms``."""
        if self._rb is None:
            raise UsageError("tracer is not open")
        self._rb.poll(timeout_ms)
        out = [Event.decode(r) for r in self._queue]
        self._queue.clear()
        return out

    def __iter__(self) -> Iterator[Event]:
        while self._rb is not None:
            yield from self.poll(200)


_MODES = ("auto", "native", "generic", "offload")


def _target(t: str | Target) -> Target:
    if isinstance(t, (Prefix, Port)):
        return t
    from .entries import parse_port, parse_prefix

    if "/" in t and t.split("/", 1)[1] in ("tcp", "udp") or t.isdigit():
        ports = parse_port(t)
        if len(ports) != 1:
            raise UsageError(f"{t}: give the protocol (22/tcp) when passing ports one by one")
        return ports[0]
    return parse_prefix(t)


def _prefix(p: str | Prefix) -> Prefix:
    return p if isinstance(p, Prefix) else parse_prefix(p)


def _state(t: Target, raw: bytes, now: int) -> EntryState:
    expires, hits, action, _plen = L.ENTRY.unpack_from(raw)
    left = None if not expires else (expires - now) / 1e9
    return EntryState(t, Action(action), hits, left)


BATCH = 65536


def _existing(m: Map, keys: list[bytes], count: int) -> dict[bytes, bytes]:
    """Current values of those ``keys`` that are in ``m`` (holding ``count``
    elements): one lookup per key, or one read of the whole map when that is
    cheaper."""
    if len(keys) <= 256 or len(keys) * 4 < count:
        found = {}
        for k in keys:
            v = _exact(m, k)
            if v is not None:
                found[k] = v
        return found
    wanted = set(keys)
    return {k: v for k, v in m.items(65536) if k in wanted}


def _insert(m: Map, items: dict[bytes, bytes], count: int) -> tuple[list[bytes], dict[bytes, bytes]]:
    """Write ``items`` into ``m`` (holding ``count`` elements) in batches.
    Returns (keys that were new, old values of the keys replaced). Checks
    capacity first; on failure undoes its own work and raises."""
    keys = list(items)
    old = _existing(m, keys, count)
    new = [k for k in keys if k not in old]
    if count + len(new) > m.spec.max_entries:
        raise MapFull(errno.E2BIG, f"map {m.name} is full: {count} + {len(new)} new entries > capacity "
                                   f"{m.spec.max_entries}")
    done = 0
    try:
        for pos in range(0, len(keys), BATCH):
            chunk = keys[pos:pos + BATCH]
            try:
                m.update_batch(b"".join(chunk), b"".join(items[k] for k in chunk))
            except BpfError as exc:
                if not _no_batch_support(exc):
                    done += getattr(exc, "done", 0)
                    raise
                for k in chunk:  # a kernel without batch ops for this map type
                    m.update(k, items[k])
                    done += 1
                continue
            done += len(chunk)
    except BaseException:
        written = set(keys[:done])
        _rollback(m, [k for k in new if k in written], {k: v for k, v in old.items() if k in written})
        raise
    return new, old


def _key_plen(key: bytes) -> int:
    return int.from_bytes(key[:4], "little")


def _exact(m: Map, key: bytes) -> bytes | None:
    """The value stored under exactly ``key``. An LPM trie's lookup returns
    the longest prefix covering the key, so its answer counts only when the
    entry's own prefix length (kept in the value) is the key's."""
    v = m.lookup(key)
    if v is not None and m.type == MapType.LPM_TRIE:
        # entries keep their length at the end of struct entry; set tries keep the key's plen
        held = L.ENTRY.unpack_from(v)[3] if len(v) == L.ENTRY.size else L.U32.unpack_from(v)[0]
        if held != _key_plen(key):
            return None
    return v


def _write_all(m: Map, keys: list[bytes], values: list[bytes]) -> None:
    """Batch writes, one by one where the kernel has no batch op for the map."""
    for pos in range(0, len(keys), BATCH):
        ks, vs = keys[pos : pos + BATCH], values[pos : pos + BATCH]
        try:
            m.update_batch(b"".join(ks), b"".join(vs))
        except BpfError as exc:
            if not _no_batch_support(exc):
                raise
            for k, v in zip(ks, vs):
                m.update(k, v)


class _signals_deferred:  # noqa: N801 - used like a function
    """Hold SIGINT and SIGTERM while a change spans several maps (entries,
    counts, config, moves): Ctrl-C then lands after it, never inside it."""

    _SIGNALS = (2, 15)  # SIGINT, SIGTERM

    def __enter__(self) -> None:
        import _signal  # signal.py would build its enums first (0.5 ms of a CLI call)

        # per thread: in a worker thread this is harmless (handlers run in the main one)
        self._old = set(_signal.pthread_sigmask(_signal.SIG_BLOCK, self._SIGNALS))

    def __exit__(self, *exc: object) -> None:
        import _signal

        _signal.pthread_sigmask(_signal.SIG_SETMASK, self._old)


class _MoveSkipped(Exception):
    """A move between hash and trie that did not start (or undid itself)."""


def _delete_present(m: Map, keys: list[bytes]) -> None:
    """Delete those of ``keys`` that are there, ignoring the others."""
    for k in keys:
        try:
            m.delete(k)
        except BpfError:
            pass


_MEMBARRIER = {"x86_64": 324, "aarch64": 283}  # syscall numbers
MEMBARRIER_CMD_GLOBAL = 1


def _rcu_grace_period() -> None:
    """Wait until no BPF program can still be reading a config slot written
    before now. XDP programs run inside RCU read-side sections, and
    membarrier(MEMBARRIER_CMD_GLOBAL) returns after synchronize_rcu()."""
    import ctypes
    import platform

    nr = _MEMBARRIER.get(platform.machine())
    if nr is not None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.syscall(nr, MEMBARRIER_CMD_GLOBAL, 0, 0) == 0:
            return
    time.sleep(0.05)  # no membarrier: a wait far longer than any packet's run


def _no_batch_support(exc: BpfError) -> bool:
    """The kernel has no batch op for this map (and so did nothing)."""
    done: int = getattr(exc, "done", 0)
    return exc.errno in NO_BATCH_ERRNOS and done == 0


def _delete_all(m: Map, keys: list[bytes]) -> None:
    for pos in range(0, len(keys), BATCH):
        ks = keys[pos : pos + BATCH]
        try:
            m.delete_batch(b"".join(ks))
        except BpfError as exc:
            if not _no_batch_support(exc):
                raise
            for k in ks:
                m.delete(k)


def _rollback(m: Map, new: list[bytes], old: dict[bytes, bytes]) -> None:
    if new:
        if m.name == "ports":
            for k in new:
                m.update(k, old.get(k, L.ENTRY.pack(0, 0, 0, 0)))
        else:
            try:
                m.delete_batch(b"".join(new))
            except BpfError:
                for k in new:
                    try:
                        m.delete(k)
                    except BpfError:
                        pass
    for k, v in old.items():
        m.update(k, v)


def _prog_name(prog_id: int) -> str:
    try:
        with Program.from_id(prog_id) as p:
            return p.name or "unnamed"
    except BpfError:
        return "unknown"


def _remove_pins(pin_dir: str) -> None:
    for name in (*PINNED_MAPS, PROG_PIN):
        try:
            os.unlink(os.path.join(pin_dir, name))
        except FileNotFoundError:
            pass
    try:
        os.rmdir(pin_dir)
    except OSError:
        pass


def _prepare_dir(pin_dir: str) -> bool:
    """Make the pin directory (mode 0700) on a mounted bpffs; True if made now."""
    if pin_dir == BPFFS or pin_dir.startswith(BPFFS + "/"):
        ensure_bpffs(BPFFS)
    parent = os.path.dirname(pin_dir)
    if not os.path.isdir(parent):
        raise UsageError(f"pin dir parent {parent} does not exist")
    if not is_bpffs(parent):
        raise UsageError(f"pin dir {pin_dir} is not on a bpffs (mount -t bpf bpf {parent})")
    made = True
    try:
        os.mkdir(pin_dir, 0o700)
    except FileExistsError:
        made = False
    os.chmod(pin_dir, 0o700)
    return made


def _rule_sizes(rules: int) -> dict[str, tuple[int, int | None]]:
    """Map -> (max entries, value size or None) for a rule capacity."""
    return {
        "rlit4": (4 * rules, None),
        "rlit6": (4 * rules, None),
        "rvec": (2 * classes_per_gen(rules), rules // 8),
        "rorder": (2 * rules, None),
        "rhits": (2 * rules, None),
        "rdefs": (2 * rules, None),
    }


def _open_object(pin_dir: str, capacity: int | None, rules: int | None = None,
                 trace_all: bool = False, count_hits: bool = True) -> BpfObject:
    """The shipped object with its maps pinned in ``pin_dir``; capacities are
    those of maps already pinned there (checked for shape), else ``capacity``
    (prefix entries) and ``rules`` (rule capacity)."""
    obj = BpfObject(OBJECT_PATH, pin_root=pin_dir)
    try:
        rvec = os.path.join(pin_dir, "rvec")
        if os.path.exists(rvec):
            with Map.from_pin(rvec) as pinned:
                rules = pinned.spec.value_size * 8
        rules = check_capacity(rules or DEFAULT_RULES)
        for name, (entries, vsize) in _rule_sizes(rules).items():
            obj.set_max_entries(name, entries)
            if vsize is not None:
                obj.set_value_size(name, vsize)
        obj.set_rodata(L.KNOBS.pack(int(trace_all), int(count_hits), rules // 64, 0))
        for name in PINNED_MAPS:
            path = os.path.join(pin_dir, name)
            if os.path.exists(path):
                with Map.from_pin(path) as pinned:
                    if name in PREFIX_MAPS:
                        obj.set_max_entries(name, pinned.spec.max_entries)
                    obj.check_pinned(name, pinned.spec)
            elif capacity is not None and name in PREFIX_MAPS:
                obj.set_max_entries(name, capacity)
    except BaseException:
        obj.close()
        raise
    return obj


def _pin_program(prog: Program, pin_dir: str) -> None:
    """Pin ``prog`` as the state's program, replacing the old pin in one step."""
    path = os.path.join(pin_dir, PROG_PIN)
    tmp = path + "_new"  # bpffs refuses names with dots
    if os.path.exists(tmp):
        os.unlink(tmp)
    prog.pin(tmp)
    os.replace(tmp, path)


def _create_maps(pin_dir: str, capacity: int | None, with_program: bool = False, rules: int | None = None) -> bool:
    """Create and pin the maps that are missing (and the program, with
    ``with_program``); True if any map was."""
    if all(os.path.exists(os.path.join(pin_dir, n)) for n in PINNED_MAPS):
        return False
    with _open_object(pin_dir, capacity or DEFAULT_CAPACITY, rules) as obj:
        if not with_program:
            obj.no_programs()
        obj.load()
        if with_program:
            with obj.program("xdp_filter") as prog:
                _pin_program(prog, pin_dir)
    return True


