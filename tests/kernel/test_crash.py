"""Crash injection (issue 9): every multi-map change is all or nothing under
SIGKILL, and what list/save/set list report is what the datapath does.

The CLI runs as a subprocess with $PYXDP_TEST_KILL_AFTER=N (pyxdp.kernel.bpf.Map
kills the process right after its Nth map write), for N = 1, 2, ... until it
completes; big inputs are also killed after a delay. After each kill:

  before recovery (readers only, as the datapath runs until the next writer):
    save shows the before- or the after-state, the datapath (BPF_PROG_TEST_RUN
    probes, judged by the first-match evaluator below) agrees with it, and
    set list's counts equal the members listed;
  then a fresh writer (ban/unban of an unrelated address) works, and after it
    save is what it was before recovery, the probes agree, counts agree, the
    journal is clear, and no element (hash or trie) carries a dead set id.

Plus the security cases of issue 9: planted symlinks at the paths pyxdp
writes, the verifier log's name and mode, pin dirs made by another user."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any, NamedTuple

import pytest
from helpers import packets as P
from helpers.env import RUN, NetPair, needs_root, sh

pytestmark = needs_root

HERE = os.path.dirname(os.path.abspath(__file__))
TREE = os.path.dirname(os.path.dirname(HERE))
BIN = os.path.join(os.path.dirname(sys.executable), "pyxdp-load")
UNRELATED = "203.0.113.250"
NOBODY = 65534
KILLED = -signal.SIGKILL


# ---- running the CLI ----------------------------------------------------------------


def _env(kill: int | None = None) -> dict[str, str]:
    e = dict(os.environ)
    for k in ("PYXDP_DEBUG", "PYXDP_TEST_KILL_AFTER", "PYXDP_PIN_DIR", "SUDO_UID"):
        e.pop(k, None)
    e["PYTHONPATH"] = TREE + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    if kill is not None:
        e["PYXDP_TEST_KILL_AFTER"] = str(kill)
    return e


def cli(pin: str | None, *args: str, kill: int | None = None, stdin: str | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    cmd = [BIN] + (["--pin-dir", pin] if pin else []) + list(args)
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(kill), input=stdin, timeout=timeout)


def ok(pin: str | None, *args: str) -> str:
    r = cli(pin, *args)
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r.stdout


# ---- the firewall as save shows it ---------------------------------------------------------


class View(NamedTuple):
    """What save says, TTLs left out: policy, rules in order, set name -> prefixes."""

    policy: str
    rules: tuple[str, ...]
    sets: tuple[tuple[str, frozenset[str]], ...]

    def set_dict(self) -> dict[str, frozenset[str]]:
        return dict(self.sets)


def view_of(spec: Any) -> View:
    pol = spec.policy.label if spec.policy is not None else "pass"
    sets = tuple(sorted((n, frozenset(str(e.prefix) for e in els)) for n, els in spec.sets.items()))
    return View(pol, tuple(str(r) for r in spec.rules), sets)


def view_of_text(text: str) -> View:
    from pyxdp.model.rulefile import parse_ruleset

    return view_of(parse_ruleset(text, "save"))


def saved(pin: str) -> View:
    """save, as a fresh process runs it."""
    return view_of_text(ok(pin, "save"))


def snapshot(pin: str) -> View:
    """What save shows, read in this process (the same code: Filter.ruleset())."""
    from pyxdp import Filter

    with Filter.open(pin, lock=False) as f:
        return view_of(f.ruleset())


def describe(v: View, ref: View, ref_name: str) -> str:
    """How ``v`` differs from ``ref`` (short)."""
    out = []
    if v.policy != ref.policy:
        out.append(f"policy {v.policy} (vs {ref.policy})")
    if v.rules != ref.rules:
        out.append(f"rules {list(v.rules)} (vs {list(ref.rules)})")
    a, b = v.set_dict(), ref.set_dict()
    for name in sorted(set(a) | set(b)):
        if name not in a:
            out.append(f"no set {name}")
        elif name not in b:
            out.append(f"extra set {name} ({len(a[name])} elements)")
        elif a[name] != b[name]:
            plus, minus = sorted(a[name] - b[name]), sorted(b[name] - a[name])
            out.append(f"set {name}: +{len(plus)} {plus[:3]} -{len(minus)} {minus[:3]}")
    return f"vs {ref_name}: " + ("; ".join(out) or "same")


# ---- a first-match evaluator (independent of pyxdp's compiler) ---------------------------


class Members:
    """A set's prefixes, indexed by family and length for membership tests."""

    def __init__(self, prefixes: frozenset[str]) -> None:
        from pyxdp.model.prefix import parse_prefix

        self.by: dict[tuple[int, int], set[bytes]] = {}
        for text in prefixes:
            p = parse_prefix(text)
            self.by.setdefault((p.family, p.plen), set()).add(p.addr)

    def holds(self, fam: int, addr: bytes) -> bool:
        from pyxdp.model.prefix import MASKS4, MASKS6

        masks = MASKS4 if fam == 4 else MASKS6
        for (f, plen), addrs in self.by.items():
            if f == fam and bytes(a & m for a, m in zip(addr, masks[plen])) in addrs:
                return True
        return False


class Probe(NamedTuple):
    fam: int
    proto: int
    src: str
    dport: int
    dst: str

    def frame(self) -> bytes:
        if self.fam == 4:
            return P.tcp4(self.src, self.dport, dst=self.dst) if self.proto == 6 else P.udp4(self.src, self.dport,
                                                                                               dst=self.dst)
        return P.tcp6(self.src, self.dport, dst=self.dst) if self.proto == 6 else P.udp6(self.src, self.dport,
                                                                                           dst=self.dst)


def expected(v: View, members: dict[str, Members], pr: Probe) -> tuple[str, int]:
    """(verdict label, 1-based deciding rule or 0) for a TCP/UDP packet, by the decision table."""
    import socket

    from pyxdp.model.rules import RULE_PROTOS, parse_rule

    af = socket.AF_INET if pr.fam == 4 else socket.AF_INET6
    src, dst = socket.inet_pton(af, pr.src), socket.inet_pton(af, pr.dst)
    for num, text in enumerate(v.rules, 1):
        r = _RULES.get(text) or _RULES.setdefault(text, parse_rule(text))
        if r.iface or (r.proto != "any" and RULE_PROTOS[r.proto] != pr.proto):
            continue
        hit = True
        for addr, side in ((src, r.src), (dst, r.dst)):
            if side.prefix is not None:
                hit = hit and side.prefix.family == pr.fam and side.prefix.holds(addr)
            elif side.set:
                m = members.get(side.set)
                hit = hit and m is not None and m.holds(pr.fam, addr)
        if r.sport and not any(lo <= 40000 <= hi for lo, hi in r.sport):
            hit = False
        if r.dport and not any(lo <= pr.dport <= hi for lo, hi in r.dport):
            hit = False
        if hit:
            return ("pass" if r.action.name == "ALLOW" else "drop"), num
    return v.policy, 0


_RULES: dict[str, Any] = {}
_EXPECTED: dict[tuple[View, tuple[Probe, ...]], list[tuple[str, int]]] = {}


def _addrs_of(text: str) -> list[str]:
    """The first and the last address of a prefix."""
    import ipaddress

    net = ipaddress.ip_network(text)
    return sorted({str(net.network_address), str(net.broadcast_address)})


NON_MEMBERS = ["192.0.2.250", "100.200.0.1", "10.200.1.1", "198.51.100.9", "2001:db8:99::1", "2001:db8:1:ffff::7"]


