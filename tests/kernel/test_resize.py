"""Capacities changed in place (issue 21, item 7): ``resize`` grows (or
shrinks) the rule capacity, set elements per family and flows per family of
running state. Under traffic: no banned datagram gets through, allowed ones
do throughout, and rules, sets, elements (TTLs, hits), flows and counters
are what they were; every interface runs the new program. Bad numbers: one
line, exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from helpers.env import NetPair, needs_root, sh

from .test_migrate import (
    ALLOWED,
    BANNED,
    TRAFFIC,
    _drops,
    _element_hits,
    _hits,
    _send,
    _ttls,
    jlines,
    map_id,
    new,
    ok,
    pinned_id,
    xdp_prog,
)

pytestmark = needs_root


def flows_of(pin: str) -> set[bytes]:
    from pyxdp.kernel.bpf import Map

    out: set[bytes] = set()
    for name in ("flows4", "flows6"):
        with Map.from_pin(os.path.join(pin, name)) as m:
            out |= set(m)
    return out


def make_state(pin: str, pair: NetPair) -> None:
    sh("ip", "-n", pair.a, "addr", "add", f"{BANNED}/24", "dev", pair.va)
    ok(pin, "attach", pair.vb, "--netns", pair.b)
    ok(pin, "set", "add", "office", "192.0.2.0/24", "2001:db8:10::/48")
    ok(pin, "allow", "proto", "udp", "from", ALLOWED, "to", "any", "port", "5002")
    ok(pin, "allow", "proto", "tcp", "from", "@office", "to", "any", "port", "443")
    ok(pin, "deny", "22/tcp")
    ok(pin, "ban", BANNED, "--ttl", "1h")
    ok(pin, "ban", "2001:db8:dead::/48", "--ttl", "2h")
    ok(pin, "policy", "drop")
    # a flow the host opened (recorded by the egress program): b -> a, UDP
    sh("ip", "netns", "exec", pair.b, sys.executable, "-c",
       "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.sendto(b'x', ('10.77.0.1', 5999))")


def test_resize_under_traffic(pin_dir: str, netpair: NetPair) -> None:
    make_state(pin_dir, netpair)
    _send(netpair.a, BANNED, 5001, 20)
    save0, rules0 = ok(pin_dir, "save"), _hits(ok(pin_dir, "list", "--json"))
    members0 = _element_hits(ok(pin_dir, "set", "list", "banned", "--json"))
    flows0, drops0 = flows_of(pin_dir), _drops(ok(pin_dir, "stats", "--json"))
    prog0, rvec0 = xdp_prog(netpair.b, netpair.vb), map_id(pin_dir, "rvec")
    assert flows0 and rules0["deny from @banned"] == 20
    t0 = time.monotonic()
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
        r = new(pin_dir, "resize", "--rules", "2048", "--capacity", "4096", "--flows", "131072")
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
    elapsed = time.monotonic() - t0
    assert r.returncode == 0 and "rules 1024 -> 2048" in r.stdout, (r.stdout, r.stderr)
    assert got[5001] == [0, 0, 0], f"banned datagrams arrived (before, during, after the resize): {got[5001]}"
    assert all(n > 0 for n in got[5002]), f"allowed datagrams (before, during, after): {got[5002]}; sent {sent}"
    st = json.loads(ok(pin_dir, "status", "--json"))
    assert (st["rule_capacity"], st["set_capacity"], st["flow_capacity"]) == (2048, 4096, 131072)
    # the same firewall, TTLs running on, counters kept and counting on
    save1 = ok(pin_dir, "save")
    assert save1.replace(" ", "").count("\n") == save0.replace(" ", "").count("\n")
    from pyxdp.model.rulefile import parse_ruleset

    before, after = parse_ruleset(save0, "old"), parse_ruleset(save1, "new")
    assert after.rules == before.rules and after.policy == before.policy
    assert {n: sorted(str(e.prefix) for e in v) for n, v in after.sets.items()} == {
        n: sorted(str(e.prefix) for e in v) for n, v in before.sets.items()}
    for key, ttl in _ttls(save0).items():
        now = _ttls(save1)[key]
        assert (ttl is None) == (now is None), key
        if ttl is not None and now is not None:
            assert ttl - elapsed - 3 <= now <= ttl, (key, ttl, now)
    banned_sent = sum(ph[0] for ph in sent)
    rules1 = _hits(ok(pin_dir, "list", "--json"))
    for rule, n in rules0.items():
        assert rules1[rule] >= n, (rule, n, rules1)
    drops = _drops(ok(pin_dir, "stats", "--json")) - drops0
    assert drops <= banned_sent
    # what the old program counted after the copy is added after the switch, by a read and a write of the
    # counter the new program counts in meanwhile: increments between the two (microseconds) are lost
    hits = rules1["deny from @banned"] - rules0["deny from @banned"]
    assert drops - drops // 1000 <= hits <= drops, (hits, drops)
    members1 = _element_hits(ok(pin_dir, "set", "list", "banned", "--json"))
    element = members1[f"{BANNED}/32"] - members0[f"{BANNED}/32"]
    assert drops - drops // 1000 <= element <= drops, (element, drops)
    assert flows0 <= flows_of(pin_dir)
    # the new program, on the new maps, everywhere; nothing left of the resize
    prog1 = xdp_prog(netpair.b, netpair.vb)
    assert prog1 != prog0 and prog1 == pinned_id(pin_dir, "prog") and map_id(pin_dir, "rvec") != rvec0
    assert not [n for n in os.listdir(pin_dir) if n.endswith("_v4") or n.startswith("resize_journal")]


def test_resize_refuses_bad_input(pin_dir: str, netpair: NetPair) -> None:
    """One line, exit 2, nothing changed: not a multiple of 64, over 8,192
    rules, less room than what is there, nothing asked."""
    ok(pin_dir, "attach", netpair.vb, "--netns", netpair.b)
    ok(pin_dir, "allow", "22/tcp")
    ok(pin_dir, "ban", "192.0.2.1", "192.0.2.2")
    ok(pin_dir, "resize", "--rules", "64")  # 1 rule fits
    for args, says in ((("--rules", "100"), "a multiple of 64"), (("--rules", "16384"), "to 8192"),
                       (("--capacity", "100"), "a multiple of 64"), (("--flows", "100"), "a multiple of 64"),
                       (("--capacity", "0"), ""), ((), "give --rules")):
        r = new(pin_dir, "resize", *args)
        assert r.returncode == 2 and says in r.stderr and len(r.stderr.splitlines()) == 1, (args, r.stderr)
    save = ok(pin_dir, "save")
    spec = "\n".join(f"allow from 198.18.0.{i}" for i in range(1, 63))  # 64 with the two there (ban adds one)
    for line in spec.splitlines():
        ok(pin_dir, *line.split())
    r = new(pin_dir, "resize", "--rules", "128")
    assert r.returncode == 0, r.stderr
    ok(pin_dir, "allow", "from", "198.18.1.1")  # the 65th rule: room for it now
    r = new(pin_dir, "resize", "--rules", "64")
    assert r.returncode == 2 and "has 65 rules" in r.stderr, r.stderr
    assert json.loads(ok(pin_dir, "status", "--json"))["rule_capacity"] == 128
    assert jlines(ok(pin_dir, "list", "--json"))
    assert save
