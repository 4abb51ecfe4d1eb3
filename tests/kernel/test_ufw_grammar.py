"""ufw's grammar as a user types it, end to end through pyxdp-load: a rule
typed again with the other action is updated in place (and the datapath
decides with the new action), the two "Skipping ..." cases, prepend,
comments, application profiles from profile files, the other IP protocols
decided by the loaded program (BPF_PROG_TEST_RUN), --dry-run changing
nothing, reset, and ufw's status forms."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import packets as P
from helpers.cli import fails, ok, run
from helpers.env import needs_root

pytestmark = needs_root

OPENSSH = """[OpenSSH]
title=Secure shell server, an rshd replacement
description=OpenSSH is a free implementation of the Secure Shell protocol.
ports=22/tcp
"""
APACHE = """[Apache Full]
title=Web Server (HTTP,HTTPS)
description=Apache v2 is the next generation of the omnipresent Apache web server.
ports=80,443/tcp
"""
SAMBA = """[Samba]
title=LanManager-like file and printer server for Unix
description=The Samba software suite is a collection of programs that implements the SMB/CIFS protocol.
ports=137,138/udp|139,445/tcp
"""


@pytest.fixture
def app_dir(tmp_path: Path) -> str:
    (tmp_path / "openssh-server").write_text(OPENSSH)
    (tmp_path / "apache2-utils.ufw.profile").write_text(APACHE)
    (tmp_path / "samba").write_text(SAMBA)
    return str(tmp_path)


def rules_of(pin_dir: str) -> list[dict[str, object]]:
    return [r for r in map(json.loads, ok("list", "--json", pin_dir=pin_dir).splitlines()) if "rule" in r]


def verdicts(pin_dir: str, *pkts: bytes) -> list[tuple[str, int]]:
    """(verdict, deciding rule number) per packet, from the loaded program (BPF_PROG_TEST_RUN)."""
    from pyxdp import Filter

    with Filter.open(pin_dir, lock=False) as flt, flt.tester() as t:
        out = []
        for p in pkts:
            r = t.run(p)
            out.append((r.verdict.label, r.event.rule if r.event else 0))
        return out


def test_a_rule_typed_again_with_the_other_action_is_updated_in_place(pin_dir: str) -> None:
    ok("--create", "policy", "drop", pin_dir=pin_dir)
    ok("deny", "from", "198.51.100.0/24", pin_dir=pin_dir)
    ok("allow", "22/tcp", pin_dir=pin_dir)
    pkt = P.tcp4("198.51.100.7", 80)
    assert verdicts(pin_dir, pkt) == [("drop", 1)]
    out = ok("allow", "from", "198.51.100.0/24", pin_dir=pin_dir)
    assert out == "Rule updated (number 1): allow from 198.51.100.0/24\n"
    assert [r["rule"] for r in rules_of(pin_dir)] == ["allow from 198.51.100.0/24", "allow proto tcp to any port 22"]
    assert verdicts(pin_dir, pkt) == [("pass", 1)]  # one rule, now allowing: no shadowed copy
    assert ok("allow", "from", "198.51.100.0/24", pin_dir=pin_dir).startswith(
        "Skipping adding existing rule (number 1): ")
    # ufw: 'allow 53' then 'insert 1 deny 53' is skipped, whatever the action
    ok("allow", "53", pin_dir=pin_dir)
    before = ok("save", pin_dir=pin_dir)
    assert ok("insert", "1", "deny", "53", pin_dir=pin_dir) == \
        "Skipping inserting existing rule (number 3): deny to any port 53\n"
    assert ok("prepend", "deny", "53", pin_dir=pin_dir).startswith("Skipping inserting existing rule (number 3)")
    assert ok("save", pin_dir=pin_dir) == before
    # delete needs the action too
    fails(2, "Could not delete non-existent rule: deny proto tcp to any port 22", "delete", "deny", "22/tcp",
          pin_dir=pin_dir)
    ok("delete", "allow", "22/tcp", pin_dir=pin_dir)


def test_prepend_puts_the_rule_first(pin_dir: str) -> None:
    ok("--create", "allow", "from", "192.0.2.0/24", pin_dir=pin_dir)
    assert ok("prepend", "deny", "from", "192.0.2.7", pin_dir=pin_dir) == "rule 1: deny from 192.0.2.7/32\n"
    assert [r["rule"] for r in rules_of(pin_dir)] == ["deny from 192.0.2.7/32", "allow from 192.0.2.0/24"]
    assert verdicts(pin_dir, P.tcp4("192.0.2.7", 22), P.tcp4("192.0.2.8", 22)) == [("drop", 1), ("pass", 2)]


def test_comments_are_kept_listed_saved_and_exposed(pin_dir: str, tmp_path: Path) -> None:
    ok("--create", "allow", "22/tcp", "comment", 'ssh "door"', pin_dir=pin_dir)
    (row,) = rules_of(pin_dir)
    assert row["comment"] == 'ssh "door"' and row["rule"] == "allow proto tcp to any port 22 comment 'ssh \"door\"'"
    saved = ok("save", pin_dir=pin_dir)
    assert '"allow proto tcp to any port 22 comment \'ssh \\"door\\"\'",' in saved
    # a new comment for the same rule updates it; the API has it on the rule objects (the exporter's rule info)
    assert ok("allow", "22/tcp", "comment", "admins", pin_dir=pin_dir).startswith("Rule updated (number 1)")
    from pyxdp import Filter

    with Filter.open(pin_dir, lock=False) as flt:
        (rs,) = flt.rules()
    assert rs.comment == "admins" and rs.app is None
    assert "# admins" in ok("status", "numbered", pin_dir=pin_dir)
    path = tmp_path / "fw.toml"
    path.write_text(saved)
    ok("apply", str(path), pin_dir=pin_dir)
    assert ok("save", pin_dir=pin_dir) == saved


def test_application_profiles(pin_dir: str, app_dir: str) -> None:
    out = ok("app", "list", "--app-dir", app_dir, pin_dir=pin_dir)
    assert out == "Available applications:\n  Apache Full\n  OpenSSH\n  Samba\n"
    assert ok("app", "info", "OpenSSH", "--app-dir", app_dir, pin_dir=pin_dir) == (
        "Profile: OpenSSH\nTitle: Secure shell server, an rshd replacement\n"
        "Description: OpenSSH is a free implementation of the Secure Shell protocol.\n\nPort:\n  22/tcp\n")
    fails(2, "Could not find a profile matching 'Nginx'", "app", "info", "Nginx", "--app-dir", app_dir)
    ok("--create", "policy", "drop", pin_dir=pin_dir)
    assert ok("allow", "OpenSSH", "--app-dir", app_dir, pin_dir=pin_dir) == \
        "rule 1: allow proto tcp to any port 22 app OpenSSH\n"
    ok("allow", "from", "192.0.2.0/24", "to", "any", "app", "Apache Full", "--app-dir", app_dir, pin_dir=pin_dir)
    ok("deny", "Samba", "--app-dir", app_dir, pin_dir=pin_dir)
    assert [(r["rule"], r.get("app")) for r in rules_of(pin_dir)] == [
        ("allow proto tcp to any port 22 app OpenSSH", "OpenSSH"),
        ("allow proto tcp from 192.0.2.0/24 to any port 80,443 app 'Apache Full'", "Apache Full"),
        ("deny proto udp to any port 137:138 app Samba", "Samba"),
        ("deny proto tcp to any port 139,445 app Samba", "Samba")]
    assert verdicts(pin_dir, P.tcp4("203.0.113.1", 22), P.tcp4("192.0.2.9", 443), P.tcp4("203.0.113.1", 443)) == [
        ("pass", 1), ("pass", 2), ("drop", 0)]
    numbered = ok("status", "numbered", pin_dir=pin_dir)
    assert "[ 1] OpenSSH                    ALLOW IN    Anywhere" in numbered
    assert "[ 2] Apache Full                ALLOW IN    192.0.2.0/24" in numbered
    saved = ok("save", pin_dir=pin_dir)
    assert "\"allow proto tcp from 192.0.2.0/24 to any port 80,443 app 'Apache Full'\"," in saved
    # the saved text carries the ports: it deletes and applies without the profiles
    ok("delete", "allow", "proto", "tcp", "to", "any", "port", "22", "app", "OpenSSH", pin_dir=pin_dir)
    ok("delete", "deny", "Samba", "--app-dir", app_dir, pin_dir=pin_dir)  # both of its rules
    assert len(rules_of(pin_dir)) == 1


def test_other_protocols_are_decided_by_the_datapath(pin_dir: str) -> None:
    ok("--create", "allow", "proto", "esp", pin_dir=pin_dir)
    ok("allow", "proto", "132", "from", "192.0.2.0/24", pin_dir=pin_dir)
    ok("allow", "proto", "ipv6", pin_dir=pin_dir)
    ok("deny", "proto", "gre", pin_dir=pin_dir)
    ok("policy", "drop", pin_dir=pin_dir)
    esp4 = P.eth(P.ETH_IP, P.ipv4("203.0.113.1", "198.51.100.1", 50, b"\0" * 16))
    esp6 = P.eth(P.ETH_IPV6, P.ipv6("2001:db8::1", "2001:db8:ffff::1", 50, b"\0" * 16))
    sctp_in = P.eth(P.ETH_IP, P.ipv4("192.0.2.5", "198.51.100.1", 132, b"\0" * 16))
    sctp_out = P.eth(P.ETH_IP, P.ipv4("203.0.113.5", "198.51.100.1", 132, b"\0" * 16))
    gre = P.eth(P.ETH_IP, P.ipv4("203.0.113.1", "198.51.100.1", 47, b"\0" * 16))
    sixin4 = P.eth(P.ETH_IP, P.ipv4("203.0.113.1", "198.51.100.1", 41, b"\0" * 40))
    sixin6 = P.eth(P.ETH_IPV6, P.ipv6("2001:db8::1", "2001:db8:ffff::1", 41, b"\0" * 40))
    ah = P.eth(P.ETH_IP, P.ipv4("203.0.113.1", "198.51.100.1", 51, b"\0" * 16))
    assert verdicts(pin_dir, esp4, esp6, sctp_in, sctp_out, gre, sixin4, sixin6, ah) == [
        ("pass", 1), ("pass", 1), ("pass", 2), ("drop", 0), ("drop", 4), ("pass", 3), ("drop", 0), ("drop", 0)]
    assert [r["rule"] for r in rules_of(pin_dir)] == [
        "allow proto esp", "allow proto 132 from 192.0.2.0/24", "allow proto ipv6", "deny proto gre"]
    # without such a rule the block is gone again and the classes are the usual five
    ok("delete", "1", "2", "3", "4", pin_dir=pin_dir)
    ok("allow", "proto", "tcp", pin_dir=pin_dir)
    assert verdicts(pin_dir, esp4, P.tcp4("203.0.113.1", 22)) == [("drop", 0), ("pass", 1)]


def test_dry_run_changes_nothing(pin_dir: str, tmp_path: Path) -> None:
    ok("--create", "allow", "22/tcp", pin_dir=pin_dir)
    ok("deny", "from", "192.0.2.0/24", pin_dir=pin_dir)
    ok("ban", "203.0.113.9", pin_dir=pin_dir)
    before = ok("save", pin_dir=pin_dir)
    other = tmp_path / "other.toml"
    other.write_text('policy = "drop"\nrules = ["allow 80/tcp"]\n')
    for args, says in (
        (["allow", "80/tcp"], "dry run: Rule added (number 4): allow proto tcp to any port 80"),
        (["allow", "from", "192.0.2.0/24"], "dry run: Rule updated (number 3): allow from 192.0.2.0/24"),
        (["allow", "22/tcp"], "dry run: Skipping adding existing rule (number 2)"),
        (["insert", "1", "deny", "22/tcp"], "dry run: Skipping inserting existing rule (number 2)"),
        (["prepend", "deny", "23"], "dry run: Rule inserted (number 1): deny to any port 23"),
        (["delete", "2"], "dry run: would delete rule 2: allow proto tcp to any port 22"),
        (["delete", "deny", "from", "192.0.2.0/24"], "dry run: would delete rule 3: deny from 192.0.2.0/24"),
        (["policy", "drop"], "dry run: policy pass -> drop; nothing changed"),
        (["reset"], "dry run: set @banned removed (1 elements)"),
        (["apply", str(other)], "dry run: rule 1: allow proto tcp to any port 80 (new)"),
        (["ban", "198.51.100.1", "203.0.113.9"], "dry run: set @banned: 1 elements added, 0 removed"),
        (["ban", "198.51.100.1", "--set", "scanners"],
         "dry run: rule 1: deny from @scanners (new)"),
        (["unban", "203.0.113.9"], "dry run: set @banned: 0 elements added, 1 removed"),
        (["unban", "--all"], "dry run: set @banned: 0 elements added, 1 removed"),
        (["set", "add", "office", "192.0.2.0/24"], "dry run: set @office made (1 elements)"),
        (["set", "remove", "banned", "203.0.113.9"], "dry run: set @banned: 0 elements added, 1 removed"),
        (["set", "destroy", "banned"], "dry run: set @banned removed (1 elements)"),
        (["state", "off", "--timeout", "udp=10"], "dry run: connection state off"),
    ):
        out = ok("--dry-run", *args, pin_dir=pin_dir)
        assert says in out, (args, out)
        assert "nothing changed" in out
        assert ok("save", pin_dir=pin_dir) == before, args
    for args in (["allow", "80/tcp"], ["policy", "drop"], ["ban", "198.51.100.1"]):  # after the command's name too
        out = ok(args[0], "--dry-run", *args[1:], pin_dir=pin_dir)
        assert out.startswith("dry run: ") and "nothing changed" in out, (args, out)
        assert ok("save", pin_dir=pin_dir) == before, args
    fails(2, "--dry-run is not supported by 'detach'", "--dry-run", "detach", "lo", pin_dir=pin_dir)


def test_reset(pin_dir: str) -> None:
    ok("--create", "allow", "22/tcp", pin_dir=pin_dir)
    ok("ban", "203.0.113.9", pin_dir=pin_dir)
    ok("policy", "drop", pin_dir=pin_dir)
    ok("state", "off", "--timeout", "udp=10", pin_dir=pin_dir)
    before = ok("save", pin_dir=pin_dir)
    r = run("reset", pin_dir=pin_dir, input="y\n")  # stdin is not a terminal: refused, even with a 'y'
    assert r.returncode == 2 and "use 'reset --force'" in r.stderr
    assert ok("save", pin_dir=pin_dir) == before
    out = ok("reset", "--force", pin_dir=pin_dir)
    assert "policy drop -> pass" in out and "set @banned removed (1 elements)" in out
    assert rules_of(pin_dir) == []
    st = json.loads(ok("state", "--json", pin_dir=pin_dir))
    assert st["established"] is True and st["timeouts"]["udp"] != 10
    assert ok("policy", pin_dir=pin_dir) == "pass\n"
    assert json.loads(ok("status", "--json", pin_dir=pin_dir))["sets"] == []


def test_status_forms(pin_dir: str) -> None:
    ok("--create", "allow", "22/tcp", pin_dir=pin_dir)
    ok("deny", "from", "2001:db8::/32", pin_dir=pin_dir)
    assert ok("status", "numbered", pin_dir=pin_dir) == (
        "Status: inactive\n\n"
        "     To                         Action      From\n"
        "     --                         ------      ----\n"
        "[ 1] 22/tcp                     ALLOW IN    Anywhere\n"
        "[ 2] Anywhere                   DENY IN     2001:db8::/32\n")
    verbose = ok("status", "verbose", pin_dir=pin_dir)
    assert verbose.startswith("Status: inactive\nLogging: off\nDefault: allow (incoming), allow (outgoing), allow "
                              "(routed)\nNew profiles: skip\n\nTo ")
    assert ok("list", "numbered", pin_dir=pin_dir) == ok("status", "numbered", pin_dir=pin_dir)
    plain = ok("status", pin_dir=pin_dir)
    assert "22/tcp                     ALLOW       Anywhere" in plain
    assert os.path.exists(pin_dir)