def probes(views: Sequence[View], per_set: int = 12) -> list[Probe]:
    """Packets from members of every set of ``views`` (a sample: the elements
    that differ between the views first) and from non-members."""
    addrs: set[str] = set(NON_MEMBERS)
    names = {n for v in views for n in v.set_dict()}
    for name in sorted(names):
        contents = [v.set_dict().get(name, frozenset()) for v in views]
        union = frozenset().union(*contents)
        common = frozenset.intersection(*contents)
        differ = sorted(union - common)
        same = sorted(common)
        pick = differ[:: max(1, len(differ) // per_set)][:per_set] + same[:: max(1, len(same) // per_set)][:per_set]
        for text in pick:
            addrs.update(_addrs_of(text))
    out = []
    for a in sorted(addrs):
        fam = 6 if ":" in a else 4
        dst = "198.51.100.1" if fam == 4 else "2001:db8:ffff::1"
        out += [Probe(fam, 6, a, 22, dst), Probe(fam, 6, a, 443, dst), Probe(fam, 17, a, 53, dst)]
    return out


def datapath_problems(tester: Any, v: View, prs: Sequence[Probe]) -> list[str]:
    """Probe packets whose verdict (or deciding rule) differs from what ``v`` says."""
    key = (v, tuple(prs))
    if key not in _EXPECTED:
        if len(_EXPECTED) > 64:
            _EXPECTED.clear()
        members = {name: Members(els) for name, els in v.sets}
        _EXPECTED[key] = [expected(v, members, pr) for pr in prs]
    bad = []
    for pr, (want, rule) in zip(prs, _EXPECTED[key]):
        res = tester.run(pr.frame())
        got_rule = res.event.rule if res.event is not None else -1
        if res.verdict.label != want or got_rule != rule:
            bad.append(f"{pr.src} {'tcp' if pr.proto == 6 else 'udp'}/{pr.dport}: datapath {res.verdict.label} "
                       f"(rule {got_rule}), save says {want} (rule {rule})")
    return bad[:5] + ([f"... {len(bad) - 5} more"] if len(bad) > 5 else [])


# ---- what the maps hold ------------------------------------------------------------------------


def count_problems(pin: str) -> list[str]:
    """set list's counts against the members it lists."""
    return read_state(pin)[1]


def read_state(pin: str) -> tuple[View, list[str]]:
    """What save shows (read in this process: the same Filter.ruleset() the
    CLI runs), and where set list's counts differ from the members listed."""
    from pyxdp import Filter

    out = []
    with Filter.open(pin, lock=False) as f:
        spec = f.ruleset()
        sets = f.sets()
    for s in sets:
        els = spec.sets.get(s.name, [])
        n4 = sum(1 for e in els if e.prefix.family == 4)
        n6 = len(els) - n4
        if (s.n4, s.n6) != (n4, n6):
            out.append(f"set list @{s.name}: {s.n4} IPv4, {s.n6} IPv6; members listed: {n4} IPv4, {n6} IPv6")
    return view_of(spec), out


def _dump(m: Any) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) of every element of a hash map, read in batches and cut
    up here (pyxdp's Map.items() yields element by element: too slow for
    300,000 elements read many times)."""
    import errno

    from pyxdp.kernel.libbpf import ffi, lib

    ks, vs, chunk = m.key_size, m.value_bytes, 65536
    keys, vals = ffi.new("char[]", ks * chunk), ffi.new("char[]", vs * chunk)
    count = ffi.new("__u32 *")
    opts = ffi.new("struct bpf_map_batch_opts *", {"sz": ffi.sizeof("struct bpf_map_batch_opts")})
    in_b, out_b = ffi.NULL, ffi.new("char[]", max(ks, 8))
    while True:
        count[0] = chunk
        ret = lib.bpf_map_lookup_batch(m.fd, in_b, out_b, keys, vals, count, opts)
        assert ret >= 0 or ret == -errno.ENOENT, f"batch read of {m.name}: {ret}"
        kb, vb = ffi.buffer(keys, ks * count[0])[:], ffi.buffer(vals, vs * count[0])[:]
        yield from zip((kb[i : i + ks] for i in range(0, len(kb), ks)), (vb[i : i + vs] for i in range(0, len(vb), vs)))
        if ret < 0:
            return
        in_b, out_b = out_b, ffi.new("char[]", max(ks, 8))


def storage_problems(pin: str) -> list[str]:
    """After recovery: journal clear, names settled, ids live or free, no
    element under a dead id, counts equal to what the hashes hold, trie
    copies exactly for the lengths not probed in the hash."""
    from pyxdp import Filter
    from pyxdp import layout as L
    from pyxdp.store import sets as S

    out: list[str] = []
    with Filter.open(pin, lock=False) as f:
        st = f.state
        op, _txn, jsid = st.journal()
        if op != L.JournalOp.NONE:
            out.append(f"journal still holds {op.name} (set id {jsid})")
        live: dict[int, str] = {}
        for name, (lv, staged, pending) in S.names(st).items():
            if not lv or staged or pending:
                out.append(f"set name {name}: live id {lv}, staged {staged}, pending {pending}")
            if lv:
                live[lv] = name
        infos = S.all_info(st)
        for sid, si in infos.items():
            if sid in live and si.state != L.IdState.LIVE:
                out.append(f"set @{live[sid]} (id {sid}) is {si.state.name}")
            if sid not in live and si.state != L.IdState.FREE:
                out.append(f"set id {sid} is {si.state.name} but no name uses it")
            if sid not in live and any(S.counts(st, sid)):
                out.append(f"free set id {sid} still counts {sum(S.counts(st, sid))} elements")
        walked: dict[int, list[int]] = {}
        for fam in (4, 6):
            hname, tname, _kst, base, _maxlen = S._FAM[fam]
            orphans: dict[int, int] = {}
            pending_n = 0
            hkeys: dict[bytes, int] = {}
            for k, v in _dump(st.map(hname)):
                sid = L.U32.unpack_from(k, 4)[0]
                if sid not in live:
                    orphans[sid] = orphans.get(sid, 0) + 1
                    continue
                _exp, _hits, born, until = L.ELEM.unpack(v)
                if born > infos[sid].epoch or until:
                    pending_n += 1
                walked.setdefault(sid, [0] * L.LEN_SLOTS)[base + L.U32.unpack_from(k)[0] - 32] += 1
                hkeys[k] = sid
            if orphans:
                out.append(f"{hname}: {sum(orphans.values())} orphan elements under dead set ids {sorted(orphans)}")
            if pending_n:
                out.append(f"{hname}: {pending_n} elements still marked by an unfinished change")
            torphans: dict[int, int] = {}
            lone = 0
            tkeys = set()
            for k in st.map(tname):
                sid = L.U32.unpack_from(k, 4)[0]
                tkeys.add(k)
                if sid not in live:
                    torphans[sid] = torphans.get(sid, 0) + 1
                elif k not in hkeys:
                    lone += 1
            if torphans:
                out.append(f"{tname}: {sum(torphans.values())} orphan trie entries under dead set ids "
                           f"{sorted(torphans)}")
            if lone:
                out.append(f"{tname}: {lone} trie entries without their element in {hname}")
            unreachable = 0
            for k, sid in hkeys.items():
                si = infos[sid]
                if L.U32.unpack_from(k)[0] - 32 not in si.hashed(fam) and (k not in tkeys or not si.trie(fam)):
                    unreachable += 1
            if unreachable:
                out.append(f"{hname}: {unreachable} elements of a length the hash does not probe, not in the trie")
        for sid, name in live.items():
            have = S.counts(st, sid)
            real = walked.get(sid, [0] * L.LEN_SLOTS)
            if have != real:
                diff = {i: (have[i], real[i]) for i in range(L.LEN_SLOTS) if have[i] != real[i]}
                out.append(f"@{name}: per-length counts (slot: counted, held) {dict(list(diff.items())[:4])}")
    return out


# ---- the crash loop ----------------------------------------------------------------------------


def kill_points(cap: int = 200) -> Iterator[int]:
    """Every write up to 40, then every 5th up to 80, then every 10th."""
    yield from range(1, 41)
    yield from range(45, min(cap, 80) + 1, 5)
    yield from range(90, cap + 1, 10)


class Case(NamedTuple):
    name: str
    base: str  # TOML applied first ("" : empty state)
    args: tuple[str, ...]
    stdin: str | None = None
    intermediate: Callable[[View, View, View], bool] | None = None  # allowed states besides before/after
    writer: tuple[tuple[str, ...], ...] = (("ban", "-q", UNRELATED), ("unban", "-q", UNRELATED))


_BLK = ", ".join([f'"100.0.{i}.0/24"' for i in range(40)] + ['"100.1.0.1/32"'])
BASE = f"""
policy = "pass"
rules = [
    "deny from @banned",
    "allow proto tcp from @trusted to any port 22",
    "deny proto tcp to any port 22",
    "deny from @blk",
    "deny proto udp from 198.51.100.0/24 to any port 53",
]
[sets]
banned = ["192.0.2.1/32", "192.0.2.64/26", "2001:db8:1::/48", "2001:db8:5::7/128"]
trusted = ["10.1.0.0/16", "10.2.3.4/32", "2001:db8:2::5/128"]
blk = [{_BLK}]
old = ["172.16.0.0/12", "2001:db8:77::/64"]
"""


def _many(n: int, lens: Sequence[int], start: int) -> str:
    """About ``n`` distinct IPv4 prefixes over ``lens`` (one per /24 block from ``start``), one per line."""
    import ipaddress

    lines = [str(ipaddress.ip_network((start + (i << 8), lens[i % len(lens)]), strict=False)) for i in range(n)]
    return "\n".join(dict.fromkeys(lines)) + "\n"


_NEW_BLK = ", ".join(f'"{p}"' for p in _many(600, (32, 28, 24, 20, 18, 16, 12), 0x64800000).split())
NEW_FILE = f"""
policy = "drop"
rules = [
    "deny from @banned",
    "deny from @blk",
    "allow from @trusted",
    "allow proto tcp to any port 80,443",
    "allow from @fresh to any port 53",
    "allow to any port 22",
]
[sets]
banned = ["192.0.2.1/32", "192.0.2.99/32", "2001:db8:1::/48"]
trusted = ["10.1.0.0/16", "10.3.0.0/16"]
blk = [{_NEW_BLK}]
fresh = ["198.51.100.0/25", "2001:db8:f::/64"]
"""


def _ban_fresh_ok(v: View, before: View, after: View) -> bool:
    """ban on a state without the set: creating the set and inserting the rule
    are commits of their own; the elements are none or all."""
    sets = v.set_dict()
    return v.policy == after.policy and sets.get("banned") == frozenset() and v.rules in (before.rules, after.rules)


CASES = [
    Case("ban-one-new-length", BASE, ("ban", "-q", "192.0.2.76/30")),  # a new length takes a free hash slot
    Case("ban-many-new-lengths-trie", BASE, ("ban", "-q", "--ttl", "1h", "--file", "-"),
         stdin=_many(300, (32, 31, 30, 29, 27, 25, 23, 22), 0x0A400000)
         + "2001:db8:9::/64\n2001:db8:9:100::/56\n2001:db8:a::1/128\n"),
    Case("ban-fresh-state", "", ("ban", "192.0.2.9", "198.51.100.0/24", "2001:db8::/32"),
         intermediate=_ban_fresh_ok, writer=(("unban", "-q", UNRELATED),)),
    # a new set is made with its elements in one change: no set or the whole one (issue 19: it was left empty)
    Case("set-add-new-set", BASE, ("set", "add", "extra", "203.0.113.0/24", "2001:db8:e::/48")),
    Case("set-add-new-set-file-trie", BASE, ("set", "add", "fresh", "--ttl", "1h", "--file", "-"),
         stdin=_many(200, (32, 30, 28, 26, 24, 22, 20), 0x0B000000) + "2001:db8:c::/64\n2001:db8:d::/56\n"),
    Case("set-remove", BASE, ("set", "remove", "banned", "192.0.2.1", "192.0.2.64/26", "2001:db8:5::7")),
    Case("unban-all", BASE, ("unban", "--all")),
    Case("set-destroy", BASE, ("set", "destroy", "old")),
    Case("rule-add", BASE, ("allow", "proto", "tcp", "to", "any", "port", "80,443")),
    Case("rule-insert", BASE, ("insert", "2", "deny", "from", "10.0.0.0/8")),
    Case("rule-delete", BASE, ("delete", "3")),
    Case("apply", BASE, ("apply", "-"), stdin=NEW_FILE),
]


def _setup(pin: str, base: str) -> None:
    from pyxdp import Filter
    from pyxdp.model.rulefile import parse_ruleset

    with Filter.open(pin, create=True) as f:
        if base:
            f.apply(parse_ruleset(base, "base"))
        else:
            f.apply(parse_ruleset('policy = "pass"\nrules = []\n', "empty"))


def _restore(pin: str, before: View, base: str) -> None:
    """Back to ``before``: element by element when only set contents differ, else by apply."""
    from pyxdp import Filter
    from pyxdp.model.rulefile import parse_ruleset

    with Filter.open(pin) as f:
        now = view_of(f.ruleset())
        have, want = now.set_dict(), before.set_dict()
        if now.rules != before.rules or now.policy != before.policy or set(have) != set(want):
            f.apply(parse_ruleset(base or 'policy = "pass"\nrules = []\n', "base"))
        else:
            for name, els in want.items():
                if have[name] - els:
                    f.set_remove(name, sorted(have[name] - els))
                if els - have[name]:
                    f.set_add(name, sorted(els - have[name]))
    now = snapshot(pin)
    assert now == before, describe(now, before, "before")


def crash_loop(case: Case, pin: str, budget: int = 200) -> list[str]:
    """Kill ``case``'s command after each of its map writes; returns the problems found."""
    from pyxdp import Filter

    problems: list[str] = []
    _setup(pin, case.base)
    before = saved(pin)
    ref = cli(pin, *case.args, stdin=case.stdin)
    assert ref.returncode == 0, ref.stderr
    after = saved(pin)
    assert after != before
    _restore(pin, before, case.base)
    prs = probes([before, after])
    states = {"before": before, "after": after}
    completed = False
    with Filter.open(pin, lock=False) as f, f.tester() as tester:
        for n in kill_points(budget):
            r = cli(pin, *case.args, kill=n, stdin=case.stdin)
            if r.returncode not in (0, KILLED):
                problems.append(f"N={n}: exit {r.returncode}: {r.stderr.strip()}")
                break
            tag = f"{case.name} N={n}" + ("" if r.returncode == KILLED else " (completed)")
            # before recovery: readers and the datapath
            pre, counts_pre = read_state(pin)
            which = [k for k, s in states.items() if s == pre]
            if not which and not (case.intermediate and case.intermediate(pre, before, after)):
                problems.append(f"{tag}: before recovery, save shows neither state: {describe(pre, before, 'before')}"
                                f" | {describe(pre, after, 'after')}")
            problems += [f"{tag}: before recovery: {p}" for p in datapath_problems(tester, pre, prs)]
            problems += [f"{tag}: before recovery: {p}" for p in counts_pre]
            # a fresh writer recovers and works
            for w in case.writer[:1]:
                rw = cli(pin, *w)
                if rw.returncode != 0:
                    problems.append(f"{tag}: next writer '{' '.join(w)}' failed: {rw.stderr.strip()}")
            if case.writer[1:]:
                with Filter.open(pin) as w:
                    w.unban([UNRELATED])
            post, counts_post = read_state(pin)
            if post != pre:
                problems.append(f"{tag}: recovery changed what save shows: {describe(post, pre, 'before recovery')}")
            if r.returncode == 0 and post != after:
                problems.append(f"{tag}: completed, but {describe(post, after, 'after')}")
            problems += [f"{tag}: after recovery: {p}" for p in datapath_problems(tester, post, prs)]
            problems += [f"{tag}: after recovery: {p}" for p in counts_post]
            problems += [f"{tag}: after recovery: {p}" for p in storage_problems(pin)]
            if r.returncode == 0:
                completed = True
                break
            if post != before:
                _restore(pin, before, case.base)
    if not completed:
        problems.append(f"{case.name}: still killed after {budget} writes (or stopped early)")
    return problems


BIG_CASE = Case("set-add-70k-two-batches-to-trie", BASE, ("set", "add", "blk", "--file", "-"),
                stdin=_many(70000, (32, 32, 32, 24, 20, 28, 16, 12), 0x65000000))
ALL_CASES = [*CASES, BIG_CASE]


def _one_crash_loop(case: Case, pin: str) -> list[str]:
    try:
        return crash_loop(case, pin, budget=40 if case is BIG_CASE else 200)
    except Exception as exc:  # noqa: BLE001 - reported by the case's test
        return [f"{case.name}: {type(exc).__name__}: {exc}"]
    finally:
        shutil.rmtree(pin, ignore_errors=True)


@pytest.fixture(scope="module")
def crash_results(request: pytest.FixtureRequest) -> Iterator[Callable[[str], list[str]]]:
    """The problems of a case's crash loop, by case name, each loop in its
    own pin dir. In one pytest process the loops of all the cases this
    session selected start at once: much of their time is waiting, not CPU
    (all twelve took 48-52 s here at once, 59-85 s three at a time, on a
    2-core machine shared with other runs), and each case's test waits for
    its own loop only. Under pytest-xdist (a worker runs the tests it is
    handed, and cannot know which those are ahead) each case's test runs
    its own loop: the workers run them side by side with the other tests."""
    from concurrent.futures import ThreadPoolExecutor

    def pin(case: Case) -> str:
        return f"/sys/fs/bpf/pyxdp-t{RUN}-crash-{case.name}"

    by_name = {c.name: c for c in ALL_CASES}
    if hasattr(request.config, "workerinput"):  # a pytest-xdist worker
        yield lambda name: _one_crash_loop(by_name[name], pin(by_name[name]))
        return
    wanted = {it.callspec.params["case"].name for it in request.session.items
              if getattr(it, "originalname", "") == "test_killed_after_every_map_write"}
    cases = [c for c in ALL_CASES if c.name in wanted]
    pool = ThreadPoolExecutor(max(1, len(cases)))
    try:
        started: dict[str, Future[list[str]]] = {c.name: pool.submit(_one_crash_loop, c, pin(c)) for c in cases}
        yield lambda name: started[name].result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        for c in cases:
            shutil.rmtree(pin(c), ignore_errors=True)


@pytest.mark.long(20)
@pytest.mark.parametrize("case", ALL_CASES, ids=[c.name for c in ALL_CASES])
def test_killed_after_every_map_write(case: Case, crash_results: Callable[[str], list[str]]) -> None:
    problems = crash_results(case.name)
    assert not problems, "\n".join(problems[:40])


# ---- timed kills on big inputs (issue 9, cases 1 and 2) --------------------------------------


def _big_file(path: str, n: int = 300_000) -> list[str]:
    """``n`` prefixes: mostly /32 from 100.0.0.0 (100.0.0.5 among them), some /24, /20, /12."""
    import ipaddress

    out = []
    base = int(ipaddress.ip_address("100.0.0.0"))
    for i in range(n - 20_000):
        out.append(f"{ipaddress.ip_address(base + i)}/32")
    b24 = int(ipaddress.ip_address("110.0.0.0"))
    for i in range(18_000):
        out.append(f"{ipaddress.ip_address(b24 + (i << 8))}/24")
    b20 = int(ipaddress.ip_address("120.0.0.0"))
    for i in range(1_990):
        out.append(f"{ipaddress.ip_address(b20 + (i << 12))}/20")
    for i in range(10):
        out.append(f"{130 + i}.0.0.0/12")
    with open(path, "w") as fh:
        fh.write("\n".join(out) + "\n")
    return out


def _timed_kill(args: list[str], delay: float) -> int:
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        proc.wait(delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    return proc.returncode


def _probe(pin: str, src: str) -> tuple[str, int]:
    from pyxdp import Filter

    with Filter.open(pin, lock=False) as f, f.tester() as t:
        res = t.run(P.udp4(src))
        return res.verdict.label, res.event.rule if res.event else -1


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, int]:
    path = str(tmp_path_factory.mktemp("crash") / "big.txt")
    return path, len(_big_file(path))


def _set_counts(pin: str) -> dict[str, int]:
    return {d["name"]: d["ipv4"] + d["ipv6"] for d in map(json.loads, ok(pin, "set", "list", "--json").splitlines())}


@pytest.mark.long(20)
def test_ban_file_killed_by_the_clock(pin_dir: str, big_file: tuple[str, int]) -> None:
    """Issue case 2: `ban --file` (300,000 prefixes) SIGKILLed part-way:
    none or all banned, counts right, the datapath agrees, and rerunning the
    file leaves the counts right."""
    from pyxdp import Filter

    path, total = big_file
    _setup(pin_dir, BASE)
    before = saved(pin_dir)
    n0 = _set_counts(pin_dir)["banned"]
    t0 = time.monotonic()
    ok(pin_dir, "ban", "-q", "--file", path)
    took = time.monotonic() - t0
    assert _set_counts(pin_dir)["banned"] == n0 + total
    with open(path) as fh:
        added = frozenset(fh.read().split())
    sets = before.set_dict()
    after = before._replace(sets=tuple(sorted({**sets, "banned": sets["banned"] | added}.items())))
    prs = probes([before, after], per_set=40)
    problems: list[str] = []
    for frac, rerun in ((0.6, True), (0.85, False)):
        shutil.rmtree(pin_dir)
        _setup(pin_dir, BASE)
        rc = _timed_kill([BIN, "--pin-dir", pin_dir, "ban", "-q", "--file", path], took * frac)
        tag = f"ban --file 300k killed at {took * frac:.2f}s (rc {rc})"
        pre, counts = read_state(pin_dir)
        if pre not in (before, after):
            problems.append(f"{tag}: before recovery, {describe(pre, before, 'before')}")
        problems += [f"{tag}: before recovery: {p}" for p in counts]
        with Filter.open(pin_dir, lock=False) as f, f.tester() as t:
            problems += [f"{tag}: before recovery: {p}" for p in datapath_problems(t, pre, prs)]
        ok(pin_dir, "ban", "-q", UNRELATED)
        ok(pin_dir, "unban", "-q", UNRELATED)
        problems += [f"{tag}: after recovery: {p}" for p in storage_problems(pin_dir)]
        if rerun:  # the state now equals what save showed; rerunning the file completes it, counts right
            post, counts = read_state(pin_dir)
            if post != pre:
                problems.append(f"{tag}: recovery changed what save shows: {describe(post, pre, 'before recovery')}")
            problems += [f"{tag}: after recovery: {p}" for p in counts]
            with Filter.open(pin_dir, lock=False) as f, f.tester() as t:
                problems += [f"{tag}: after recovery: {p}" for p in datapath_problems(t, post, prs)]
            ok(pin_dir, "ban", "-q", "--file", path)
            if _set_counts(pin_dir)["banned"] != n0 + total:
                problems.append(f"{tag}: after a rerun set list says {_set_counts(pin_dir)['banned']} banned, "
                                f"not {n0 + total}")
            problems += [f"{tag}: after rerun: {p}" for p in storage_problems(pin_dir)]
    assert not problems, "\n".join(problems)


@pytest.mark.long(8)
@pytest.mark.parametrize("how", ["apply", "set-add"])
def test_killed_big_change_does_not_poison_the_next_set(pin_dir: str, big_file: tuple[str, int], how: str,
                                                        tmp_path: Any) -> None:
    """Issue case 1: an `apply` (or `set add --file`) of a 300,000-prefix set
    SIGKILLed part-way; then a new one-prefix set n1 with `deny from @n1`: a
    member of the killed set (100.0.0.5) is not matched by it."""
    path, total = big_file
    if how == "apply":
        with open(path) as fh:
            lines = fh.read().split()
        toml = str(tmp_path / "big.toml")
        with open(toml, "w") as fh:
            fh.write('policy = "pass"\nrules = ["deny from @big"]\n[sets]\nbig = [\n'
                     + "".join(f'"{x}",\n' for x in lines) + "]\n")
        args = ["apply", toml]
    else:
        args = ["set", "add", "blk", "--file", path]
    _setup(pin_dir, "")
    t0 = time.monotonic()
    ok(pin_dir, *args)
    took = time.monotonic() - t0
    assert _probe(pin_dir, "100.0.0.5")[0] == ("drop" if how == "apply" else "pass")
    problems: list[str] = []
    for frac in (0.7,):
        shutil.rmtree(pin_dir)
        _setup(pin_dir, "")
        rc = _timed_kill([BIN, "--pin-dir", pin_dir, *args], took * frac)
        tag = f"{how} of 300k killed at {took * frac:.2f}s (rc {rc})"
        problems += [f"{tag}: before recovery: {p}" for p in count_problems(pin_dir)]
        if how == "apply":
            r2 = cli(pin_dir, "apply", "-", stdin='policy = "pass"\nrules = ["deny from @n1"]\n'
                     '[sets]\nn1 = ["198.51.100.77/32"]\n')
        else:
            r2 = cli(pin_dir, "set", "add", "n1", "198.51.100.77")
            if r2.returncode == 0:
                r2 = cli(pin_dir, "insert", "1", "deny", "from", "@n1")
        if r2.returncode != 0:
            problems.append(f"{tag}: the next change failed: {r2.stderr.strip()}")
            continue
        post = saved(pin_dir)
        if post.set_dict().get("n1") != frozenset({"198.51.100.77/32"}):
            problems.append(f"{tag}: n1 is {sorted(post.set_dict().get('n1', frozenset()))[:5]}")
        if how == "set-add" and len(post.set_dict().get("blk", frozenset())) not in (0, total):
            problems.append(f"{tag}: blk has {len(post.set_dict()['blk'])} of {total} elements")
        if how == "apply" and "big" in post.set_dict():
            problems.append(f"{tag}: set big of the killed apply still listed")
        verdict, rule = _probe(pin_dir, "100.0.0.5")
        if verdict != "pass" or rule != 0:
            problems.append(f"{tag}: 100.0.0.5 (in the killed set, not in n1) gets {verdict} by rule {rule}; "
                            f"set list: {ok(pin_dir, 'set', 'list').strip()!r}")
        if _probe(pin_dir, "198.51.100.77") != ("drop", 1):
            problems.append(f"{tag}: 198.51.100.77 (in n1) is not dropped by rule 1")
        problems += [f"{tag}: after: {p}" for p in count_problems(pin_dir) + storage_problems(pin_dir)]
    assert not problems, "\n".join(problems)


# ---- attach, attach --reload, detach -----------------------------------------------------------


def _xdp_prog(ns: str, ifname: str) -> int:
    from pyxdp.kernel.xdp import Netlink

    with Netlink(ns) as nl:
        return int(nl.state(ifname).prog_id)


def _ours(pin: str, prog_id: int) -> bool:
    """Whether program ``prog_id`` uses this state's config map (asked of
    bpftool, not of pyxdp: pyxdp.store.attach.uses_state is under test)."""
    from pyxdp.kernel.bpf import Map

    prog = json.loads(sh("bpftool", "-j", "prog", "show", "id", str(prog_id)).stdout)
    with Map.from_pin(os.path.join(pin, "cfg")) as cfg:
        return cfg.id in prog.get("map_ids", [])


def _status(pin: str) -> dict[str, Any]:
    r = cli(pin, "status", "--json")
    return dict(json.loads(r.stdout)) if r.stdout.strip() else {}


def _iface_problems(pin: str, pair: NetPair, tag: str,
                    status: Callable[[str], dict[str, Any]] = _status) -> list[str]:
    """status against the kernel: each recorded interface runs its recorded
    program, and each of our interfaces that runs a program runs ours."""
    out = []
    st = status(pin)
    recorded = {(a["netns"], a["ifname"]): a for a in st.get("interfaces", [])}
    for ns, dev in ((pair.b, pair.vb), (pair.a, pair.va)):
        kernel = _xdp_prog(ns, dev)
        rec = recorded.get((ns, dev))
        if rec is not None and (not rec["attached"] or rec["prog_id"] != kernel):
            out.append(f"{tag}: status says {dev} runs {rec['prog_id']} (attached {rec['attached']}), "
                       f"the kernel runs {kernel}")
        if rec is None and kernel and os.path.exists(os.path.join(pin, "meta")):
            out.append(f"{tag}: {dev} runs program {kernel} (ours: {_ours(pin, kernel)}), status does not list it")
        if kernel and os.path.exists(os.path.join(pin, "meta")) and not _ours(pin, kernel):
            out.append(f"{tag}: {dev} runs program {kernel}, which does not use this state's maps")
    return out


@pytest.mark.long(30)
def test_first_attach_killed(pin_dir: str, netpair: NetPair) -> None:
    """`attach` making the state, killed after each map write: the next
    attach works, status matches the kernel, and detach removes it all."""
    problems: list[str] = []
    done = False
    for n in range(1, 30):
        r = cli(pin_dir, "attach", netpair.vb, "--netns", netpair.b, kill=n)
        tag = f"attach (new state) N={n}"
        if r.returncode not in (0, KILLED):
            problems.append(f"{tag}: exit {r.returncode}: {r.stderr.strip()}")
            break
        kernel = _xdp_prog(netpair.b, netpair.vb)
        if kernel and os.path.exists(os.path.join(pin_dir, "meta")) and not _ours(pin_dir, kernel):
            problems.append(f"{tag}: the interface runs program {kernel}, not one of this state")
        r2 = cli(pin_dir, "attach", netpair.vb, "--netns", netpair.b)
        if r2.returncode != 0:
            problems.append(f"{tag}: the next attach failed: {r2.stderr.strip()}")
            shutil.rmtree(pin_dir, ignore_errors=True)
            if _xdp_prog(netpair.b, netpair.vb):
                sh("ip", "-n", netpair.b, "link", "set", "dev", netpair.vb, "xdp", "off", check=False)
            continue
        problems += _iface_problems(pin_dir, netpair, tag)
        if saved(pin_dir) != View("pass", (), ()):
            problems.append(f"{tag}: save: {saved(pin_dir)}")
        r3 = cli(pin_dir, "detach", netpair.vb, "--netns", netpair.b)
        if r3.returncode != 0 or "state removed" not in r3.stdout:
            problems.append(f"{tag}: detach: {r3.stdout.strip()} {r3.stderr.strip()}")
        if _xdp_prog(netpair.b, netpair.vb) or os.path.exists(pin_dir):
            problems.append(f"{tag}: after detach: program {_xdp_prog(netpair.b, netpair.vb)} attached, "
                            f"pin dir there: {os.path.exists(pin_dir)}")
            shutil.rmtree(pin_dir, ignore_errors=True)
            sh("ip", "-n", netpair.b, "link", "set", "dev", netpair.vb, "xdp", "off", check=False)
        if r.returncode == 0:
            done = True
            break
    assert done or problems, "attach never completed"
    assert not problems, "\n".join(problems)


def _attach_both(pin: str, pair: NetPair) -> None:
    _setup(pin, BASE)
    ok(pin, "attach", pair.vb, "--netns", pair.b)
    ok(pin, "attach", pair.va, "--netns", pair.a)


def _firewall_problems(pin: str, want: View, tag: str, now: View | None = None) -> list[str]:
    """save (``now``: what it shows, read already) against ``want``, the
    datapath against save, set list's counts against the members."""
    from pyxdp import Filter

    now = saved(pin) if now is None else now
    out = [] if now == want else [f"{tag}: {describe(now, want, 'expected')}"]
    with Filter.open(pin, lock=False) as f, f.tester() as t:
        out += [f"{tag}: {p}" for p in datapath_problems(t, now, probes([now], per_set=8))]
    return out + [f"{tag}: {p}" for p in count_problems(pin)]


@pytest.mark.long(20)
def test_attach_reload_killed(pin_dir: str, netpair: NetPair) -> None:
    """`attach --reload` on one of two interfaces, killed after each map
    write, and (simulated: no map write happens there) killed between the
    program replacement and the pin (issue case 3)."""
    from pyxdp import Filter
    from pyxdp.kernel.xdp import Netlink
    from pyxdp.model.modes import XdpMode
    from pyxdp.store.attach import load_programs

    _attach_both(pin_dir, netpair)
    want = saved(pin_dir)
    problems: list[str] = []
    done = False
    for n in range(1, 30):
        r = cli(pin_dir, "attach", netpair.vb, "--netns", netpair.b, "--reload", kill=n)
        tag = f"attach --reload N={n}"
        if r.returncode not in (0, KILLED):
            problems.append(f"{tag}: exit {r.returncode}: {r.stderr.strip()}")
            break
        problems += _iface_problems(pin_dir, netpair, tag + " before recovery")
        for w in (("ban", "-q", UNRELATED), ("unban", "-q", UNRELATED)):
            if cli(pin_dir, *w).returncode != 0:
                problems.append(f"{tag}: next writer {w} failed")
        problems += _iface_problems(pin_dir, netpair, tag)
        problems += _firewall_problems(pin_dir, want, tag)
        if r.returncode == 0:
            done = True
            break
    assert done, "attach --reload never completed"
    # simulated death between the program replacement and the pin
    tag = "attach --reload died after replacing, before pinning (simulated)"
    with Filter.open(pin_dir) as f:
        prog, eprog = load_programs(f.state)
        eprog.close()
        try:
            with Netlink(netpair.b) as nl:
                ifst = nl.state(netpair.vb)
                from pyxdp.kernel.bpf import Program

                with Program.from_id(ifst.prog_id) as old:
                    nl.attach(netpair.vb, prog.fd, ifst.mode or XdpMode.AUTO, replace_fd=old.fd)
            stray = prog.id
        finally:
            prog.close()
    assert _xdp_prog(netpair.b, netpair.vb) == stray
    r = cli(pin_dir, "attach", netpair.vb, "--netns", netpair.b)
    if r.returncode != 0:
        problems.append(f"{tag}: the next attach failed: {r.stderr.strip()}")
    problems += _iface_problems(pin_dir, netpair, tag)
    problems += _firewall_problems(pin_dir, want, tag)
    for dev, ns in ((netpair.va, netpair.a), (netpair.vb, netpair.b)):
        r = cli(pin_dir, "detach", dev, "--netns", ns)
        if r.returncode != 0:
            problems.append(f"{tag}: detach {dev}: {r.stderr.strip()}")
        if _xdp_prog(ns, dev):
            problems.append(f"{tag}: {dev} still runs program {_xdp_prog(ns, dev)} after detach")
    assert not os.path.exists(pin_dir) or problems, "state not removed by the last detach"
    assert not problems, "\n".join(problems)


@pytest.mark.long(45)
def test_detach_killed(pin_dir: str, netpair: NetPair) -> None:
    """`detach` of one of two interfaces, then of the last, killed after each
    map write; and the last detach killed part-way through removing the pins
    (simulated: no map write happens there), then `attach` again."""
    from pyxdp.store.objects import PINNED_MAPS, PROG_PIN

    problems: list[str] = []
    _attach_both(pin_dir, netpair)
    want = saved(pin_dir)
    for dev, ns, last in ((netpair.va, netpair.a, False), (netpair.vb, netpair.b, True)):
        for n in range(1, 30):
            r = cli(pin_dir, "detach", dev, "--netns", ns, kill=n)
            tag = f"detach {dev}{' (last)' if last else ''} N={n}"
            if r.returncode not in (0, KILLED):
                problems.append(f"{tag}: exit {r.returncode}: {r.stderr.strip()}")
                break
            if _xdp_prog(ns, dev) and os.path.exists(os.path.join(pin_dir, "meta")):
                problems += _iface_problems(pin_dir, netpair, tag)
            if r.returncode == 0:
                break
            # the next call: detach again (it must finish the job or say it is done)
            r2 = cli(pin_dir, "detach", dev, "--netns", ns)
            if _xdp_prog(ns, dev):
                problems.append(f"{tag}: after a second detach ({r2.stderr.strip()}) {dev} still runs a program")
            if os.path.exists(os.path.join(pin_dir, "meta")):
                problems += _iface_problems(pin_dir, netpair, tag)
                problems += _firewall_problems(pin_dir, want, tag)
            if last and os.path.exists(pin_dir):
                # the state outlived its last interface: attach must take it up again whole
                r3 = cli(pin_dir, "attach", dev, "--netns", ns)
                if r3.returncode != 0:
                    problems.append(f"{tag}: attach after it failed: {r3.stderr.strip()}")
                else:
                    problems += _firewall_problems(pin_dir, want, tag + " re-attached")
            elif last:  # the state went with it: make it again, on vb only
                _setup(pin_dir, BASE)
                ok(pin_dir, "attach", dev, "--netns", ns)
            else:
                r3 = cli(pin_dir, "attach", dev, "--netns", ns)
                if r3.returncode != 0:
                    problems.append(f"{tag}: attach after it failed: {r3.stderr.strip()}")
                    sh("ip", "-n", ns, "link", "set", "dev", dev, "xdp", "off", check=False)
                    ok(pin_dir, "attach", dev, "--netns", ns)
    # death inside the last detach's removal of the pins, after k unlinks
    names = (*PINNED_MAPS, PROG_PIN)
    for k in (2, 17, 21):
        tag = f"last detach died after {k} unlinks (simulated; last unlinked: {names[k - 1]})"
        for ns, dev in ((netpair.a, netpair.va), (netpair.b, netpair.vb)):
            if _xdp_prog(ns, dev):
                problems.append(f"{tag}: before it, {dev} still ran program {_xdp_prog(ns, dev)}")
                sh("ip", "-n", ns, "link", "set", "dev", dev, "xdp", "off")
        shutil.rmtree(pin_dir, ignore_errors=True)
        _setup(pin_dir, BASE)
        ok(pin_dir, "attach", netpair.vb, "--netns", netpair.b)
        ok(pin_dir, "detach", netpair.vb, "--netns", netpair.b, "--keep")  # what the last detach did first
        for name in names[:k]:
            try:
                os.unlink(os.path.join(pin_dir, name))
            except FileNotFoundError:
                pass
        r = cli(pin_dir, "attach", netpair.vb, "--netns", netpair.b)
        if r.returncode != 0:
            if "incomplete" not in r.stderr and "rm -r" not in r.stderr:
                problems.append(f"{tag}: attach failed without saying what to do: {r.stderr.strip()}")
            if _xdp_prog(netpair.b, netpair.vb):
                problems.append(f"{tag}: attach failed but left program {_xdp_prog(netpair.b, netpair.vb)}")
            shutil.rmtree(pin_dir, ignore_errors=True)
            continue
        problems += _iface_problems(pin_dir, netpair, tag)
        now = saved(pin_dir)
        if now not in (want, View("pass", (), ())):
            problems.append(f"{tag}: re-attached state is neither the old firewall nor an empty one: "
                            f"{describe(now, want, 'old')}")
        problems += _firewall_problems(pin_dir, now, tag)
        problems += [f"{tag}: {p}" for p in storage_problems(pin_dir)]
        cli(pin_dir, "detach", netpair.vb, "--netns", netpair.b)
        shutil.rmtree(pin_dir, ignore_errors=True)
    assert not problems, "\n".join(problems)


# ---- security: files, the verifier log, pin dirs ---------------------------------------------


@pytest.fixture
def victim(tmp_path: Any) -> Iterator[str]:
    path = str(tmp_path / "victim")
    with open(path, "w") as fh:
        fh.write("precious\n")
    os.chmod(path, 0o644)
    yield path


def _untouched(path: str) -> bool:
    st = os.lstat(path)
    with open(path) as fh:
        return stat.S_ISREG(st.st_mode) and fh.read() == "precious\n" and stat.S_IMODE(st.st_mode) == 0o644


def test_save_refuses_a_symlink_target(pin_dir: str, victim: str, tmp_path: Any) -> None:
    _setup(pin_dir, BASE)
    link = str(tmp_path / "out.toml")
    os.symlink(victim, link)
    r = cli(pin_dir, "save", link)
    assert r.returncode == 2, r.stderr
    assert "symlink" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert _untouched(victim) and os.readlink(link) == victim


def test_save_ignores_planted_temporaries(pin_dir: str, victim: str, tmp_path: Any) -> None:
    _setup(pin_dir, BASE)
    out = str(tmp_path / "out.toml")
    planted = [out + ".tmp", out + "~", str(tmp_path / ".out.toml.tmp"), str(tmp_path / ".out.toml.")]
    planted += [str(tmp_path / f".out.toml.{s}") for s in ("XXXXXXXX", "aaaaaaaa", "00000000", "tmp12345")]
    for p in planted:
        os.symlink(victim, p)
    for _ in range(3):  # a new file, then replacing it
        ok(pin_dir, "save", out)
        assert _untouched(victim)
    st = os.lstat(out)
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0
    with open(out) as fh:
        assert view_of_text(fh.read()) == saved(pin_dir)
    for p in planted:
        assert os.readlink(p) == victim
    left = sorted(set(os.listdir(tmp_path)) - {os.path.basename(p) for p in planted} - {"out.toml", "victim"})
    assert not left, f"temporaries left behind: {left}"


def test_verifier_log_is_random_and_private(victim: str) -> None:
    """The CLI writes the verifier's log to a new random 0600 file, never to
    a fixed name (a symlink planted at the old name is left alone)."""
    bad = os.path.join(HERE, "..", "data", "reject.bpf.o")
    ns = f"pxt{RUN}-crashv"
    fixed = "/tmp/pyxdp-verifier.log"
    sh("ip", "netns", "add", ns)
    planted = False
    try:
        sh("ip", "-n", ns, "link", "add", "vx0", "type", "veth", "peer", "name", "vx1")
        sh("ip", "-n", ns, "link", "set", "vx0", "up")
        if not os.path.lexists(fixed):
            os.symlink(victim, fixed)
            planted = True
        paths = []
        for _ in range(2):
            r = cli(None, "load", bad, "vx0", "--netns", ns)
            assert r.returncode == 1, r.stderr
            [line] = r.stderr.strip().splitlines()
            path = line.rsplit("verifier log: ", 1)[1].rstrip(")")
            paths.append(path)
            st = os.lstat(path)
            assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
            assert os.path.basename(path) != "pyxdp-verifier.log"
        assert paths[0] != paths[1]
        assert _untouched(victim)
        for p in paths:
            os.unlink(p)
    finally:
        if planted:
            os.unlink(fixed)
        sh("ip", "netns", "del", ns, check=False)


@pytest.fixture
def foreign_dir() -> Iterator[str]:
    """A pin dir another user (nobody) made first on the bpffs root."""
    path = f"/sys/fs/bpf/pyxdp-t{RUN}-foreign"
    os.mkdir(path, 0o755)
    os.chown(path, NOBODY, NOBODY)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("args", [("--create", "ban", "192.0.2.1"), ("attach", f"pxt{RUN}noif"),
                                  ("ban", "192.0.2.1"), ("list",), ("save",)],
                         ids=["ban-create", "attach", "ban", "list", "save"])
def test_pin_dir_of_another_user_is_refused_and_kept(foreign_dir: str, args: tuple[str, ...]) -> None:
    os.symlink("/sys/fs/bpf", os.path.join(foreign_dir, "cfg"))
    r = cli(foreign_dir, *args)
    assert r.returncode != 0, r.stdout
    [line] = r.stderr.strip().splitlines()
    if "--create" in args or "attach" in args:
        assert f"owned by uid {NOBODY}" in line, line
    st = os.lstat(foreign_dir)
    assert stat.S_ISDIR(st.st_mode) and st.st_uid == NOBODY and stat.S_IMODE(st.st_mode) == 0o755
    assert os.listdir(foreign_dir) == ["cfg"]


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o775])
def test_open_refuses_a_writable_or_foreign_pin_dir(mode: int) -> None:
    from pyxdp import Filter
    from pyxdp.errors import UnsafeState

    path = f"/sys/fs/bpf/pyxdp-t{RUN}-open{mode:o}"
    os.mkdir(path)
    os.chmod(path, mode)
    try:
        with pytest.raises(UnsafeState):
            Filter.open(path, create=True)
        assert stat.S_IMODE(os.lstat(path).st_mode) == mode and os.listdir(path) == []
        os.chmod(path, 0o700)
        os.chown(path, NOBODY, NOBODY)
        with pytest.raises(UnsafeState):
            Filter.open(path, create=True)
        assert os.path.isdir(path) and os.stat(path).st_uid == NOBODY
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_symlinked_pin_dir_is_refused(pin_dir: str) -> None:
    _setup(pin_dir, BASE)
    link = f"/sys/fs/bpf/pyxdp-t{RUN}-link"
    os.symlink(pin_dir, link)
    try:
        for args in (("ban", "192.0.2.5"), ("--create", "ban", "192.0.2.5"), ("attach", f"pxt{RUN}noif")):
            r = cli(link, *args)
            assert r.returncode != 0 and "symlink" in r.stderr, r.stderr
        assert os.path.islink(link) and os.path.isdir(pin_dir)
        assert "192.0.2.5/32" not in saved(pin_dir).set_dict()["banned"]
    finally:
        os.unlink(link)


