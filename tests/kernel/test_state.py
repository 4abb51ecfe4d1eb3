"""Pinned state: it outlives the process that made it (rules, sets, element
timeouts, policy), another process sees and changes it, concurrent writers
do not lose each other's changes, a writer waiting for the lock says so and
gives up after $PYXDP_LOCK_TIMEOUT, and a Filter dropped without close()
warns and lets go of the lock."""

from __future__ import annotations

import fcntl
import gc
import os
import subprocess
import sys
import textwrap
import time

import pytest
from helpers import packets as P
from helpers.env import needs_root

from pyxdp import Filter, LockTimeout, Verdict

pytestmark = needs_root

BIN = os.path.join(os.path.dirname(sys.executable), "pyxdp-load")


def env(**extra: str) -> dict[str, str]:
    e = dict(os.environ)  # PYTHONPATH passes through: children run the source tree
    for k in ("PYXDP_DEBUG", "PYXDP_PIN_DIR", "PYXDP_LOCK_TIMEOUT", "PYXDP_TEST_KILL_AFTER"):
        e.pop(k, None)
    e.update(extra)
    return e


def py(code: str) -> str:
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60,
                       env=env())
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_state_survives_the_process_and_another_process_changes_it(pin_dir: str) -> None:
    py(f"""
        from pyxdp import Filter, Verdict
        with Filter.open({pin_dir!r}, create=True) as f:
            f.set_add("office", ["192.0.2.0/24", "2001:db8:20::/48"])
            f.set_add("office", ["198.51.100.0/24"], ttl=600)
            f.allow("proto tcp from @office to any port 22")
            f.deny("22/tcp")
            f.ban(["203.0.113.7"], ttl=3600)
            f.set_policy(Verdict.DROP)
            f.program()   # loaded and pinned, not attached anywhere
    """)
    out = py(f"""
        from pyxdp import Filter
        with Filter.open({pin_dir!r}) as f:
            print(f.policy.label)
            for r in f.rules():
                print(r.number, r.rule, sep="|")
            for e in f.set_members("office"):
                print(e.prefix, e.expires_in, sep="|")
            f.allow("from 192.0.2.7")
            f.unban(["203.0.113.7"])
            f.ban(["203.0.113.8"])
    """).splitlines()
    assert out[:4] == ["drop", "1|deny from @banned", "2|allow proto tcp from @office to any port 22",
                       "3|deny proto tcp to any port 22"]
    elems = dict(line.split("|") for line in out[4:])
    assert elems["192.0.2.0/24"] == "None" and elems["2001:db8:20::/48"] == "None"
    assert 590 < float(elems["198.51.100.0/24"]) <= 600
    with Filter.open(pin_dir, lock=False) as f:
        assert f.policy is Verdict.DROP
        assert [str(r.rule) for r in f.rules()] == ["deny from @banned", "allow proto tcp from @office to any port 22",
                                                    "deny proto tcp to any port 22", "allow from 192.0.2.7/32"]
        [banned] = f.set_members("banned")
        assert (str(banned.prefix), banned.expires_in) == ("203.0.113.8/32", None)
        assert {s.name: (s.n4, s.n6) for s in f.sets()} == {"office": (2, 1), "banned": (1, 0)}
        with f.program() as prog:  # the pinned program sees the other process's rules
            assert prog.test_run(P.tcp4("198.51.100.9", 22)).retval == 2  # XDP_PASS: @office, rule 2
            assert prog.test_run(P.tcp4("10.0.0.1", 22)).retval == 1  # XDP_DROP: rule 3
            assert prog.test_run(P.udp4("192.0.2.7")).retval == 2  # rule 4
            assert prog.test_run(P.udp4("203.0.113.7")).retval == 1  # unbanned; the policy drops
            assert prog.test_run(P.udp4("203.0.113.8", dport=9)).retval == 1  # banned
        with f.tester() as t:
            assert t.run(P.udp4("203.0.113.8")).event.rule == 1  # type: ignore[union-attr]
            assert t.run(P.udp4("192.0.2.7")).event.rule == 4  # type: ignore[union-attr]


