"""Against Debian's real ufw (installed by scripts/setup.sh --test), run only
in the test's own network namespace with private copies of its files
(helpers.ufw): the host's firewall and ufw files must be what they were.
'import ufw' reads the files that ufw wrote and gives the same rule lists,
family by family; a short differential run (helpers.ufwdiff; the long one
is scripts/ufw_diff.py) finds no verdict difference outside the README's
classes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from helpers import ufw as U
from helpers.cli import ok, run
from helpers.env import NetPair, needs_root, sh
from helpers.ufwdiff import BEFORE, Differ, per_family, pyxdp_rules, ufw_lists

pytestmark = needs_root

# commands whose rules pyxdp carries over exactly
EXACT = (["allow", "22/tcp"], ["insert", "2", "allow", "from", "fd77::1"],  # 2: ufw's first IPv6 rule
         ["deny", "from", "198.51.100.0/24"], ["allow", "53"],
         ["allow", "from", "2001:db8::/32", "to", "any", "port", "443", "proto", "tcp"],
         ["insert", "2", "deny", "proto", "udp", "from", "203.0.113.0/25", "port", "1024:65535", "to", "any",
          "port", "5000:5100,6000"],
         ["deny", "in", "on", "eth0", "to", "any", "port", "8080"],
         ["allow", "from", "10.77.0.0/24", "to", "10.77.0.2"],
         ["deny", "1000:2000/udp"], ["default", "allow", "incoming"])
# and ufw rules it says it cannot carry over exactly, one note each
INEXACT = (["deny", "out", "25/tcp"], ["reject", "23/tcp"], ["limit", "2222/tcp"], ["allow", "log", "8081/tcp"],
           ["route", "allow", "in", "on", "eth0", "out", "on", "eth1"])
CARRIED = (["allow", "8080/tcp", "comment", "web"], ["allow", "proto", "esp", "from", "192.0.2.1"])  # no note: exact


@pytest.fixture
def host_unchanged() -> Iterator[None]:
    why = U.available()
    if why:
        pytest.fail(why)
    before = U.host_fingerprint()
    yield
    after = U.host_fingerprint()
    assert after == before, [k for k in before if before[k] != after.get(k)]


@pytest.fixture
def ufw(netpair: NetPair, host_unchanged: None) -> Iterator[U.Ufw]:
    u = U.Ufw(netpair.b)
    try:
        u.run("--force", "enable", check=True)
        yield u
    finally:
        u.close()


def test_ufw_runs_in_the_tests_namespaces_only(ufw: U.Ufw, netpair: NetPair) -> None:
    ufw.run("allow", "22/tcp", check=True)
    inside = sh("ip", "netns", "exec", netpair.b, "iptables-save").stdout
    assert "-A ufw-user-input -p tcp -m tcp --dport 22 -j ACCEPT" in inside
    assert "ufw" not in sh("nft", "list", "ruleset").stdout  # the host's own: untouched
    assert "22/tcp" in ufw.run("status").stdout
    with open("/etc/ufw/ufw.conf", encoding="utf-8") as fh:  # ufw wrote ENABLED=yes to its private copy only
        assert "ENABLED=yes" not in fh.read()
    assert "ENABLED=yes" in ufw.file("ufw.conf")


def test_import_carries_ufws_rules_exactly(ufw: U.Ufw, pin_dir: str) -> None:
    for cmd in EXACT:
        r = ufw.run(*cmd, check=True)
        assert "ERROR" not in r.stdout + r.stderr, (cmd, r.stdout)
    root = ufw.root()
    r = run("import", "ufw", "--ufw-dir", root)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert 'policy = "pass"' in r.stdout
    assert ok("--create", "import", "ufw", "--ufw-dir", root, "--apply", pin_dir=pin_dir).startswith(
        "imported 9 rules from ufw, policy pass")
    assert per_family(pyxdp_rules(pin_dir)) == ufw_lists(ufw)
    # the printed file, applied, is the same firewall
    ok("apply", "-", input=r.stdout, pin_dir=pin_dir)
    assert per_family(pyxdp_rules(pin_dir)) == ufw_lists(ufw)
    assert ok("policy", pin_dir=pin_dir) == "pass\n"


def test_import_says_what_it_cannot_carry_over(ufw: U.Ufw, pin_dir: str) -> None:
    for cmd in (["allow", "22/tcp"], *INEXACT, *CARRIED):
        ufw.run(*cmd, check=True)
    r = run("import", "ufw", "--ufw-dir", ufw.root())
    assert r.returncode == 0, r.stderr
    notes = r.stderr.splitlines()
    assert len(notes) == len(INEXACT), notes  # one a rule (its IPv6 copy: the same note)
    assert all(n.startswith("pyxdp-load: note: ufw rule '") for n in notes)
    for what in ("deny out", "'reject' as 'deny'", "'limit' as 'allow'", "without its 'log' logging", "route allow"):
        assert sum(what in n for n in notes) == 1, (what, notes)
    r = run("--create", "import", "ufw", "--ufw-dir", ufw.root(), "--apply", pin_dir=pin_dir)
    assert r.returncode == 0 and r.stderr.splitlines() == notes, r.stderr
    assert r.stdout == "imported 6 rules from ufw, policy drop; 5 notes above\n"
    assert [str(x) for x in pyxdp_rules(pin_dir)] == [
        "allow proto tcp to any port 22", "deny proto tcp to any port 23", "allow proto tcp to any port 2222",
        "allow proto tcp to any port 8081", "allow proto tcp to any port 8080 comment 'web'",
        "allow proto esp from 192.0.2.1/32"]


def test_differential_against_ufw(host_unchanged: None) -> None:
    """One fixed scenario (200 of them: scripts/ufw_diff.py)."""
    d = Differ()
    try:
        for seed in (3,):
            d.scenario(seed)
    finally:
        d.close()
    res: Any = d.result
    assert res.probes >= 20 and res.commands >= 4
    assert res.outside() == [], res.report()
    known = set(BEFORE.values())
    for cls in res.diffs:
        assert cls in known or cls.startswith("knock-on of: "), res.report()