def test_a_writer_killed_while_holding_the_sweeper_does_not_stop_expiry(pin_dir: str) -> None:
    """Re-banning an element close to expiry holds the kernel's sweeper while
    the change runs. Killed right after setting the hold (its first map
    write), the hold would stop expiry for good: the next writer clears it,
    and an element with a short TTL then leaves kernel memory by itself."""
    from pyxdp import Filter
    from pyxdp import layout as L

    cli(pin_dir, "--create", "ban", "-q", "192.0.2.7", "--ttl", "30")
    r = cli(pin_dir, "ban", "-q", "192.0.2.7", "--ttl", "100", kill=1)  # expiring within the margin: holds
    assert r.returncode == KILLED, r.stderr
    with Filter.open(pin_dir, lock=False) as flt:
        hold = L.SWEEP_CTL.unpack(flt.state.map("sweep_ctl")[L.U32.pack(0)])[2]
    assert hold == 1, "the kill did not land while the sweeper was held"
    assert cli(pin_dir, "ban", "-q", "198.51.100.9", "--ttl", "1").returncode == 0  # recovers first
    with Filter.open(pin_dir, lock=False) as flt:
        assert L.SWEEP_CTL.unpack(flt.state.map("sweep_ctl")[L.U32.pack(0)])[2] == 0
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            keys = [k for k in flt.state.map("elem4")]
            if len(keys) == 1:
                break
            time.sleep(0.2)
        assert len(keys) == 1, "the expired element stayed in kernel memory"
        assert [str(e.prefix) for e in flt.set_members("banned")] == ["192.0.2.7/32"]
        assert [(s.n4, s.n6) for s in flt.sets()] == [(1, 0)]