def test_concurrent_writers_do_not_lose_changes(pin_dir: str) -> None:
    """12 processes at once, each banning 20 prefixes and unbanning one
    banned before: every change lands, and 'deny from @banned' is inserted
    once, not by each."""
    with Filter.open(pin_dir, create=True) as f:
        f.set_add("banned", [f"10.100.{i}.0/24" for i in range(12)])
        f.allow("22/tcp")
    procs = [
        subprocess.Popen(
            ["sh", "-ec", f'"$0" --pin-dir "$1" ban -q {" ".join(f"10.{i}.{j}.0/24" for j in range(20))}; '
                          f'"$0" --pin-dir "$1" unban -q 10.100.{i}.0/24', BIN, pin_dir],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
        for i in range(12)
    ]
    notes = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        notes += [ln for ln in out.splitlines() if "inserted" in ln]
    assert notes == ["rule 1: deny from @banned (inserted: no rule used that set yet)"]
    with Filter.open(pin_dir, lock=False) as f:
        got = {str(e.prefix) for e in f.set_members("banned")}
        assert got == {f"10.{i}.{j}.0/24" for i in range(12) for j in range(20)}
        assert [(s.name, s.n4, s.n6) for s in f.sets()] == [("banned", 240, 0)]
        assert [str(r.rule) for r in f.rules()] == ["deny from @banned", "allow proto tcp to any port 22"]
        with f.tester() as t:
            assert t.run(P.udp4("10.11.19.200")).verdict is Verdict.DROP
            assert t.run(P.udp4("10.100.3.1")).verdict is Verdict.PASS


def test_a_waiting_writer_says_so_and_gives_up_after_the_timeout(pin_dir: str) -> None:
    with Filter.open(pin_dir, create=True) as holder:
        # gives up: exit 1, the waiting note, then one error line
        r = subprocess.run([BIN, "--pin-dir", pin_dir, "ban", "192.0.2.1"], capture_output=True, text=True,
                           timeout=30, env=env(PYXDP_LOCK_TIMEOUT="1"))
        assert r.returncode == 1 and "Traceback" not in r.stderr
        waiting, error = r.stderr.strip().splitlines()
        assert waiting.startswith("pyxdp: waiting for another pyxdp writer") and f"with {pin_dir}" in waiting
        assert f"(pid {os.getpid()})" in waiting
        assert error.startswith("pyxdp-load: error: ") and "PYXDP_LOCK_TIMEOUT" in error and "over 1 s" in error
        # readers take no lock: they answer at once
        r = subprocess.run([BIN, "--pin-dir", pin_dir, "list", "--json"], capture_output=True, text=True,
                           timeout=30, env=env(PYXDP_LOCK_TIMEOUT="0"))
        assert r.returncode == 0 and r.stderr == "", r.stderr
        r = subprocess.run([BIN, "--pin-dir", pin_dir, "ban", "192.0.2.1"], capture_output=True, text=True,
                           timeout=30, env=env(PYXDP_LOCK_TIMEOUT="soon"))
        assert r.returncode == 2 and r.stderr.startswith("pyxdp-load: error: PYXDP_LOCK_TIMEOUT must be")
        # waits, says so at once, and goes on when the lock is free
        w = subprocess.Popen([BIN, "--pin-dir", pin_dir, "ban", "192.0.2.2"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env())
        try:
            assert w.stderr is not None
            assert w.stderr.readline().startswith("pyxdp: waiting for another pyxdp writer")
            assert w.poll() is None
            holder.set_policy(Verdict.DROP)  # the holder still works meanwhile
        finally:
            holder.close()
            out, err = w.communicate(timeout=30)
    assert w.returncode == 0, err
    assert "banned 1 new element" in out
    with Filter.open(pin_dir, lock=False) as f:
        assert [str(e.prefix) for e in f.set_members("banned")] == ["192.0.2.2/32"]
        assert f.policy is Verdict.DROP


def test_a_filter_dropped_without_close_warns_and_releases_the_lock(pin_dir: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYXDP_LOCK_TIMEOUT", "0")
    f = Filter.open(pin_dir, create=True)
    f.deny("22")
    with pytest.raises(LockTimeout):
        Filter.open(pin_dir)
    with pytest.warns(ResourceWarning, match=f"unclosed pyxdp Filter on {pin_dir}"):
        del f
        gc.collect()
    r = subprocess.run([BIN, "--pin-dir", pin_dir, "deny", "23"], capture_output=True, text=True, timeout=30,
                       env=env(PYXDP_LOCK_TIMEOUT="0"))
    assert r.returncode == 0 and r.stderr == "", r.stderr
    with Filter.open(pin_dir) as g:
        assert [str(r.rule) for r in g.rules()] == ["deny to any port 22", "deny to any port 23"]


def test_lock_is_exclusive(pin_dir: str) -> None:
    with Filter.open(pin_dir, create=True):
        fd = os.open(pin_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    fd = os.open(pin_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released by close
    finally:
        os.close(fd)


def test_bpffs_is_mounted_when_missing(tmp_path: object) -> None:
    """ensure_bpffs mounts a bpffs (mode 0700) where none is (shown on a
    scratch mount point: the host's /sys/fs/bpf is left alone)."""
    from pyxdp.kernel.bpffs import ensure_bpffs, is_bpffs

    point = os.path.join(str(tmp_path), "bpf")
    os.mkdir(point)
    assert not is_bpffs(point)
    try:
        ensure_bpffs(point)
        assert is_bpffs(point)
        assert os.stat(point).st_mode & 0o777 == 0o700
        ensure_bpffs(point)  # already mounted: nothing to do
        with Filter.open(os.path.join(point, "state"), create=True) as f:
            f.deny("from 192.0.2.0/24")
            f.ban(["198.51.100.1"], ttl=60)
            assert [str(r.rule) for r in f.rules()] == ["deny from @banned", "deny from 192.0.2.0/24"]
    finally:
        for _ in range(20):
            if subprocess.run(["umount", point], check=False, capture_output=True).returncode == 0:
                break
            time.sleep(0.05)
    assert not is_bpffs(point)


def test_ttl_through_the_api_is_clamped_like_the_cli_and_a_negative_one_refused(flt: Filter) -> None:
    """The CLI's parse_ttl clamps to MAX_TTL and refuses '-5'; Filter.ban /
    set_add must not raise struct.error on a big TTL nor silently add an
    element that is expired already."""
    from pyxdp import UsageError
    from pyxdp.model.prefix import MAX_TTL

    flt.ban(["192.0.2.1"], ttl=10**12)
    [el] = flt.set_members("banned")
    assert el.expires_in is not None and MAX_TTL - 5 < el.expires_in <= MAX_TTL
    with pytest.raises(UsageError):
        flt.ban(["192.0.2.2"], ttl=-1)
    with pytest.raises(UsageError):
        flt.set_add("s", ["192.0.2.3"], ttl=-1)


def test_state_of_another_layout_version_is_refused(pin_dir: str) -> None:
    """Issue 9 case 7: state whose layout record says another version (an enum
    renumbered, a field moved: map shapes alone would not tell) is refused,
    by the API and by the CLI (one line, exit 1), and nothing is changed."""
    from pyxdp import IncompatibleMap
    from pyxdp import layout as L
    from pyxdp.kernel.bpf import Map

    with Filter.open(pin_dir, create=True) as flt:
        flt.add_rule("deny 22/tcp")
    with Map.from_pin(os.path.join(pin_dir, "meta")) as meta:
        raw = meta[L.U32.pack(0)]
        _layout, words, build = L.META.unpack(raw)
        meta.update(L.U32.pack(0), L.META.pack(L.PYXDP_LAYOUT + 1, words, build))
        with pytest.raises(IncompatibleMap, match=f"layout version {L.PYXDP_LAYOUT + 1}"):
            Filter.open(pin_dir)
        r = subprocess.run([BIN, "--pin-dir", pin_dir, "allow", "80/tcp"], capture_output=True, text=True, env=env())
        assert r.returncode == 1 and r.stderr.count("\n") == 1 and "layout version" in r.stderr, r.stderr
        meta.update(L.U32.pack(0), raw)
    with Filter.open(pin_dir) as flt:
        assert [str(r.rule) for r in flt.rules()] == ["deny proto tcp to any port 22"]


@pytest.mark.long(10)
def test_testers_dropped_without_close_warn_and_release_what_they_hold(flt: Filter) -> None:
    """Issue 9 case 8: testers left unclosed (a loaded program and a 1 MiB ring
    each) warn when collected and free what they hold: memory stays flat."""

    def rss_kib() -> int:
        with open("/proc/self/status") as fh:
            return next(int(ln.split()[1]) for ln in fh if ln.startswith("VmRSS:"))

    for _ in range(5):  # warm up
        flt.tester().close()
    gc.collect()
    before = rss_kib()
    with pytest.warns(ResourceWarning, match="unclosed pyxdp Tester"):
        for _ in range(60):
            t = flt.tester()
            t.run(P.udp4("192.0.2.1"))
            del t
            gc.collect()
    grown = rss_kib() - before
    assert grown < 30 * 1024, f"RSS grew by {grown} KiB over 60 unclosed testers"


def test_a_failed_first_ban_leaves_neither_rule_nor_set(pin_dir: str) -> None:
    """A ban that fails (here: the element maps are full) changes nothing:
    the 'deny from @banned' rule and the set it made for itself go again."""
    from pyxdp import MapFull

    with Filter.open(pin_dir, create=True, capacity=2) as flt:
        with pytest.raises(MapFull):
            flt.ban(["192.0.2.1", "192.0.2.2", "192.0.2.3"])
        assert flt.rules() == [] and flt.sets() == []
        flt.set_add("keep", ["192.0.2.1"])
        with pytest.raises(MapFull):
            flt.set_add("new", ["198.51.100.1", "198.51.100.2"])
        assert [s.name for s in flt.sets()] == ["keep"]
        assert flt.ban(["192.0.2.9"]).rule == 1  # and a ban that fits works


def test_grace_period_goes_through_the_map_in_map(flt: Filter) -> None:
    """The control plane's RCU grace period is the kernel's synchronize_rcu
    after a map-in-map update (not membarrier, which skips it on one CPU):
    after it, rcu_sync holds rcu_token."""
    from pyxdp import layout as L
    from pyxdp.store.clock import grace_period

    st = flt.state
    grace_period(st)
    inner_id = L.U32.unpack(st.map("rcu_sync")[L.U32.pack(0)])[0]  # a map-in-map lookup gives the inner map's id
    assert inner_id == st.map("rcu_token").id


def test_reapplying_a_set_unchanged_keeps_it_in_place(pin_dir: str) -> None:
    """apply writes each set beside the one it replaces, which needs room for
    both; a set whose elements did not change keeps its id instead (and its
    hit counters), and takes the file's timeouts. Here the element maps hold
    64 elements: a 40-element set re-applied from 'save' still fits."""
    from pyxdp import format_ruleset, parse_ruleset

    with Filter.open(pin_dir, create=True, capacity=64) as flt:
        flt.set_add("big", [f"10.0.{i}.0/24" for i in range(40)], ttl=600)
        flt.add_rule("deny from @big")
        sid = flt.sets()[0].id
        prog = flt.program()
        assert prog.test_run(P.udp4("10.0.3.9")).retval == 1  # XDP_DROP, and a hit on 10.0.3.0/24
        prog.close()
        text = format_ruleset(flt.ruleset())
        spec = parse_ruleset(text.replace("ttl 600", "ttl 7200").replace("ttl 599", "ttl 7200"))
        flt.apply(spec)  # same elements: kept in place
        (st,) = flt.sets()
        assert (st.id, st.n4) == (sid, 40)
        members = {str(e.prefix): e for e in flt.set_members("big")}
        assert members["10.0.3.0/24"].hits == 1
        assert all(e.expires_in is not None and e.expires_in > 7000 for e in members.values())
        changed = parse_ruleset(text.replace('"10.0.39.0/24', '"10.1.39.0/24'))
        with pytest.raises(Exception, match="room for both"):  # a changed set is written beside the old one
            flt.apply(changed)
        assert flt.sets()[0].id == sid and len(flt.set_members("big")) == 40  # nothing changed


def test_a_rule_list_with_a_text_twice_gets_an_id_for_each_copy(flt: Filter) -> None:
    """Two rules of one canonical text ('deny 0' and 'deny in to any port 0:0'; the model tests make
    such lists) where the live list has one: the second copy takes a new id (it once found no id left)."""
    from pyxdp import RuleSetSpec, parse_rule

    r = parse_rule("deny 0")
    flt.apply(RuleSetSpec((r,), {}))
    [first] = flt.rules()
    flt.apply(RuleSetSpec((r, parse_rule("deny in to any port 0:0")), {}))
    rules = flt.rules()
    assert [str(x.rule) for x in rules] == ["deny to any port 0"] * 2
    assert rules[0].id == first.id and rules[1].id != first.id
