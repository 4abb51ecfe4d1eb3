"""ufw's grammar beyond ports and addresses (no root): a rule's identity
(``Rule updated``, the two ``Skipping ...`` cases), comments, application
profiles read from real profile files, the other IP protocols, the status
table, and what ``--dry-run``/``reset`` say about a change."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyxdp.cli.ufwstatus import ufw_status
from pyxdp.errors import UsageError
from pyxdp.layout import Verdict
from pyxdp.model.apps import find_profile, parse_port_entries, read_profiles
from pyxdp.model.compiler import compile_rules
from pyxdp.model.prefix import parse_prefix
from pyxdp.model.rulefile import Element, RuleSetSpec, diff_rulesets, format_ruleset, parse_ruleset
from pyxdp.model.rules import find_rule, parse_rule, parse_rules, plan_add, tokenize

# profiles as Debian's packages ship them (openssh-server, apache2, samba), plus broken ones ufw skips
PROFILES = {
    "openssh-server": """[OpenSSH]
title=Secure shell server, an rshd replacement
description=OpenSSH is a free implementation of the Secure Shell protocol.
ports=22/tcp
""",
    "apache2-utils.ufw.profile": """[Apache]
title=Web Server
description=Apache v2 is the next generation of the omnipresent Apache web server.
ports=80/tcp

[Apache Secure]
title=Web Server (HTTPS)
description=Apache v2 is the next generation of the omnipresent Apache web server.
ports=443/tcp

[Apache Full]
title=Web Server (HTTP,HTTPS)
description=Apache v2 is the next generation of the omnipresent Apache web server.
ports=80,443/tcp
""",
    "samba": """[Samba]
title=LanManager-like file and printer server for Unix
description=The Samba software suite is a collection of programs that implements the SMB/CIFS protocol.
ports=137,138/udp|139,445/tcp
""",
    "broken": """[NoPorts]
title=x
description=y

[BadPorts]
title=x
description=y
ports=99999/tcp