# ---- up, killed at every change (issue 19, case 1) -----------------------------------------------

UP_GOOD = """policy = "pass"
rules = ["deny proto udp to any port 5002", "deny from @blocked"]
[sets]
blocked = ["192.0.2.0/24", "198.51.100.7 ttl 600"]
"""
UP_NEXT = """policy = "drop"
rules = ["allow proto udp to any port 5001", "deny from @blocked", "allow from @office"]
[sets]
blocked = ["192.0.2.0/24", "203.0.113.0/24"]
office = ["10.77.0.0/24"]
"""
UP_BAD = """policy = "drop"
rules = ["allow 22/tcp"]
"""


def _up_file(text: str, ifaces: Sequence[tuple[str, str, str]]) -> str:
    return text + "".join(f'\n[[interface]]\nname = "{n}"\nnetns = "{ns}"\nmode = "{m}"\n' for n, ns, m in ifaces)


def _xdp_of(ns: str, dev: str) -> tuple[str, int]:
    from pyxdp.kernel.xdp import Netlink

    with Netlink(ns) as nl:
        s = nl.state(dev)
    return (s.mode.value if s.mode else "", int(s.prog_id))


def _no_ttl(text: str) -> str:
    import re

    return re.sub(r" ttl \d+", " ttl N", text)


