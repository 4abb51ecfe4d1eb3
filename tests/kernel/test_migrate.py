"""Upgrade without loss (issue 11, item 2): state made by pyxdp 0.2.0
(layout 2) is migrated in place by ``attach --reload`` and ``up``.

The layout-2 state is real: pyxdp 0.2.0 itself (``git archive`` of its
commit; its ``xdp_filter.bpf.o`` is the layout-2 object) attaches to a veth
in a test namespace and fills it through its own CLI. The tests check that
the migration keeps every rule, set, element, timeout and hit counter; that
a sender blasting UDP from a banned source during it gets nothing through
while an allowed one does, and that the drop counters account for it; that a
SIGKILL after each of its map writes (and, simulated, between its other
steps) leaves state the next ``attach --reload`` finishes, with the same
result; that ``up`` migrates too; and that every other command refuses old
state with one line naming the command to run."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import pytest
from helpers import packets as P
from helpers.env import NetPair, needs_root, sh
from helpers.traffic import sock

pytestmark = needs_root

HERE = os.path.dirname(os.path.abspath(__file__))
TREE = os.path.dirname(os.path.dirname(HERE))
BIN = os.path.join(os.path.dirname(sys.executable), "pyxdp-load")
OLD_COMMIT = "fa254f4"  # pyxdp 0.2.0: state layout 2
OLD3_COMMIT = "7e57cc5"  # the last of layout 3: connection state, no reply guard
KILLED = -signal.SIGKILL
BANNED = "10.77.0.11"  # a second address of the sender's veth, banned
ALLOWED = "10.77.0.1"
XDP_DROP, XDP_PASS = 1, 2
CURRENT = 4  # the layout this pyxdp writes (bpf/pyxdp.h PYXDP_LAYOUT)

OLD_FIREWALL = """\
policy = "drop"
rules = [
    "deny from @banned",
    "allow proto udp from 10.77.0.1 to any port 5002",
    "allow proto tcp from @office to any port 443",
    "deny 22/tcp",
]

[sets]
banned = [
    "10.77.0.11/32 ttl 3600",
    "198.51.100.7/32",
    "2001:db8:dead::/48 ttl 7200",
]
office = [
    "192.0.2.0/24",
    "2001:db8:10::/48",
]
"""

# Sends and counts UDP inside a namespace (run with `ip netns exec NS python -c TRAFFIC MODE ...`):
#   send SRC DST PORT COUNT   COUNT datagrams from SRC
#   blast DST                 from BANNED to DST:5001 and (one in 8) from ALLOWED to DST:5002, as fast as it can,
#                             each datagram carrying the phase the test last wrote on stdin (a number) until
#                             "stop"; prints [[banned, allowed] per phase] sent (IP_RECVERR: a datagram the
#                             veth dropped fails and is not counted)
#   recv                      counts datagrams on 5001 and 5002 per phase until "stop" (and 0.3 s more)
TRAFFIC = r"""
import json, select, socket, sys, time
mode, args = sys.argv[1], sys.argv[2:]
IP_RECVERR = 11

def sock(src):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_IP, IP_RECVERR, 1)
    s.bind((src, 0))
    return s

if mode == "send":
    s = sock(args[0])
    for _ in range(int(args[3])):
        s.sendto(b"\0", (args[1], int(args[2])))
        time.sleep(0.001)
elif mode == "blast":
    bad, good = sock("@BANNED@"), sock("@ALLOWED@")
    sent = [[0, 0] for _ in range(3)]
    phase, i = 0, 0
    print("go", flush=True)
    while True:
        if i % 64 == 0 and select.select([sys.stdin], [], [], 0)[0]:
            line = sys.stdin.readline().strip()
            if line in ("", "stop"):
                break
            phase = int(line)
        i += 1
        k = 1 if i % 8 == 0 else 0
        try:
            (good if k else bad).sendto(bytes([phase]), (args[0], 5002 if k else 5001))
            sent[phase][k] += 1
        except OSError:
            pass
    print(json.dumps(sent), flush=True)