[all]
title=x
description=y
ports=1/tcp
""",
    "openssh-server.dpkg-old": "[Old]\ntitle=x\ndescription=y\nports=1/tcp\n",
    ".hidden": "[Hidden]\ntitle=x\ndescription=y\nports=1/tcp\n",
}


@pytest.fixture
def app_dir(tmp_path: Path) -> str:
    for name, text in PROFILES.items():
        (tmp_path / name).write_text(text)
    return str(tmp_path)


def finder(app_dir: str):  # type: ignore[no-untyped-def]
    profiles, _ = read_profiles(app_dir)
    return lambda name: find_profile(profiles, name)


# ---- a rule's identity -------------------------------------------------------------------


def test_retyping_a_rule_with_the_other_action_updates_it_in_place() -> None:
    rules = [parse_rule("deny from 198.51.100.0/24"), parse_rule("allow 22/tcp")]
    plan = plan_add(rules, parse_rule("allow from 198.51.100.0/24"))
    assert (plan.outcome, plan.number) == ("updated", 1)
    assert plan.rules == [parse_rule("allow from 198.51.100.0/24"), parse_rule("allow 22/tcp")]
    assert plan.message(parse_rule("allow from 198.51.100.0/24")).startswith("Rule updated (number 1): ")


def test_a_new_comment_updates_the_rule_and_the_same_rule_is_skipped() -> None:
    rules = [parse_rule("allow 22/tcp")]
    plan = plan_add(rules, parse_rule("allow 22/tcp comment 'ssh'"))
    assert plan.outcome == "updated" and plan.rules == [parse_rule("allow 22/tcp comment 'ssh'")]
    same = plan_add(plan.rules, parse_rule("allow 22/tcp comment 'ssh'"))
    assert (same.outcome, same.changes, same.rules) == ("exists", False, plan.rules)
    assert same.message(parse_rule("allow 22/tcp")).startswith("Skipping adding existing rule")


def test_inserting_an_existing_match_is_skipped_whatever_its_action() -> None:
    rules = [parse_rule("allow 53"), parse_rule("allow 80/tcp")]
    plan = plan_add(rules, parse_rule("deny 53"), 1)
    assert (plan.outcome, plan.number, plan.rules) == ("exists-insert", 1, rules)
    assert plan.message(parse_rule("deny 53")).startswith("Skipping inserting existing rule")
    new = plan_add(rules, parse_rule("deny 54"), 2)
    assert (new.outcome, new.number) == ("inserted", 2) and new.rules[1] == parse_rule("deny 54")
    with pytest.raises(UsageError, match="positions are 1 to 3"):
        plan_add(rules, parse_rule("deny 54"), 4)


def test_other_matches_are_other_rules() -> None:
    rules = [parse_rule("allow 22/tcp")]
    for other in ("allow 22/udp", "allow 22", "allow from 10.0.0.0/8 to any port 22 proto tcp",
                  "allow proto tcp to any port 22 on eth0", "allow proto tcp to any port 22 app OpenSSH"):
        assert plan_add(rules, parse_rule(other)).outcome == "added", other


def test_delete_finds_the_rule_as_ufw_does() -> None:
    rules = [parse_rule("allow 22/tcp comment 'ssh'"), parse_rule("deny 23")]
    assert find_rule(rules, parse_rule("allow 22/tcp")) == 0  # no comment given: any comment
    assert find_rule(rules, parse_rule("allow 22/tcp comment 'ssh'")) == 0
    assert find_rule(rules, parse_rule("allow 22/tcp comment 'web'")) is None
    assert find_rule(rules, parse_rule("deny 22/tcp")) is None  # another action: not this rule
    assert find_rule(rules, parse_rule("deny 23")) == 1


# ---- comments and quoting ------------------------------------------------------------------


def test_comments_are_kept_and_written_back() -> None:
    r = parse_rules(["allow", "22/tcp", "comment", 'my "ssh" \\ door'])[0]
    assert r.comment == 'my "ssh" \\ door'
    assert str(r) == "allow proto tcp to any port 22 comment 'my \"ssh\" \\ door'"
    assert parse_rule(str(r)) == r
    assert parse_rule("allow 22/tcp comment ''").comment is None
    assert parse_rule("deny from 192.0.2.0/24 comment 'bad net'").comment == "bad net"


def test_tokenize() -> None:
    assert tokenize("allow  to any app 'Apache Full'   comment 'a b'") == [
        "allow", "to", "any", "app", "Apache Full", "comment", "a b"]
    for bad in ("allow 'x", "allow x'y", "allow 'a'b"):
        with pytest.raises(UsageError):
            tokenize(bad)


@pytest.mark.skipif(not os.path.exists("/etc/services"), reason="no /etc/services (Debian's netbase)")
def test_service_names_as_ufw_reads_them() -> None:
    assert str(parse_rule("allow ssh")) == "allow proto tcp to any port 22"  # ssh is 22/tcp only in netbase
    assert str(parse_rule("allow http/tcp comment 'web'")) == "allow proto tcp to any port 80 comment 'web'"
    assert str(parse_rule("allow domain")) == "allow to any port 53"  # 53/tcp and 53/udp: both
    assert str(parse_rule("deny from 192.0.2.0/24 to any port ssh")) == \
        "deny proto tcp from 192.0.2.0/24 to any port 22"
    assert str(parse_rule("deny proto udp to any port https")) == "deny proto udp to any port 443"
    with pytest.raises(UsageError, match="no such service"):
        parse_rule("allow ssh/udp")


# ---- the other protocols ----------------------------------------------------------------------


@pytest.mark.parametrize(("typed", "canonical"), [
    ("allow proto esp", "allow proto esp"),
    ("allow proto 50", "allow proto esp"),
    ("allow proto ah from 192.0.2.0/24", "allow proto ah from 192.0.2.0/24"),
    ("deny proto gre", "deny proto gre"),
    ("allow proto ipv6 from 192.0.2.1", "allow proto ipv6 from 192.0.2.1/32"),
    ("allow proto igmp", "allow proto igmp"),
    ("allow proto vrrp to 224.0.0.18", "allow proto vrrp to 224.0.0.18/32"),
    ("allow proto 112", "allow proto vrrp"),
    ("allow proto 132 to any", "allow proto 132"),
    ("allow proto 6 to any port 22", "allow proto tcp to any port 22"),
])
def test_other_protocols(typed: str, canonical: str) -> None:
    assert str(parse_rule(typed)) == canonical
    assert parse_rule(canonical) == parse_rule(typed)


def test_another_protocol_gets_its_own_class_per_number() -> None:
    rules = [parse_rule("deny proto esp"), parse_rule("allow proto 132"), parse_rule("deny proto tcp")]
    t = compile_rules(rules, 64, 0, {}, {})
    base = t.proto_cls[5]
    assert t.vectors[base + 50] == 0b001 and t.vectors[base + 132] == 0b010 and t.vectors[base + 47] == 0
    plain = compile_rules([parse_rule("deny proto tcp")], 64, 0, {}, {})
    assert plain.proto_cls[5] == 0 and len(plain.vectors) < len(t.vectors) - 200  # no block without such a rule


def test_proto_ipv6_never_matches_an_ipv6_packet() -> None:
    t = compile_rules([parse_rule("deny proto ipv6"), parse_rule("deny proto gre")], 64, 0, {}, {})
    assert t.vectors[t.lit_dflt[0]] == 0b11 and t.vectors[t.lit_dflt[1]] == 0b10  # [src v4], [src v6]


# ---- application profiles -----------------------------------------------------------------------


def test_profiles_are_read_as_ufw_reads_them(app_dir: str) -> None:
    profiles, warnings = read_profiles(app_dir)
    assert sorted(profiles) == ["Apache", "Apache Full", "Apache Secure", "OpenSSH", "Samba"]
    assert "Profile 'NoPorts' missing required field 'ports'" in warnings
    assert "Invalid ports in profile 'BadPorts'" in warnings
    assert "Skipping 'all': invalid name" in warnings
    assert profiles["Samba"].ports == ((((137, 138),), "udp"), (((139, 139), (445, 445)), "tcp"))
    assert profiles["Samba"].info().endswith("\n\nPorts:\n  137,138/udp\n  139,445/tcp")
    assert profiles["OpenSSH"].info() == (
        "Profile: OpenSSH\nTitle: Secure shell server, an rshd replacement\n"
        "Description: OpenSSH is a free implementation of the Secure Shell protocol.\n\nPort:\n  22/tcp")
    assert profiles["Apache Full"].info().endswith("\n\nPorts:\n  80,443/tcp")
    assert read_profiles(os.path.join(app_dir, "missing")) == ({}, [])


def test_profile_lookup(app_dir: str) -> None:
    profiles, _ = read_profiles(app_dir)
    assert find_profile(profiles, "openssh").name == "OpenSSH"  # case aside, as ufw
    with pytest.raises(UsageError, match="^Could not find a profile matching 'Nginx Full'$"):
        find_profile(profiles, "Nginx Full")


def test_port_entries() -> None:
    assert parse_port_entries("53") == ((((53, 53),), "any"),)
    for bad in ("53,54", "1:2", "22/sctp", "0/tcp"):
        with pytest.raises(UsageError):
            parse_port_entries(bad)


def test_app_rules_remember_the_profile_and_its_ports(app_dir: str) -> None:
    find = finder(app_dir)
    (ssh,) = parse_rules(["allow", "OpenSSH"], find)
    assert str(ssh) == "allow proto tcp to any port 22 app OpenSSH"
    assert parse_rule(str(ssh)) == ssh  # the text needs no profile
    (web,) = parse_rules(["allow", "from", "192.0.2.0/24", "to", "any", "app", "apache full"], find)
    assert str(web) == "allow proto tcp from 192.0.2.0/24 to any port 80,443 app 'Apache Full'"
    assert parse_rule(str(web)) == web
    samba = parse_rules(["deny", "Samba", "comment", "no smb"], find)
    assert [str(r) for r in samba] == ["deny proto udp to any port 137:138 app Samba comment 'no smb'",
                                       "deny proto tcp to any port 139,445 app Samba comment 'no smb'"]
    (src,) = parse_rules(["allow", "from", "any", "app", "OpenSSH"], find)
    assert str(src) == "allow proto tcp from any port 22 app OpenSSH"
    with pytest.raises(UsageError, match="Could not find a profile matching 'Nginx'"):
        parse_rules(["allow", "Nginx"], find)
    with pytest.raises(UsageError, match="'proto' with 'app'"):
        parse_rules(["allow", "proto", "tcp", "to", "any", "app", "OpenSSH"], find)


# ---- the file ---------------------------------------------------------------------------------


def test_the_file_round_trips_comments_and_apps_and_old_files_load() -> None:
    rules = (parse_rule("allow 22/tcp comment 'ssh \"door\"'"),
             parse_rule("allow proto tcp to any port 80,443 app 'Apache Full'"), parse_rule("deny proto esp"))
    spec = RuleSetSpec(rules, {"banned": [Element(parse_prefix("192.0.2.1"))]}, Verdict.DROP)
    text = format_ruleset(spec)
    assert parse_ruleset(text) == spec
    assert format_ruleset(parse_ruleset(text)) == text
    old = 'policy = "drop"\nrules = [\n    "allow proto tcp to any port 22",\n]\n'  # what pyxdp 0.2 wrote
    assert parse_ruleset(old).rules == (parse_rule("allow 22/tcp"),)


def test_diff_says_what_a_change_does() -> None:
    sets = {"a": [Element(parse_prefix("192.0.2.1"))]}
    before = RuleSetSpec((parse_rule("allow 22/tcp"), parse_rule("deny 23")), sets, Verdict.PASS, established=True,
                         timeouts={"udp": 60})
    after = RuleSetSpec((parse_rule("deny 23"), parse_rule("allow 80/tcp")), {}, Verdict.DROP, established=True,
                        timeouts={"udp": 30})
    assert diff_rulesets(before, after) == [
        "policy pass -> drop", "timeout udp = 30 s", "rule 1: allow proto tcp to any port 22 (removed)",
        "rule 2: allow proto tcp to any port 80 (new)", "set @a removed (1 elements)"]
    assert diff_rulesets(before, before) == []


# ---- status ----------------------------------------------------------------------------------


def test_status_numbered_and_verbose_are_shaped_like_ufws() -> None:
    rules = [parse_rule("allow 22/tcp comment 'ssh'"), parse_rule("deny from 198.51.100.0/24"),
             parse_rule("allow proto tcp to any port 80,443 app 'Apache Full'"), parse_rule("allow proto esp"),
             parse_rule("deny proto udp from 2001:db8::/32 port 53 to any port 1000:2000 on eth0")]
    assert ufw_status(True, Verdict.DROP, rules, "numbered").splitlines() == [
        "Status: active",
        "",
        "     To                         Action      From",
        "     --                         ------      ----",
        "[ 1] 22/tcp                     ALLOW IN    Anywhere                   # ssh",
        "[ 2] Anywhere                   DENY IN     198.51.100.0/24",
        "[ 3] Apache Full                ALLOW IN    Anywhere",
        "[ 4] Anywhere/esp               ALLOW IN    Anywhere",
        "[ 5] 1000:2000/udp on eth0      DENY IN     2001:db8::/32 53/udp",
    ]
    verbose = ufw_status(False, Verdict.PASS, rules[:1], "verbose").splitlines()
    assert verbose[:4] == ["Status: inactive", "Logging: off", "Default: allow (incoming), allow (outgoing), "
                           "allow (routed)", "New profiles: skip"]
    assert ufw_status(True, Verdict.PASS, rules[:2], None).splitlines()[4:] == [
        "22/tcp                     ALLOW       Anywhere                   # ssh",
        "Anywhere                   DENY        198.51.100.0/24"]


SYSTEM_APPS = "/etc/ufw/applications.d"


@pytest.mark.skipif(not os.path.isdir(SYSTEM_APPS), reason="no ufw profiles on this host (Debian's ufw ships them)")
def test_the_profiles_debian_ships_read_and_make_rules() -> None:
    """The profile files Debian's packages install (ufw's own, openssh-server's), as they are."""
    profiles, warnings = read_profiles(SYSTEM_APPS)
    assert profiles and warnings == []
    find = finder(SYSTEM_APPS)
    for name in profiles:
        for rule in parse_rules(["allow", name], find):
            assert rule.dapp == name and rule.dport
            assert parse_rule(str(rule)) == rule