def _up_state(pin: str, pair: NetPair) -> tuple[str, tuple[tuple[str, int], ...]]:
    """save --all (time left cut out) and what each interface runs (mode, program id)."""
    return _no_ttl(ok(pin, "save", "--all")), _xdp_progs(pair)


def _xdp_progs(pair: NetPair) -> tuple[tuple[str, int], ...]:
    return tuple(_xdp_of(ns, dev) for ns, dev in ((pair.b, pair.vb), (pair.a, pair.va), (pair.b, "lo")))


def _shape_problems(pin: str, progs: Sequence[tuple[str, int]], tag: str) -> list[str]:
    """Each program of this state an interface runs covers the live
    configuration. (Its id may differ from before: an undone change of the
    program's shape, or one a killed writer left part-way, runs another
    program of a covering shape; see pyxdp.store.shapes.)"""
    from pyxdp import Filter
    from pyxdp.errors import BpfError
    from pyxdp.kernel.bpf import Program
    from pyxdp.model.shapes import covers
    from pyxdp.store.shapes import needed, program_shape, uses_state

    out = []
    with Filter.open(pin, lock=False) as f:
        need = needed(f.state, f.config())
        for _mode, pid in progs:
            if not pid or not uses_state(f.state, pid):
                continue
            try:
                with Program.from_id(pid) as p:
                    shape = program_shape(p)
            except BpfError:
                continue  # gone meanwhile
            if not covers(shape, need):
                out.append(f"{tag}: program {pid} ({shape!r}) leaves out a part the live config uses ({need!r})")
    return out