else:
    socks = {}
    for port in (5001, 5002):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        s.bind(("0.0.0.0", port))
        s.setblocking(False)
        socks[s] = port
    got = {5001: [0, 0, 0], 5002: [0, 0, 0]}
    print("ready", flush=True)
    end = None
    while end is None or time.monotonic() < end:
        ready = select.select(list(socks) + ([sys.stdin] if end is None else []), [], [], 0.1)[0]
        for s in ready:
            if s is sys.stdin:
                sys.stdin.readline()
                end = time.monotonic() + 0.3
                continue
            while True:
                try:
                    data = s.recv(64)
                except BlockingIOError:
                    break
                got[socks[s]][data[0] if data and data[0] < 3 else 0] += 1
    print(json.dumps(got), flush=True)
""".replace("@BANNED@", BANNED).replace("@ALLOWED@", ALLOWED)


# ---- the two versions' command lines ------------------------------------------------------------


def _archive(tmp_path_factory: pytest.TempPathFactory, commit: str, what: str) -> str:
    """The package of an older pyxdp (``commit``), from this repository's history."""
    try:
        r = subprocess.run(["git", "-C", TREE, "rev-parse", "--verify", "-q", f"{commit}^{{commit}}"],
                           capture_output=True, text=True)
    except OSError:
        pytest.skip(f"git is not installed: the {what} state is made by an older pyxdp from this repository's history")
    if r.returncode != 0:
        pytest.skip(f"{TREE} is not a git checkout holding commit {commit}, which makes the {what} state these "
                    "tests migrate")
    dest = tmp_path_factory.mktemp(f"pyxdp-{commit}")
    archive = subprocess.run(["git", "-C", TREE, "archive", commit, "pyxdp"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    assert os.path.isfile(os.path.join(dest, "pyxdp", "xdp_filter.bpf.o"))
    return str(dest)


@pytest.fixture(scope="module")
def old_pkg(tmp_path_factory: pytest.TempPathFactory) -> str:
    """pyxdp 0.2.0's package (layout 2)."""
    return _archive(tmp_path_factory, OLD_COMMIT, "layout-2")


@pytest.fixture(scope="module")
def old3_pkg(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The last pyxdp of layout 3 (connection state without the reply guard)."""
    return _archive(tmp_path_factory, OLD3_COMMIT, "layout-3")


def _env(pythonpath: str, kill: int | None = None) -> dict[str, str]:
    e = dict(os.environ)
    for k in ("PYXDP_DEBUG", "PYXDP_TEST_KILL_AFTER", "PYXDP_PIN_DIR", "PYXDP_LOCK_TIMEOUT", "SUDO_UID",
              "PYXDP_CONFIG"):
        e.pop(k, None)
    e["PYTHONPATH"] = pythonpath
    if kill is not None:
        e["PYXDP_TEST_KILL_AFTER"] = str(kill)
    return e


def old(pkg: str, pin: str, *args: str) -> str:
    """Run pyxdp 0.2.0's CLI (from its own directory: `-m` puts the cwd first on sys.path)."""
    r = subprocess.run([sys.executable, "-m", "pyxdp.cli", "--pin-dir", pin, *args], capture_output=True,
                       text=True, env=_env(pkg), cwd=pkg, timeout=60)
    assert r.returncode == 0, ("pyxdp 0.2.0", args, r.stdout, r.stderr)
    return r.stdout


def new(pin: str, *args: str, kill: int | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BIN, "--pin-dir", pin, *args], capture_output=True, text=True, env=_env(TREE, kill),
                          timeout=60)


def ok(pin: str, *args: str) -> str:
    r = new(pin, *args)
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r.stdout


def jlines(text: str) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in text.splitlines() if ln.strip()]


def make_old_state(pkg: str, pin: str, pair: NetPair, tmp: str, both: bool = False) -> None:
    """Layout-2 state made by pyxdp 0.2.0: attached to vb (and va), the firewall of OLD_FIREWALL."""
    old(pkg, pin, "attach", pair.vb, "--netns", pair.b)
    if both:
        old(pkg, pin, "attach", pair.va, "--netns", pair.a)
    path = os.path.join(tmp, "old.toml")
    with open(path, "w") as fh:
        fh.write(OLD_FIREWALL)
    old(pkg, pin, "apply", path)


# ---- what the kernel runs --------------------------------------------------------------------------


def layout_of(pin: str) -> int:
    from pyxdp import layout as L
    from pyxdp.kernel.bpf import Map

    with Map.from_pin(os.path.join(pin, "meta")) as m:
        return int(L.META.unpack(m[L.U32.pack(0)])[0])


def xdp_prog(ns: str, dev: str) -> int:
    from pyxdp.kernel.xdp import Netlink

    with Netlink(ns) as nl:
        return int(nl.state(dev).prog_id)


def egress_progs(ns: str, dev: str) -> list[int]:
    """Ids of the bpf programs on the interface's tc egress hook."""
    out = sh("tc", "-n", ns, "filter", "show", "dev", dev, "egress", check=False).stdout
    return [int(m) for m in re.findall(r"\bid (\d+)", out)]


def has_clsact(ns: str, dev: str) -> bool:
    return "clsact" in sh("tc", "-n", ns, "qdisc", "show", "dev", dev).stdout


def pinned_id(pin: str, name: str) -> int:
    from pyxdp.kernel.bpf import Program

    with Program.from_pin(os.path.join(pin, name)) as p:
        return int(p.id)


def prog_exists(prog_id: int) -> bool:
    return sh("bpftool", "prog", "show", "id", str(prog_id), check=False).returncode == 0


def map_exists(map_id: int) -> bool:
    return sh("bpftool", "map", "show", "id", str(map_id), check=False).returncode == 0


def map_id(pin: str, name: str) -> int:
    from pyxdp.kernel.bpf import Map

    with Map.from_pin(os.path.join(pin, name)) as m:
        return int(m.id)


def verdict(prog_id: int, src: str, dport: int = 5001) -> int:
    """What program ``prog_id`` does to a UDP datagram from ``src`` (BPF_PROG_TEST_RUN)."""
    from pyxdp.kernel.bpf import Program

    with Program.from_id(prog_id) as p:
        return int(p.test_run(P.udp4(src, dport, dst="10.77.0.2")).retval)


def view(pin: str) -> tuple[str, tuple[str, ...], dict[str, set[str]]]:
    """Policy, rules, and set name -> prefixes, as this pyxdp reads them."""
    from pyxdp import Filter

    with Filter.open(pin, lock=False) as f:
        spec = f.ruleset()
    pol = spec.policy.label if spec.policy is not None else "pass"
    return pol, tuple(str(r) for r in spec.rules), {n: {str(e.prefix) for e in els} for n, els in spec.sets.items()}


def old_view() -> tuple[str, tuple[str, ...], dict[str, set[str]]]:
    from pyxdp.model.rulefile import parse_ruleset

    spec = parse_ruleset(OLD_FIREWALL, "old")
    assert spec.policy is not None
    return spec.policy.label, tuple(str(r) for r in spec.rules), {
        n: {str(e.prefix) for e in els} for n, els in spec.sets.items()}


def expected_pins() -> set[str]:
    from pyxdp.store.objects import EGRESS_PIN, PINNED_MAPS, PROG_PIN

    return {*PINNED_MAPS, PROG_PIN, EGRESS_PIN}


def migrated_problems(pin: str, pair: NetPair, tag: str, gone: Sequence[int] = ()) -> list[str]:
    """State after a finished migration: this layout, the firewall of OLD_FIREWALL,
    only this layout's pins, vb running the pinned programs (XDP and egress)
    and dropping the banned source; the programs in ``gone`` (replaced ones)
    freed."""
    out = []
    if layout_of(pin) != CURRENT:
        out.append(f"{tag}: layout {layout_of(pin)}")
    if view(pin) != old_view():
        out.append(f"{tag}: firewall {view(pin)}")
    if set(os.listdir(pin)) != expected_pins():
        out.append(f"{tag}: pins {sorted(set(os.listdir(pin)) ^ expected_pins())} differ")
    prog, eprog = pinned_id(pin, "prog"), pinned_id(pin, "egress")
    if xdp_prog(pair.b, pair.vb) != prog:
        out.append(f"{tag}: vb runs {xdp_prog(pair.b, pair.vb)}, the pinned program is {prog}")
    if egress_progs(pair.b, pair.vb) != [eprog]:
        out.append(f"{tag}: vb's egress runs {egress_progs(pair.b, pair.vb)}, the pinned program is {eprog}")
    if verdict(prog, BANNED) != XDP_DROP or verdict(prog, ALLOWED, 5002) != XDP_PASS:
        out.append(f"{tag}: the program does not drop {BANNED} and pass {ALLOWED}")
    st = json.loads(ok(pin, "status", "--json"))
    if not st["established"] or [(a["ifname"], a["attached"], a["prog_id"]) for a in st["interfaces"]] != [
            (pair.vb, True, prog)]:
        out.append(f"{tag}: status {st}")
    for pid in gone:
        if pid != prog and prog_exists(pid):
            out.append(f"{tag}: program {pid} (replaced) is still loaded")
    return out


# ---- (1) everything is kept ---------------------------------------------------------------------------


def _send(ns: str, src: str, port: int, count: int) -> None:
    sh("ip", "netns", "exec", ns, sys.executable, "-c", TRAFFIC, "send", src, "10.77.0.2", str(port), str(count))


def _hits(rules_json: str) -> dict[str, int]:
    return {r["rule"]: r["packets"] for r in jlines(rules_json) if "rule" in r}


def _element_hits(members_json: str) -> dict[str, int]:
    return {e["prefix"]: e["hits"] for e in jlines(members_json)}


def _ttls(save_text: str) -> dict[str, int | None]:
    from pyxdp.model.rulefile import parse_ruleset

    spec = parse_ruleset(save_text, "save")
    return {f"{n} {e.prefix}": e.ttl for n, els in spec.sets.items() for e in els}


def test_migration_keeps_everything(old_pkg: str, pin_dir: str, netpair: NetPair, tmp_path: Any) -> None:
    """0.2.0 state on two interfaces, with hits; `attach --reload` on one:
    rules, sets, elements, TTLs, hit counters kept; this layout everywhere (new
    programs, egress, connection state); old pins and programs gone; the
    firewall works on."""
    sh("ip", "-n", netpair.a, "addr", "add", f"{BANNED}/24", "dev", netpair.va)

    def o(*args: str) -> str:
        return old(old_pkg, pin_dir, *args)

    o("attach", netpair.vb, "--netns", netpair.b)
    o("attach", netpair.va, "--netns", netpair.a)
    o("set", "add", "office", "192.0.2.0/24", "2001:db8:10::/48")
    o("allow", "proto", "udp", "from", ALLOWED, "to", "any", "port", "5002")
    o("allow", "proto", "tcp", "from", "@office", "to", "any", "port", "443")
    o("deny", "22/tcp")
    o("ban", BANNED, "--ttl", "1h")
    o("ban", "198.51.100.7")
    o("ban", "2001:db8:dead::/48", "--ttl", "2h")
    o("policy", "drop")
    _send(netpair.a, BANNED, 5001, 20)
    _send(netpair.a, ALLOWED, 5002, 10)
    old_save, old_rules, old_stats = o("save"), o("list", "--json"), json.loads(o("stats", "--json"))["stats"]
    old_members = o("set", "list", "banned", "--json")
    old_prog, old_cfg = xdp_prog(netpair.b, netpair.vb), map_id(pin_dir, "cfg")
    old_progs = {xdp_prog(netpair.a, netpair.va), old_prog}
    assert _hits(old_rules)["deny from @banned"] == 20 and _element_hits(old_members)[f"{BANNED}/32"] == 20
    t0 = time.monotonic()

    out = ok(pin_dir, "attach", netpair.vb, "--netns", netpair.b, "--reload")
    assert "migrated the state" in out and f"from layout 2 to {CURRENT}" in out, out
    elapsed = time.monotonic() - t0

    new_save = ok(pin_dir, "save")
    from pyxdp.model.rulefile import parse_ruleset

    before, after = parse_ruleset(old_save, "old"), parse_ruleset(new_save, "new")
    assert after.rules == before.rules and after.policy == before.policy
    assert {n: sorted(str(e.prefix) for e in v) for n, v in after.sets.items()} == {
        n: sorted(str(e.prefix) for e in v) for n, v in before.sets.items()}
    for key, ttl in _ttls(old_save).items():
        now = _ttls(new_save)[key]
        assert (ttl is None) == (now is None), key
        if ttl is not None and now is not None:
            assert ttl - elapsed - 3 <= now <= ttl, (key, ttl, now)
    new_hits = _hits(ok(pin_dir, "list", "--json"))
    for rule, n in _hits(old_rules).items():
        assert new_hits[rule] >= n, (rule, n, new_hits)
    new_members = _element_hits(ok(pin_dir, "set", "list", "banned", "--json"))
    for prefix, n in _element_hits(old_members).items():
        assert new_members[prefix] >= n, (prefix, n, new_members)

    assert layout_of(pin_dir) == CURRENT
    assert set(os.listdir(pin_dir)) == expected_pins()
    st = json.loads(ok(pin_dir, "status", "--json"))
    assert st["established"] is True and st["flow_capacity"] == 65536
    prog, eprog = pinned_id(pin_dir, "prog"), pinned_id(pin_dir, "egress")
    assert {(a["ifname"], a["attached"], a["prog_id"]) for a in st["interfaces"]} == {
        (netpair.vb, True, prog), (netpair.va, True, prog)}
    for ns, dev in ((netpair.b, netpair.vb), (netpair.a, netpair.va)):
        assert f"prog/xdp id {prog}" in sh("ip", "-n", ns, "-d", "link", "show", dev).stdout
        assert egress_progs(ns, dev) == [eprog]
    assert "connection state: on" in ok(pin_dir, "status")
    for pid in old_progs:
        assert not prog_exists(pid), f"old program {pid} still loaded"
    assert not map_exists(old_cfg), "the old config map is still there"
    # the counters go on from the old ones: what 0.2.0 counted is the line of no interface
    new_stats = json.loads(ok(pin_dir, "stats", "--json"))["stats"]
    for ln in old_stats:
        what = (ln["verdict"], ln["reason"])
        kept = sum(n["packets"] for n in new_stats if (n["verdict"], n["reason"]) == what and not n["interface"])
        assert kept >= ln["packets"], (what, ln, new_stats)
        if what == ("drop", "rule-deny"):  # nothing else was sent: exactly the 20 banned datagrams
            assert kept == ln["packets"] == 20, (ln, new_stats)

    # the firewall works on: traffic, list, ban
    _send(netpair.a, BANNED, 5001, 5)
    assert _hits(ok(pin_dir, "list", "--json"))["deny from @banned"] >= 25
    ok(pin_dir, "ban", "203.0.113.9")
    assert verdict(prog, "203.0.113.9") == XDP_DROP and verdict(prog, ALLOWED, 5002) == XDP_PASS
    assert "203.0.113.9/32" in ok(pin_dir, "set", "list", "banned")


# ---- (2) under traffic -----------------------------------------------------------------------------


def _drops(stats_json: str) -> int:
    return sum(ln["packets"] for ln in json.loads(stats_json)["stats"]
               if ln["verdict"] == "drop" and ln["reason"] == "rule-deny")


def _tx_dropped(ns: str, dev: str) -> int:
    link = json.loads(sh("ip", "-n", ns, "-s", "-j", "link", "show", dev).stdout)[0]
    return int(link["stats64"]["tx"]["dropped"])


def test_migration_under_traffic(old_pkg: str, pin_dir: str, netpair: NetPair) -> None:
    """While `attach --reload` migrates, the peer blasts UDP from a banned
    source (and one in eight from an allowed one): no banned datagram
    arrives, allowed ones arrive before, during and after, and the drop
    counters (old + new) account for every banned one sent."""
    sh("ip", "-n", netpair.a, "addr", "add", f"{BANNED}/24", "dev", netpair.va)
    old(old_pkg, pin_dir, "attach", netpair.vb, "--netns", netpair.b)
    old(old_pkg, pin_dir, "ban", BANNED)
    base_drops = _drops(old(old_pkg, pin_dir, "stats", "--json"))
    base_hits = _hits(old(old_pkg, pin_dir, "list", "--json"))["deny from @banned"]
    base_tx = _tx_dropped(netpair.a, netpair.va)
    exe = ["ip", "netns", "exec"]
    recv = subprocess.Popen([*exe, netpair.b, sys.executable, "-c", TRAFFIC, "recv"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    blast = subprocess.Popen([*exe, netpair.a, sys.executable, "-c", TRAFFIC, "blast", "10.77.0.2"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert recv.stdout is not None and recv.stdin is not None
        assert blast.stdout is not None and blast.stdin is not None
        assert recv.stdout.readline().strip() == "ready"
        assert blast.stdout.readline().strip() == "go"
        time.sleep(0.3)
        blast.stdin.write("1\n")
        blast.stdin.flush()
        r = new(pin_dir, "attach", netpair.vb, "--netns", netpair.b, "--reload")
        blast.stdin.write("2\n")
        blast.stdin.flush()
        time.sleep(0.3)
        blast.stdin.write("stop\n")
        blast.stdin.flush()
        sent = json.loads(blast.stdout.readline())
        recv.stdin.write("stop\n")
        recv.stdin.flush()
        got = {int(k): v for k, v in json.loads(recv.stdout.readline()).items()}
    finally:
        for p in (blast, recv):
            p.kill()
            p.wait()
    assert r.returncode == 0 and "migrated the state" in r.stdout, r.stderr
    assert layout_of(pin_dir) == CURRENT
    banned_sent = sum(ph[0] for ph in sent)
    assert sent[1][0] >= 1000, f"only {sent[1][0]} banned datagrams sent during the migration"
    assert got[5001] == [0, 0, 0], f"banned datagrams arrived (before, during, after the migration): {got[5001]}"
    assert all(n > 0 for n in got[5002]), f"allowed datagrams (before, during, after): {got[5002]}; sent {sent}"
    drops = _drops(ok(pin_dir, "stats", "--json")) - base_drops
    hits = _hits(ok(pin_dir, "list", "--json"))["deny from @banned"] - base_hits
    element = _element_hits(ok(pin_dir, "set", "list", "banned", "--json"))[f"{BANNED}/32"]
    veth_dropped = _tx_dropped(netpair.a, netpair.va) - base_tx
    assert drops <= banned_sent <= drops + veth_dropped, (drops, banned_sent, veth_dropped)
    assert hits == drops == element, (hits, drops, element)


# ---- (3) killed at every step ----------------------------------------------------------------------


def _detach_all(pin: str, pair: NetPair) -> list[str]:
    r = new(pin, "detach", pair.vb, "--netns", pair.b)
    out = [] if r.returncode == 0 and "state removed" in r.stdout else [f"detach: {r.stdout} {r.stderr}"]
    if xdp_prog(pair.b, pair.vb) or egress_progs(pair.b, pair.vb) or has_clsact(pair.b, pair.vb):
        out.append("detach left a program or the clsact qdisc on vb")
        sh("ip", "-n", pair.b, "link", "set", "dev", pair.vb, "xdp", "off", check=False)
        sh("tc", "-n", pair.b, "qdisc", "del", "dev", pair.vb, "clsact", check=False)
    if os.path.exists(pin):  # 0.2.0 made the directory without the mark of one pyxdp made: it stays, empty
        if os.listdir(pin):
            out.append(f"detach left {os.listdir(pin)}")
        sh("rm", "-rf", pin)
    return out


def _half_done_problems(pin: str, pair: NetPair, tag: str) -> list[str]:
    """A killed migration: the interface runs a program of this state that
    drops the banned source, and a command that does not migrate refuses."""
    out = []
    cur = xdp_prog(pair.b, pair.vb)
    if not cur or verdict(cur, BANNED) != XDP_DROP or verdict(cur, ALLOWED, 5002) != XDP_PASS:
        out.append(f"{tag}: vb runs {cur}, which does not drop {BANNED} and pass {ALLOWED}")
    if layout_of(pin) == 2:
        r = new(pin, "list")
        if r.returncode != 1 or "--reload" not in r.stderr:
            out.append(f"{tag}: list on half-migrated state: exit {r.returncode} {r.stderr.strip()}")
    return out


class Died(Exception):
    """A simulated death where no map write happens."""


def _dies_writing(prog_id: int, update: Any) -> Any:
    """Map.update, except that an ``ifaces`` record naming ``prog_id`` (the
    one written after the program replacement) is a death."""
    from pyxdp import layout as L

    def dying_update(self: Any, key: bytes, value: bytes, flags: int = 0) -> None:
        if self.name == "ifaces" and L.IFACE_VAL.unpack(value)[2] == prog_id:
            raise Died
        update(self, key, value, flags)

    return dying_update


@pytest.mark.long(35)
def test_migration_killed_at_every_step(old_pkg: str, pin_dir: str, netpair: NetPair, tmp_path: Any,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """`attach --reload` of 0.2.0 state SIGKILLed after its Nth map write, for
    every N until it completes; and (simulated) killed after replacing the
    program (before the record of it, the pins and the renames), and between
    two renames. Each
    time the next `attach --reload` completes with the result a migration
    that was not killed has: same firewall, vb on the pinned programs,
    no temporary pins, no program left loaded that it replaced."""
    from pyxdp.kernel.bpf import Map
    from pyxdp.store.migrate import CONVERTERS, Migration
    from pyxdp.store.state import State, writer_lock

    tmp = str(tmp_path)
    make_old_state(old_pkg, pin_dir, netpair, tmp)
    first = xdp_prog(netpair.b, netpair.vb)
    ok(pin_dir, "attach", netpair.vb, "--netns", netpair.b, "--reload")
    problems = migrated_problems(pin_dir, netpair, "not killed", [first]) + _detach_all(pin_dir, netpair)
    done = False
    for n in range(1, 40):
        tag = f"N={n}"
        make_old_state(old_pkg, pin_dir, netpair, tmp)
        seen = [xdp_prog(netpair.b, netpair.vb)]
        r = new(pin_dir, "attach", netpair.vb, "--netns", netpair.b, "--reload", kill=n)
        if r.returncode not in (0, KILLED):
            problems.append(f"{tag}: exit {r.returncode}: {r.stderr.strip()}")
            break
        if r.returncode == KILLED:
            problems += _half_done_problems(pin_dir, netpair, tag)
            seen.append(xdp_prog(netpair.b, netpair.vb))
            r2 = new(pin_dir, "attach", netpair.vb, "--netns", netpair.b, "--reload")
            if r2.returncode != 0:
                problems.append(f"{tag}: the next attach --reload failed: {r2.stderr.strip()}")
        problems += migrated_problems(pin_dir, netpair, tag, seen)
        problems += [f"{tag}: {p}" for p in _detach_all(pin_dir, netpair)]
        if r.returncode == 0:
            done = True
            break
    assert done, "attach --reload never completed:\n" + "\n".join(problems)

    # simulated deaths where no map write happens: after the program replacement (before the pins and the
    # renames), and between two renames
    for rename in (0, 1):
        tag = "killed after replacing the program" if not rename else "killed between two renames"
        make_old_state(old_pkg, pin_dir, netpair, tmp)
        seen = [xdp_prog(netpair.b, netpair.vb)]
        st = State(pin_dir, writer_lock(pin_dir))
        m = Migration(st, CONVERTERS[2])
        try:
            m.build()
            if not rename:  # dies at the record write right after the replacement
                assert m.prog is not None
                monkeypatch.setattr(Map, "update", _dies_writing(m.prog.id, Map.update))
                with pytest.raises(Died):
                    m.switch()
                monkeypatch.undo()
            else:
                m.switch()
                m.final_counters()
                m.pin_programs()
                name, tmp_name = next(iter(m.pending.items()))
                os.replace(os.path.join(pin_dir, tmp_name), os.path.join(pin_dir, name))
        finally:
            m.close()
            st.close()
        seen.append(xdp_prog(netpair.b, netpair.vb))
        if seen[1] == seen[0]:
            problems.append(f"{tag}: the simulation did not replace the program")
        problems += _half_done_problems(pin_dir, netpair, tag)
        r = new(pin_dir, "attach", netpair.vb, "--netns", netpair.b, "--reload")
        if r.returncode != 0:
            problems.append(f"{tag}: the next attach --reload failed: {r.stderr.strip()}")
        problems += migrated_problems(pin_dir, netpair, tag, seen)
        problems += [f"{tag}: {p}" for p in _detach_all(pin_dir, netpair)]
    assert not problems, "\n".join(problems)


# ---- (4) up, (5) the other commands ------------------------------------------------------------------


def test_up_migrates(old_pkg: str, pin_dir: str, netpair: NetPair, tmp_path: Any) -> None:
    """`up` with the config of the running firewall migrates 0.2.0 state and
    changes nothing else; a second `up` says no change."""
    make_old_state(old_pkg, pin_dir, netpair, str(tmp_path))
    first = xdp_prog(netpair.b, netpair.vb)
    conf = tmp_path / "pyxdp.toml"
    conf.write_text(OLD_FIREWALL + f'\n[[interface]]\nname = "{netpair.vb}"\nnetns = "{netpair.b}"\n')
    out = ok(pin_dir, "up", str(conf))
    assert [ln for ln in out.splitlines() if not ln.startswith("migrated the state")] == [], out
    assert not (problems := migrated_problems(pin_dir, netpair, "up", [first])), "\n".join(problems)
    assert "no change" in ok(pin_dir, "up", str(conf))


def test_other_commands_refuse_old_state(old_pkg: str, pin_dir: str, netpair: NetPair) -> None:
    """On 0.2.0 state, every command but `attach --reload` and `up` refuses:
    one line, exit 1, naming the command that migrates (with an interface
    the state records); nothing changes."""
    old(old_pkg, pin_dir, "attach", netpair.vb, "--netns", netpair.b)
    old(old_pkg, pin_dir, "ban", BANNED)
    pins, prog = sorted(os.listdir(pin_dir)), xdp_prog(netpair.b, netpair.vb)
    hint = f"run 'pyxdp-load --pin-dir {pin_dir} attach {netpair.vb} --netns {netpair.b} --reload'"
    for args in (("list",), ("status",), ("save",), ("stats",), ("ban", "192.0.2.1"), ("policy", "drop"),
                 ("detach", netpair.vb, "--netns", netpair.b), ("attach", netpair.vb, "--netns", netpair.b),
                 ("set", "list")):
        r = new(pin_dir, *args)
        assert r.returncode == 1 and r.stderr.count("\n") == 1, (args, r.returncode, r.stderr)
        assert "layout version 2" in r.stderr and hint in r.stderr, (args, r.stderr)
    from pyxdp import Filter, IncompatibleMap

    with pytest.raises(IncompatibleMap, match="--reload"):
        Filter.open(pin_dir)
    assert sorted(os.listdir(pin_dir)) == pins and xdp_prog(netpair.b, netpair.vb) == prog
    assert layout_of(pin_dir) == 2


# ---- (6) layout 3: the reply guard over the flows the old egress program recorded ---------------------


def _answered(pair: NetPair, rx: socket.socket, host_port: int, timeout: float = 1.0) -> bool:
    """The peer (a) sends one datagram from port 5003 to the host's
    ``host_port``; whether the host's socket ``rx`` gets it."""
    tx = sock(pair.a, 4, 5003)
    try:
        tx.sendto(b"answer", ("10.77.0.2", host_port))
        if not select.select([rx], [], [], timeout)[0]:
            return False
        rx.recv(64)
        return True
    finally:
        tx.close()


def test_layout3_flows_pass_after_the_migration(old3_pkg: str, pin_dir: str, netpair: NetPair) -> None:
    """Layout-3 state (made by the last pyxdp without the reply guard) with a
    flow the host opened under a drop policy: `attach --reload` migrates it;
    the guard covers the flow the old egress program recorded (its answers
    still pass), is armed, and a port no flow uses stays shut."""
    from pyxdp import layout as L
    from pyxdp.kernel.bpf import Map
    from pyxdp.store.guard import guard_slot

    old(old3_pkg, pin_dir, "attach", netpair.vb, "--netns", netpair.b)
    old(old3_pkg, pin_dir, "policy", "drop")
    assert layout_of(pin_dir) == 3
    out, shut = sock(netpair.b, 4, 40111), sock(netpair.b, 4, 40112)
    try:
        out.sendto(b"ask", ("10.77.0.1", 5003))  # the host opens a flow: the old egress program records it
        assert _answered(netpair, out, 40111)
        assert not _answered(netpair, shut, 40112, 0.3)  # drop policy: no flow there
        assert "migrated the state" in ok(pin_dir, "attach", netpair.vb, "--netns", netpair.b, "--reload")
        assert layout_of(pin_dir) == CURRENT
        with Map.from_pin(os.path.join(pin_dir, "ctguard")) as g:
            clock = L.U64.unpack(g[L.U32.pack(L.CT_CLOCK)])[0]
            covered = L.U64.unpack(g[L.U32.pack(guard_slot(P.UDP, 40111))])[0]
            other = L.U64.unpack(g[L.U32.pack(guard_slot(P.UDP, 40112))])[0]
        assert clock > 0 and covered > clock and other == 0, (clock, covered, other)
        time.sleep(1.2)  # the sweeper has moved the clock on: the guard is in use
        assert _answered(netpair, out, 40111)
        assert not _answered(netpair, shut, 40112, 0.3)
    finally:
        out.close()
        shut.close()
    assert not (problems := _detach_all(pin_dir, netpair)), problems
