"""Reading ufw's rule files (pyxdp.model.ufw) and 'pyxdp-load import ufw'
without root; tests/kernel/test_ufw.py reads files the real ufw wrote."""

from __future__ import annotations

import os
from typing import Any

import pytest
from helpers.cli import fails, run

from pyxdp import Verdict
from pyxdp.errors import UsageError
from pyxdp.model.rulefile import parse_ruleset
from pyxdp.model.rules import ANY, Rule, parse_rule
from pyxdp.model.ufw import convert, merge_families, parse_tuple, parse_user_rules

# tuples as Debian's ufw 0.36.2 writes them
USER4 = """*filter
### RULES ###

### tuple ### allow tcp 22 0.0.0.0/0 any 0.0.0.0/0 in
-A ufw-user-input -p tcp --dport 22 -j ACCEPT

### tuple ### deny any any 0.0.0.0/0 any 198.51.100.0/24 in
### tuple ### allow any 80 0.0.0.0/0 any 0.0.0.0/0 in_eth0
### tuple ### deny tcp 25 0.0.0.0/0 any 0.0.0.0/0 out
### tuple ### reject tcp 23 0.0.0.0/0 any 0.0.0.0/0 in
### tuple ### allow tcp 8080 0.0.0.0/0 any 0.0.0.0/0 in comment=77656220736572766572
### tuple ### allow_log tcp 8081 0.0.0.0/0 any 0.0.0.0/0 in
### tuple ### allow esp any 0.0.0.0/0 any 192.0.2.1 in
### tuple ### route:allow any any 0.0.0.0/0 any 0.0.0.0/0 in_eth0!out_eth1
### tuple ### allow tcp 80,443 0.0.0.0/0 any 0.0.0.0/0 WWW%20Full - in
### tuple ### deny udp any 10.0.0.1 53 0.0.0.0/0 in
### END RULES ###
"""
USER6 = """### tuple ### allow tcp 22 ::/0 any ::/0 in
### tuple ### allow tcp 443 ::/0 any 2001:db8::/32 in
### tuple ### allow any 80 ::/0 any ::/0 in_eth0
### tuple ### deny tcp 25 ::/0 any ::/0 out
### tuple ### reject tcp 23 ::/0 any ::/0 in
### tuple ### allow tcp 8080 ::/0 any ::/0 in comment=77656220736572766572
### tuple ### allow_log tcp 8081 ::/0 any ::/0 in
### tuple ### route:allow any any ::/0 any ::/0 in_eth0!out_eth1
### tuple ### allow tcp 80,443 ::/0 any ::/0 WWW%20Full - in
"""
DEFAULTS = 'IPV6=yes\nDEFAULT_INPUT_POLICY="DROP"\nDEFAULT_OUTPUT_POLICY="ACCEPT"\n'


def test_tuples_as_ufw_writes_them() -> None:
    u = parse_tuple("allow_log-all tcp 80,443 0.0.0.0/0 any 10.0.0.0/8 WWW%20Full - in_eth0 comment=6869", False)
    assert (u.action, u.log, u.proto, u.dport, u.src, u.dapp, u.iface_in, u.comment) == \
        ("allow", "log-all", "tcp", "80,443", "10.0.0.0/8", "WWW Full", "eth0", "hi")
    r = parse_tuple("route:deny any any 0.0.0.0/0 any 0.0.0.0/0 in_eth0!out_eth1", True)
    assert (r.route, r.action, r.iface_in, r.iface_out, r.v6) == (True, "deny", "eth0", "eth1", True)
    assert parse_tuple("deny tcp 25 0.0.0.0/0 any 0.0.0.0/0 out", False).direction == "out"
    with pytest.raises(UsageError, match="malformed ufw rule tuple"):
        parse_tuple("allow tcp 22", False)
    assert len(parse_user_rules(USER4)) == 11


def test_convert_keeps_each_familys_order_and_says_what_it_cannot_carry() -> None:
    got = convert(USER4, USER6, DEFAULTS)
    assert [str(r) for r in got.rules] == [
        "allow proto tcp to any port 22",
        "deny from 198.51.100.0/24",
        "allow proto tcp from 2001:db8::/32 to any port 443",
        "allow to any port 80 on eth0",
        "deny proto tcp to any port 23",
        "allow proto tcp to any port 8080 comment 'web server'",  # comments and other protocols: as they are
        "allow proto tcp to any port 8081",
        "allow proto esp from 192.0.2.1/32",
        "allow proto tcp to any port 80,443",
        "deny proto udp from any port 53 to 10.0.0.1/32",
    ]
    assert got.policy is Verdict.DROP
    notes = "\n".join(got.notes)
    for what in ("'deny out proto tcp from any to any port 25': not carried over",
                 "'reject proto tcp from any to any port 23': carried over as 'deny proto tcp to any port 23'",
                 "without its 'log' logging",
                 "'route allow in on eth0 from any to any': not carried over", "without its application name"):
        assert what in notes, what
    assert "(v6)" not in notes  # one note for a rule ufw keeps for both families
    assert "comment" not in notes and "esp" not in notes
    assert len(got.notes) == 5