def _saves(pin: str) -> tuple[str, str]:
    """What 'save --all' and 'save' print, made in this process by the code
    they run (cmd_save: a reader's Filter.ruleset(), format_ruleset): a
    kill point costs two fewer processes. _cli_agrees checks them equal."""
    from pyxdp import Filter
    from pyxdp.model.rulefile import format_ruleset

    with Filter.open(pin, lock=False) as f:
        return format_ruleset(f.ruleset(interfaces=True)), format_ruleset(f.ruleset())


def _status_here(pin: str) -> dict[str, Any]:
    """The interfaces 'status --json' lists (all _iface_problems reads of it),
    made in this process by the code cmd_status runs; without readable state
    it lists none, as the command does. _cli_agrees checks it equal."""
    from pyxdp import Filter
    from pyxdp.errors import NotLoaded, UnreadableState

    try:
        flt = Filter.open(pin, lock=False)
    except (NotLoaded, UnreadableState):
        return {"interfaces": []}
    with flt:
        return dict(json.loads(json.dumps({"interfaces": [a.to_dict() for a in flt.interfaces()]})))


def _cli_agrees(pin: str) -> list[str]:
    """The in-process readers of the crash loop say what the commands they
    stand for print: save --all, save, status --json's interfaces."""
    out = []
    all_here, save_here = _saves(pin)
    if (cli_all := _no_ttl(ok(pin, "save", "--all"))) != _no_ttl(all_here):
        out.append(f"save --all printed\n{cli_all}\n--- read in the test:\n{_no_ttl(all_here)}")
    if (cli_view := saved(pin)) != view_of_text(save_here):
        out.append(f"save printed {cli_view}, read in the test: {view_of_text(save_here)}")
    if (cli_st := _status(pin).get("interfaces")) != _status_here(pin)["interfaces"]:
        out.append(f"status --json listed {cli_st}, read in the test: {_status_here(pin)['interfaces']}")
    return out


def _up_killed(pin: str, path: str, n: int, how: str) -> subprocess.CompletedProcess[str]:
    if how == "change":
        return cli(pin, "up", path, kill=n)
    # the method: strace kills it on entering its Nth sendto (every netlink message it sends)
    cmd = ["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=sendto", "-e",
           f"inject=sendto:signal=SIGKILL:when={n}", BIN, "--pin-dir", pin, "up", path]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=120)


class UpLoop(NamedTuple):
    problems: list[str]
    done: int  # the N at which 'up' ended by itself (0: it never did)
    killed: list[int]  # the Ns it was killed at (each checked)


def up_crash_loop(pin: str, pair: NetPair, path: str, how: str, done_rc: int, first: int = 1, step: int = 1,
                  who: str = "") -> UpLoop:
    """Kill ``up path`` at its Nth change (``how``: "change", the kill hook:
    map writes, pins, netlink changes; "sendto": every netlink message) for
    N = first, first + step, ... until it ends by itself with exit ``done_rc``.
    After each kill the next command (a reader, 'status', killed itself
    part-way through putting things back, then once more whole) leaves
    exactly the firewall and interfaces of before (or, when it completed
    with 0, of after): no journal left, status agrees with the kernel, the
    datapath with save. ``who`` starts each problem (which worker)."""
    all_text, _ = _saves(pin)
    before = (_no_ttl(all_text), _xdp_progs(pair))
    want_view = saved(pin)
    problems: list[str] = []
    killed: list[int] = []
    for n in range(first, 400, step):
        r = _up_killed(pin, path, n, how)
        tag = f"{who}up {os.path.basename(path)} killed at {how} {n}"
        if r.returncode not in (KILLED, done_rc):
            problems.append(f"{tag}: exit {r.returncode}: {r.stderr.strip()}")
            break
        if r.returncode == KILLED:
            killed.append(n)
            rk = cli(pin, "status", kill=n % 7 + 1)  # the next command, itself killed while it puts things back
            if rk.returncode not in (0, KILLED):
                problems.append(f"{tag}: the next command: exit {rk.returncode}: {rk.stderr.strip()}")
            rs = cli(pin, "status")
            if rs.returncode != 0:
                problems.append(f"{tag}: status after it: exit {rs.returncode}: {rs.stderr.strip()}")
        if os.path.exists(os.path.join(pin, "up_journal")):
            problems.append(f"{tag}: its journal is still pinned after the next command")
        if r.returncode == 0:
            return UpLoop(problems, n, killed)
        all_text, save_text = _saves(pin)
        now = (_no_ttl(all_text), _xdp_progs(pair))
        if [(m, bool(p)) for m, p in now[1]] != [(m, bool(p)) for m, p in before[1]]:
            problems.append(f"{tag}: the interfaces run {now[1]}, before it they ran {before[1]}")
        problems += _shape_problems(pin, now[1], tag)
        if now[0] != before[0]:
            problems.append(f"{tag}: save --all is not what it was before:\n{now[0]}\n--- before:\n{before[0]}")
        problems += _iface_problems(pin, pair, tag, _status_here)
        problems += _firewall_problems(pin, want_view, tag, view_of_text(save_text))
        if r.returncode == done_rc:
            return UpLoop(problems, n, killed)
        if len(problems) > 20:
            break
    else:
        problems.append(f"{who}up {path}: still killed after 400 {how}s")
    return UpLoop(problems, 0, killed)


# Workers of up_crash_parallel. Each kill point costs ~8 processes and some netlink waits, not
# much CPU of this process. Measured on the shared 2-core machine (load 2-5 from other runs), the
# three up tests' wall time, 2 runs each: K=2 166 s, 125 s; K=3 179 s, 238 s; K=4 158 s, 269 s
# (one worker: 458 s). More workers than cores only add contention here: 2.
UP_WORKERS = 2
_up_runs = itertools.count()


def up_crash_parallel(prepare: Callable[[str, NetPair, str], tuple[str, Any]], how: str, done_rc: int,
                      tmp: str, k: int = UP_WORKERS) -> tuple[list[str], int]:
    """up_crash_loop's kill points shared by ``k`` workers (threads: the
    work is processes and netlink), each with its own namespaces, pin dir
    and config files: worker w (0-based) kills at N = w+1, w+1+k, ... until
    its 'up' ends by itself. ``prepare(pin, pair, dir)`` brings a worker's
    state to the loop's starting point and returns the file to run and the
    _up_state its completed 'up' must leave (None: not checked). Returns
    the problems (each naming its worker and N) and the number of kill
    points (the first N at which 'up' ended by itself), after checking that
    some worker was killed at each N below it."""
    from concurrent.futures import ThreadPoolExecutor

    run = next(_up_runs)

    def worker(w: int) -> UpLoop:
        tag = f"upk{run}w{w}"
        who = f"worker {w + 1}/{k}: "
        pin = f"/sys/fs/bpf/pyxdp-t{RUN}-{tag}"
        names = (f"pxt{RUN}-{tag}a", f"pxt{RUN}-{tag}b")  # NetPair's, removed by name even if it fails part-way
        try:
            pair = NetPair(tag)
            d = os.path.join(tmp, tag)
            os.mkdir(d)
            path, end = prepare(pin, pair, d)
            problems = [f"{who}at the start: {p}" for p in _cli_agrees(pin)]
            res = up_crash_loop(pin, pair, path, how, done_rc, first=w + 1, step=k, who=who)
            problems += res.problems
            if res.done:
                problems += [f"{who}at the end: {p}" for p in _cli_agrees(pin)]
                if end is not None and (now := _up_state(pin, pair)) != end:
                    problems.append(f"{who}up completed at {how} {res.done}: {now}, not {end}")
            return UpLoop(problems, res.done, res.killed)
        except Exception as exc:  # noqa: BLE001 - reported with the worker's name
            return UpLoop([f"{who}{type(exc).__name__}: {exc}"], 0, [])
        finally:
            for ns in names:
                sh("ip", "netns", "del", ns, check=False)
            shutil.rmtree(pin, ignore_errors=True)

    with ThreadPoolExecutor(k) as pool:
        results = list(pool.map(worker, range(k)))
    problems = [p for r in results for p in r.problems]
    dones = [r.done for r in results]
    if 0 in dones:
        return problems + [f"'up' never ended by itself (or its loop stopped) in worker(s) "
                           f"{[w + 1 for w, d in enumerate(dones) if not d]}"], 0
    points = min(dones)
    covered = {n for r in results for n in r.killed}
    missed = [n for n in range(1, points) if n not in covered]
    if missed:
        problems.append(f"{how}s {missed} were never killed at (up ended by itself at {dones} in the workers)")
    if len(set(dones)) > 1:
        print(f"{how}: the workers' 'up' ended by itself at {dones}")
    return problems, points