def test_merge_families_keeps_rules_to_their_family() -> None:
    a, b, c = parse_rule("allow 22/tcp"), parse_rule("deny 80/tcp"), parse_rule("allow from 192.0.2.0/24")
    d = parse_rule("deny from 2001:db8::/32")
    # ufw's 'insert N' counts the two families' rules apart: the copies of a rule can stand in another order
    for v4, v6 in (([a, c, b], [b, a]), ([a, b], [a, d, b]), ([a, b], []), ([], [b, a]), ([a, b, c], [b, d, a])):
        merged = merge_families(v4, v6)

        def seen(fam: int, merged: list[Rule] = merged) -> list[Rule]:
            out = []
            for r in merged:
                if r.src.family in (0, fam) and r.dst.family in (0, fam):
                    whole = r.src.prefix is not None and r.src.prefix.plen == 0
                    out.append(r._replace(src=ANY) if whole else r)  # 'from 0.0.0.0/0': the rule for one family
            return out

        assert seen(4) == v4 and seen(6) == v6, (v4, v6, [str(r) for r in merged])
    assert [str(r) for r in merge_families([a, b], [a, b])] == [str(a), str(b)]  # both families: one rule each
    assert [str(r) for r in merge_families([a, b], [b])] == [
        "allow proto tcp from 0.0.0.0/0 to any port 22", "deny proto tcp to any port 80"]


def test_ipv6_off_and_other_policies() -> None:
    got = convert(USER4, USER6, 'IPV6=no\nDEFAULT_INPUT_POLICY="REJECT"\nDEFAULT_OUTPUT_POLICY="DROP"\n')
    assert all(r.src.family == 4 or r.dst.family == 4 for r in got.rules)
    assert got.policy is Verdict.DROP
    notes = "\n".join(got.notes)
    assert "DEFAULT_INPUT_POLICY=REJECT: carried over as policy drop" in notes
    assert "DEFAULT_OUTPUT_POLICY=DROP: not carried over" in notes
    assert "IPV6=no" in notes


def _root(tmp: Any, user4: str = USER4, user6: str | None = USER6, defaults: str | None = DEFAULTS) -> str:
    root = str(tmp)
    os.makedirs(f"{root}/etc/ufw")
    os.makedirs(f"{root}/etc/default")
    for name, text in (("etc/ufw/user.rules", user4), ("etc/ufw/user6.rules", user6), ("etc/default/ufw", defaults)):
        if text is not None:
            with open(f"{root}/{name}", "w", encoding="utf-8") as fh:
                fh.write(text)
    return root


def test_cli_prints_a_rule_set_file_and_one_note_a_line(tmp_path: Any) -> None:
    r = run("import", "ufw", "--ufw-dir", _root(tmp_path))
    assert r.returncode == 0, r.stderr
    spec = parse_ruleset(r.stdout)  # a file 'apply' takes
    assert spec.policy is Verdict.DROP and len(spec.rules) == 10
    lines = r.stderr.splitlines()
    assert len(lines) == 5 and all(x.startswith("pyxdp-load: note: ") for x in lines)


def test_cli_refuses_what_is_not_ufw(tmp_path: Any) -> None:
    fails(2, "no ufw rules under", "import", "ufw", "--ufw-dir", str(tmp_path))
    fails(2, "only 'ufw' is known", "import", "iptables", "--ufw-dir", str(tmp_path))
    root = _root(tmp_path / "r", defaults=None)
    fails(2, "no ufw policies under", "import", "ufw", "--ufw-dir", root)
    with open(f"{root}/etc/default/ufw", "wb") as fh:
        fh.write(b"\0" * 10)
    fails(2, "not a ufw rules file", "import", "ufw", "--ufw-dir", root)
    bad = _root(tmp_path / "b", user4="### tuple ### allow tcp\n")
    fails(2, "malformed ufw rule tuple", "import", "ufw", "--ufw-dir", bad)