@pytest.mark.long(60)
@pytest.mark.parametrize("how", ["change", "sendto"])
def test_failing_up_killed_at_every_step_is_undone(tmp_path: Any, how: str) -> None:
    """The issue's case: 'up good.toml' runs; 'up bad.toml' (a new interface,
    then an offload mode the veth refuses, so it fails and undoes) killed at
    every step, its undo included: after the next command the interface runs
    good.toml's rules with its program attached, never no program, never
    bad.toml's rules."""

    def prepare(pin: str, pair: NetPair, d: str) -> tuple[str, Any]:
        good = os.path.join(d, "good.toml")
        with open(good, "w") as fh:
            fh.write(_up_file(UP_GOOD, [(pair.vb, pair.b, "native")]))
        bad = os.path.join(d, "bad.toml")
        with open(bad, "w") as fh:
            fh.write(_up_file(UP_BAD, [(pair.va, pair.a, "generic"), (pair.vb, pair.b, "offload")]))
        ok(pin, "up", good)
        r = cli(pin, "up", bad)
        assert r.returncode == 1 and "offload" in r.stderr, r.stderr
        return bad, None

    problems, points = up_crash_parallel(prepare, how, done_rc=1, tmp=str(tmp_path))
    print(f"{how}: {points} kill points")
    assert points > 10 and not problems, "\n".join(problems[:20])


@pytest.mark.long(60)
def test_up_killed_at_every_change_is_finished_or_undone(tmp_path: Any) -> None:
    """A good 'up' that applies, attaches one interface, attaches another in
    another mode and detaches a third, killed after each change (map write,
    pin, netlink change): the next command leaves the whole of before, never
    a mix (new rules on the old interfaces)."""

    def prepare(pin: str, pair: NetPair, d: str) -> tuple[str, Any]:
        good = os.path.join(d, "good.toml")
        with open(good, "w") as fh:
            fh.write(_up_file(UP_GOOD, [(pair.vb, pair.b, "native"), ("lo", pair.b, "generic")]))
        nxt = os.path.join(d, "next.toml")
        with open(nxt, "w") as fh:
            fh.write(_up_file(UP_NEXT, [(pair.vb, pair.b, "generic"), (pair.va, pair.a, "native")]))
        ok(pin, "up", good)
        before = _up_state(pin, pair)
        ok(pin, "up", nxt)
        after = _up_state(pin, pair)
        assert after[1][0][0] == "generic" and after[1][1][0] == "native" and after[1][2] == ("", 0), after
        ok(pin, "up", good)
        assert _up_state(pin, pair) == before
        return nxt, after

    problems, points = up_crash_parallel(prepare, "change", done_rc=0, tmp=str(tmp_path))
    print(f"change: {points} kill points")
    assert points > 10 and not problems, "\n".join(problems[:20])


# ---- records that tell the truth; state that cannot be read (issue 19, cases 2 and 4) --------------


def test_status_says_what_runs_after_a_reload_killed_before_its_record(pin_dir: str, netpair: NetPair,
                                                                       tmp_path: Any) -> None:
    """`attach --reload` killed (strace, on entering the syscall) at its last
    BPF_MAP_UPDATE_ELEM, after the netlink replace: status says the interface
    runs this state's new program, not "NOT attached any more", and names the
    command that makes the record true."""
    ok(pin_dir, "attach", netpair.vb, "--netns", netpair.b)
    reload = [BIN, "--pin-dir", pin_dir, "attach", netpair.vb, "--netns", netpair.b, "--reload"]
    trace = tmp_path / "trace"
    r = subprocess.run(["strace", "-qq", "-e", "trace=bpf", "-o", str(trace), *reload], capture_output=True,
                       text=True, env=_env(), timeout=120)
    assert r.returncode == 0, r.stderr
    calls = [ln for ln in trace.read_text().splitlines() if ln.startswith("bpf(")]
    last = max(i for i, ln in enumerate(calls) if ln.startswith("bpf(BPF_MAP_UPDATE_ELEM")) + 1
    before = _xdp_prog(netpair.b, netpair.vb)
    r = subprocess.run(["strace", "-qq", "-o", "/dev/null", "-e", "trace=bpf", "-e",
                        f"inject=bpf:signal=SIGKILL:when={last}", *reload], capture_output=True, text=True,
                       env=_env(), timeout=120)
    assert r.returncode == KILLED, r.stderr
    kernel = _xdp_prog(netpair.b, netpair.vb)
    assert kernel and kernel != before and _ours(pin_dir, kernel)
    [a] = _status(pin_dir)["interfaces"]
    assert a["attached"] and a["prog_id"] == kernel and a["recorded_prog_id"] == before, a
    text = ok(pin_dir, "status")
    assert "NOT attached" not in text and f"program id {kernel}" in text
    assert f"'pyxdp-load attach {netpair.vb} --netns {netpair.b}' records what runs" in text
    ok(pin_dir, "attach", netpair.vb, "--netns", netpair.b)
    [a] = _status(pin_dir)["interfaces"]
    assert a["attached"] and a["prog_id"] == _xdp_prog(netpair.b, netpair.vb) and not a["recorded_prog_id"]
    assert not a["interrupted"]


def test_detach_killed_after_its_netlink_call_says_so(pin_dir: str, netpair: NetPair) -> None:
    """`detach` killed right after taking the program off (the kill hook
    counts netlink changes): status says the interface is not attached and
    that a change of it was killed, with the commands that finish it."""
    from pyxdp.store.objects import PINNED_MAPS

    ok(pin_dir, "attach", netpair.vb, "--netns", netpair.b)
    ok(pin_dir, "attach", netpair.va, "--netns", netpair.a)
    for n in range(1, 30):
        r = cli(pin_dir, "detach", netpair.vb, "--netns", netpair.b, kill=n)
        if r.returncode == 0:
            pytest.fail("detach completed before its program was off and its record still there")
        assert r.returncode == KILLED, r.stderr
        if not _xdp_prog(netpair.b, netpair.vb):
            break
    a = {x["ifname"]: x for x in _status(pin_dir)["interfaces"]}[netpair.vb]
    assert not a["attached"] and a["interrupted"], a
    text = ok(pin_dir, "status")
    assert f"'pyxdp-load detach {netpair.vb} --netns {netpair.b}' forgets it" in text
    ok(pin_dir, "detach", netpair.vb, "--netns", netpair.b)
    assert [x["ifname"] for x in _status(pin_dir)["interfaces"]] == [netpair.va]
    assert all(os.path.exists(os.path.join(pin_dir, m)) for m in PINNED_MAPS)


def test_unreadable_state_is_reported_with_its_interfaces_and_kept(pin_dir: str, netpair: NetPair) -> None:
    """A zeroed layout word in meta: status and list say the state cannot be
    read and name the interface still running its program (never "holds no
    state", never "attach IFACE starts afresh"); attach and detach refuse and
    remove nothing; 'attach --force' makes new state in its place."""
    from pyxdp.kernel.bpf import Map
    from pyxdp.layout import U32

    ok(pin_dir, "attach", netpair.vb, "--netns", netpair.b)
    ok(pin_dir, "deny", "proto", "udp", "to", "any", "port", "5002")
    prog = _xdp_prog(netpair.b, netpair.vb)
    with Map.from_pin(os.path.join(pin_dir, "meta")) as meta:
        raw = meta.lookup(U32.pack(0))
        assert raw is not None
        meta.update(U32.pack(0), bytes(4) + raw[4:])
    names = sorted(os.listdir(pin_dir))
    running = f"{netpair.vb} (netns {netpair.b}) runs its program {prog}"
    for args in (("status",), ("list",), ("save",), ("ban", "192.0.2.9")):
        r = cli(pin_dir, *args)
        out = r.stdout + r.stderr
        assert r.returncode == 1, (args, out)
        assert "cannot be read" in out and running in out, (args, out)
        assert "holds no state" not in out and "starts afresh" not in out and "rm -r" not in out, (args, out)
    st = _status(pin_dir)
    assert st["loaded"] is False and st["running"] == [running] and "cannot be read" in st["unreadable"]
    for args in (("attach", netpair.vb, "--netns", netpair.b), ("attach", netpair.va, "--netns", netpair.a),
                 ("detach", netpair.vb, "--netns", netpair.b), ("--create", "allow", "22/tcp")):
        r = cli(pin_dir, *args)
        assert r.returncode == 1 and "cannot be read" in r.stderr and running in r.stderr, (args, r.stderr)
        assert sorted(os.listdir(pin_dir)) == names, args
        assert _xdp_prog(netpair.b, netpair.vb) == prog and not _xdp_prog(netpair.a, netpair.va)
    # the explicit way out: new state in its place, its program on the interface
    r = cli(pin_dir, "attach", netpair.vb, "--netns", netpair.b, "--force")
    assert r.returncode == 0, r.stderr
    new = _xdp_prog(netpair.b, netpair.vb)
    assert new != prog and _ours(pin_dir, new)
    [a] = _status(pin_dir)["interfaces"]
    assert a["attached"] and a["prog_id"] == new
