"""pyxdp-load as a user runs it: every subcommand, ufw's forms in one ordered
rule list, bans and sets, save/apply, and every class of bad input (one line
on stderr, exit 2 for usage/input, 1 for runtime failures, never a traceback,
nothing half-applied). Verdicts are checked with ``replay`` of a pcap or with
the Python tester (BPF_PROG_TEST_RUN): no interface needed."""

from __future__ import annotations

import ctypes
import json
import os
import platform
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from typing import Any

import pytest
from helpers import packets as P
from helpers.cli import BIN, fails, ok, run
from helpers.env import SUDO_VARS, NetPair, needs_root, sh

pytestmark = needs_root

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLE = os.path.join(HERE, "..", "..", "examples", "packets.bpf.o")
NO_STATE = "run 'pyxdp-load attach IFACE' first (or give --create"


def rules_of(pin_dir: str) -> list[str]:
    return [json.loads(x)["rule"] for x in ok("list", "--json", pin_dir=pin_dir).splitlines()
            if "rule" in json.loads(x)]


def members(pin_dir: str, name: str) -> dict[str, Any]:
    """prefix -> expires_in of a set's elements, as 'set list NAME --json' says."""
    rows = [json.loads(x) for x in ok("set", "list", name, "--json", pin_dir=pin_dir).splitlines()]
    return {r["prefix"]: r["expires_in"] for r in rows}


def verdicts(pin_dir: str, *pkts: bytes) -> list[tuple[str, str, int]]:
    """(verdict, reason, deciding rule number) per packet, from the Python tester."""
    from pyxdp import Filter

    with Filter.open(pin_dir, lock=False) as flt, flt.tester() as t:
        out = []
        for p in pkts:
            r = t.run(p)
            out.append((r.verdict.label, r.reason.label, r.event.rule if r.event else 0))
        return out


def write_cap(path: Any, *pkts: bytes) -> str:
    from pyxdp.model.pcap import write_pcap

    with open(path, "wb") as fh:
        write_pcap(fh, list(pkts))
    return str(path)


def while_sending(pair: NetPair, cmd: list[str], tries: int = 50) -> tuple[int, str, str]:
    """Run ``cmd`` while datagrams go a -> b, until it exits by itself."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(tries):
            sh("ip", "netns", "exec", pair.a, sys.executable, os.path.join(HERE, "..", "helpers", "netio.py"), "send",
               "10.77.0.2", "5000", "2")
            if proc.poll() is not None:
                break
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    return proc.returncode, out, err


# ---- one ordered list, ufw's meaning -------------------------------------------------------


def test_office_lockout_example_lists_in_order_and_lets_the_office_in(pin_dir: str, tmp_path: Any) -> None:
    """The issue's example: with the entries model 192.0.2.77 was locked out."""
    allow = ["allow", "proto", "tcp", "from", "192.0.2.0/24", "to", "any", "port", "22"]
    fails(1, NO_STATE, *allow, pin_dir=pin_dir)  # no state: nothing made silently
    assert not os.path.exists(pin_dir)
    assert ok("--create", *allow, pin_dir=pin_dir) == "rule 1: allow proto tcp from 192.0.2.0/24 to any port 22\n"
    assert ok("deny", "proto", "tcp", "to", "any", "port", "22", pin_dir=pin_dir) == \
        "rule 2: deny proto tcp to any port 22\n"
    rows = [json.loads(x) for x in ok("list", "--json", pin_dir=pin_dir).splitlines()]
    assert rows == [
        {"number": 1, "rule": "allow proto tcp from 192.0.2.0/24 to any port 22", "packets": 0, "bytes": 0},
        {"number": 2, "rule": "deny proto tcp to any port 22", "packets": 0, "bytes": 0},
    ]
    listing = ok("list", pin_dir=pin_dir)
    assert listing.index("allow proto tcp from 192.0.2.0/24") < listing.index("deny proto tcp to any port 22")
    cap = write_cap(tmp_path / "ssh.pcap", P.tcp4("192.0.2.77", 22), P.tcp4("198.51.100.9", 22),
                    P.udp4("198.51.100.9", 22), P.tcp4("192.0.2.77", 80), P.tcp6("2001:db8::9", 22),
                    P.eth(P.ETH_ARP, P.arp()))
    out = [json.loads(x) for x in ok("replay", cap, "--json", pin_dir=pin_dir).splitlines()]
    got = [(x["verdict"], x["reason"], x.get("rule")) for x in out[:-1]]
    assert got == [("pass", "rule-allow", 1), ("drop", "rule-deny", 2), ("pass", "policy", None),
                   ("pass", "policy", None), ("drop", "rule-deny", 2), ("pass", "arp", None)]
    assert out[0]["src"] == "192.0.2.77" and out[0]["dport"] == 22 and out[0]["proto"] == "tcp"
    assert out[-1] == {"summary": True, "packets": 6, "pass": 4, "drop": 2, "skipped": 0}
    text = ok("replay", cap, pin_dir=pin_dir)
    assert "(rule 1: allow proto tcp from 192.0.2.0/24 to any port 22)" in text.splitlines()[0]
    assert text.splitlines()[-1] == "6 packets: 4 pass, 2 drop"
    # replay leaves the live counters alone
    assert json.loads(ok("stats", "--json", pin_dir=pin_dir)) == {"stats": [], "lost_events": 0}
    assert all(r["packets"] == 0 for r in map(json.loads, ok("list", "--json", pin_dir=pin_dir).splitlines()))

    # the reverse order is ufw's too: the deny first refuses the office on 22, the allow lets it in elsewhere
    ok("delete", "1", pin_dir=pin_dir)
    ok("allow", "from", "192.0.2.0/24", pin_dir=pin_dir)
    assert rules_of(pin_dir) == ["deny proto tcp to any port 22", "allow from 192.0.2.0/24"]
    assert verdicts(pin_dir, P.tcp4("192.0.2.77", 22), P.tcp4("192.0.2.77", 80), P.tcp4("198.51.100.9", 80)) == [
        ("drop", "rule-deny", 1), ("pass", "rule-allow", 2), ("pass", "policy", 0)]


def test_ufw_forms_insert_and_delete(pin_dir: str) -> None:
    said = [
        ok("--create", "deny", "22", pin_dir=pin_dir),
        ok("allow", "22/tcp", pin_dir=pin_dir),
        ok("deny", "to", "any", "port", "1000:2000", "proto", "tcp", pin_dir=pin_dir),
        ok("allow", "80,443/tcp", pin_dir=pin_dir),
        ok("allow", "in", "from", "10.0.0.0/8", "to", "any", "port", "53", "proto", "udp", pin_dir=pin_dir),
        ok("deny", "from", "any", pin_dir=pin_dir),
    ]
    assert said == ["rule 1: deny to any port 22\n", "rule 2: allow proto tcp to any port 22\n",
                    "rule 3: deny proto tcp to any port 1000:2000\n", "rule 4: allow proto tcp to any port 80,443\n",
                    "rule 5: allow proto udp from 10.0.0.0/8 to any port 53\n", "rule 6: deny\n"]
    # 'deny 22' is tcp and udp, and comes first: 'allow 22/tcp' after it never decides
    assert verdicts(pin_dir, P.tcp4("192.0.2.1", 22), P.udp4("192.0.2.1", 22), P.tcp4("192.0.2.1", 1500),
                    P.udp4("192.0.2.1", 1500), P.tcp4("192.0.2.1", 443), P.udp4("10.1.2.3", 53),
                    P.udp6("2001:db8::1", 80)) == [
        ("drop", "rule-deny", 1), ("drop", "rule-deny", 1), ("drop", "rule-deny", 3),
        ("drop", "rule-deny", 6), ("pass", "rule-allow", 4), ("pass", "rule-allow", 5), ("drop", "rule-deny", 6)]

    assert ok("insert", "2", "deny", "proto", "icmp", pin_dir=pin_dir) == "rule 2: deny proto icmp\n"
    assert rules_of(pin_dir)[:3] == ["deny to any port 22", "deny proto icmp", "allow proto tcp to any port 22"]
    # 'delete allow 22/tcp' deletes what 'allow 22/tcp' made; 'delete N' deletes by number
    assert ok("delete", "allow", "22/tcp", pin_dir=pin_dir) == "deleted rule: allow proto tcp to any port 22\n"
    assert ok("delete", "deny", "22", pin_dir=pin_dir) == "deleted rule: deny to any port 22\n"
    assert ok("delete", "1", "5", pin_dir=pin_dir) == "deleted 2 rules\n"  # deny proto icmp, deny
    assert rules_of(pin_dir) == ["deny proto tcp to any port 1000:2000", "allow proto tcp to any port 80,443",
                                 "allow proto udp from 10.0.0.0/8 to any port 53"]
    fails(2, "Could not delete non-existent rule: deny proto udp", "delete", "deny", "proto", "udp", pin_dir=pin_dir)
    fails(2, "no rule number 7", "delete", "7", pin_dir=pin_dir)
    fails(2, "no rule number 9", "delete", "1", "9", pin_dir=pin_dir)  # all or nothing
    fails(2, "insert 5: positions are 1 to 4", "insert", "5", "deny", "proto", "icmp", pin_dir=pin_dir)
    assert len(rules_of(pin_dir)) == 3
    assert ok("insert", "4", "deny", "proto", "icmpv6", pin_dir=pin_dir) == "rule 4: deny proto icmpv6\n"  # = append


def test_rule_on_an_interface_and_a_set_in_a_rule(pin_dir: str) -> None:
    fails(2, "no set @nosuch", "--create", "deny", "from", "@nosuch", pin_dir=pin_dir)
    ok("--create", "set", "add", "office", "192.0.2.0/24", "2001:db8:20::/48", pin_dir=pin_dir)
    assert ok("allow", "proto", "tcp", "from", "@office", "to", "any", "port", "22", pin_dir=pin_dir) == \
        "rule 1: allow proto tcp from @office to any port 22\n"
    assert ok("deny", "to", "any", "port", "22", "proto", "tcp", "on", "eth9", pin_dir=pin_dir) == \
        "rule 2: deny proto tcp to any port 22 on eth9\n"
    ok("deny", "proto", "tcp", "to", "any", "port", "22", pin_dir=pin_dir)
    assert verdicts(pin_dir, P.tcp4("192.0.2.5", 22), P.tcp6("2001:db8:20::5", 22), P.tcp4("198.51.100.1", 22)) == [
        ("pass", "rule-allow", 1), ("pass", "rule-allow", 1), ("drop", "rule-deny", 3)]  # no eth9 attached


# ---- bans ------------------------------------------------------------------------------------


def test_ban_and_unban(pin_dir: str, tmp_path: Any) -> None:
    fails(1, NO_STATE, "ban", "203.0.113.7", pin_dir=pin_dir)
    assert not os.path.exists(pin_dir)
    ok("--create", "allow", "from", "203.0.113.0/24", pin_dir=pin_dir)  # an operator's own allow
    out = ok("ban", "203.0.113.7", "--ttl", "600", pin_dir=pin_dir)
    assert out == ("rule 1: deny from @banned (inserted: no rule used that set yet)\n"
                   "banned 1 new element in @banned, for 600s\n")
    assert rules_of(pin_dir) == ["deny from @banned", "allow from 203.0.113.0/24"]  # the allow is kept, after
    out = ok("ban", "203.0.113.7", "198.51.100.0/24", "--ttl", "900", pin_dir=pin_dir)
    assert out == "banned 1 new element in @banned, 1 refreshed, for 900s\n"  # the note only once
    m = members(pin_dir, "banned")
    assert 890 < m["203.0.113.7/32"] <= 900 and 890 < m["198.51.100.0/24"] <= 900  # refreshed
    assert ok("ban", "2001:db8::/48", "--ttl", "0", pin_dir=pin_dir) == \
        "banned 1 new element in @banned, permanently\n"
    assert ok("ban", "192.0.2.9", pin_dir=pin_dir) == "banned 1 new element in @banned, permanently\n"
    assert ok("ban", "-q", "192.0.2.10", pin_dir=pin_dir) == ""
    m = members(pin_dir, "banned")
    assert m["2001:db8::/48"] is None and m["192.0.2.9/32"] is None and len(m) == 5
    assert rules_of(pin_dir) == ["deny from @banned", "allow from 203.0.113.0/24"]
    assert verdicts(pin_dir, P.udp4("203.0.113.7"), P.udp4("203.0.113.8"), P.udp6("2001:db8::77"),
                    P.udp4("198.51.100.200"), P.udp4("10.0.0.1")) == [
        ("drop", "rule-deny", 1), ("pass", "rule-allow", 2), ("drop", "rule-deny", 1),
        ("drop", "rule-deny", 1), ("pass", "policy", 0)]

    # unban: idempotent, a note for what was not banned
    assert ok("unban", "203.0.113.7", pin_dir=pin_dir) == "unbanned 1 element of @banned\n"
    assert ok("unban", "203.0.113.7", "192.0.2.55", pin_dir=pin_dir) == (
        "203.0.113.7/32 was not banned in @banned\n192.0.2.55/32 was not banned in @banned\n"
        "unbanned 0 elements of @banned\n")
    assert verdicts(pin_dir, P.udp4("203.0.113.7")) == [("pass", "rule-allow", 2)]

    # --set NAME: its own set and rule, inserted as rule 1
    assert ok("ban", "--set", "ssh", "192.0.2.66", "--ttl", "1h", pin_dir=pin_dir) == (
        "rule 1: deny from @ssh (inserted: no rule used that set yet)\n"
        "banned 1 new element in @ssh, for 3600s\n")
    assert rules_of(pin_dir) == ["deny from @ssh", "deny from @banned", "allow from 203.0.113.0/24"]
    assert ok("unban", "--set", "ssh", "192.0.2.66", pin_dir=pin_dir) == "unbanned 1 element of @ssh\n"
    assert ok("unban", "--set", "never", "192.0.2.66", pin_dir=pin_dir) == (
        "192.0.2.66/32 was not banned in @never\nunbanned 0 elements of @never\n")

    # --file: comments and blank lines skipped; a bad line is named and nothing of the file lands
    good = tmp_path / "bans.txt"
    good.write_text("# from the log\n100.64.0.1\n\n100.64.1.0/24  # a net\n2001:db8:f::1\n")
    assert ok("ban", "--file", str(good), "--ttl", "10m", pin_dir=pin_dir) == \
        "banned 3 new elements in @banned, for 600s\n"
    bad = tmp_path / "bad.txt"
    bad.write_text("100.64.2.1\n# x\n100.64.3.1/8\n")
    fails(2, "bad.txt line 3: 100.64.3.1/8 has host bits set", "ban", "--file", str(bad), pin_dir=pin_dir)
    assert "100.64.2.1/32" not in members(pin_dir, "banned")
    fails(2, "cannot read", "ban", "--file", str(tmp_path / "missing.txt"), pin_dir=pin_dir)
    assert ok("ban", "-q", "--file", "-", input="100.64.9.9\n", pin_dir=pin_dir) == ""
    assert len(members(pin_dir, "banned")) == 8

    # unban --all empties the set; the rule stays
    assert ok("unban", "--all", pin_dir=pin_dir) == "unbanned 8 elements of @banned\n"
    assert members(pin_dir, "banned") == {}
    assert ok("unban", "--all", pin_dir=pin_dir) == "unbanned 0 elements of @banned\n"
    fails(2, "unban --all takes no addresses", "unban", "--all", "192.0.2.9", pin_dir=pin_dir)
    fails(2, "ban: give addresses", "ban", pin_dir=pin_dir)
    assert rules_of(pin_dir)[1] == "deny from @banned"


def test_an_address_after_double_dash_is_never_an_option(pin_dir: str, tmp_path: Any) -> None:
    """What a script or fail2ban passes after '--' is an address word: one
    that starts with '-' is refused (exit 2), never taken as --file or --all."""
    from pyxdp.model.prefix import MAX_ECHO

    secret = tmp_path / "secret"
    secret.write_text("pxt-secret-text\n")
    ok("--create", "ban", "192.0.2.1", pin_dir=pin_dir)
    for cmd in ("ban", "unban"):
        for word in ("--all", f"--file {secret}", "-q", "-"):
            # the word is quoted back cut to MAX_ECHO characters (a temp path can be longer: pytest-xdist's are)
            shown = word if len(word) <= MAX_ECHO else word[:MAX_ECHO] + "..."
            line = fails(2, f"bad address {shown!r}: an address never starts with '-'", cmd, "--", word,
                         pin_dir=pin_dir)
            assert "pxt-secret-text" not in line
        fails(2, "bad address '198.51.100.9 --all'", cmd, "--set", "banned", "--", "198.51.100.9 --all",
              pin_dir=pin_dir)
    fails(2, "an address never starts with '-'", "set", "add", "banned", "--", "-192.0.2.2", pin_dir=pin_dir)
    assert members(pin_dir, "banned") == {"192.0.2.1/32": None}


def test_ban_file_with_a_100mb_line_is_not_echoed(pin_dir: str, tmp_path: Any) -> None:
    ok("--create", "policy", "pass", pin_dir=pin_dir)
    big = tmp_path / "huge.txt"
    try:
        with open(big, "w") as fh:
            fh.write("10.0.0.0/8\n")
            chunk = "1" * (1 << 20)
            for _ in range(100):
                fh.write(chunk)
            fh.write("\n")
        line = fails(2, "huge.txt line 2", "ban", "--file", str(big), pin_dir=pin_dir)
        assert len(line) < 300, len(line)
    finally:
        big.unlink()
    assert ok("set", "list", pin_dir=pin_dir) == "no sets\n"


# ---- sets ------------------------------------------------------------------------------------


def test_set_add_remove_list_flush_destroy(pin_dir: str, tmp_path: Any) -> None:
    assert ok("--create", "set", "add", "office", "10.20.0.0/16", "2001:db8:20::/48", pin_dir=pin_dir) == \
        "set @office: 2 new elements\n"
    lst = tmp_path / "office.txt"
    lst.write_text("10.30.0.0/16\n# c\n10.20.0.0/16\n")
    assert ok("set", "add", "office", "--file", str(lst), "--ttl", "60", pin_dir=pin_dir) == \
        "set @office: 1 new element, 1 refreshed, ttl 60s\n"
    m = members(pin_dir, "office")
    assert m["2001:db8:20::/48"] is None and 55 < m["10.20.0.0/16"] <= 60 and 55 < m["10.30.0.0/16"] <= 60
    assert "10.30.0.0/16" in ok("set", "list", "office", pin_dir=pin_dir)
    assert "expires in" in ok("set", "list", "office", pin_dir=pin_dir)
    assert json.loads(ok("set", "list", "--json", pin_dir=pin_dir)) == {"name": "office", "ipv4": 2, "ipv6": 1}
    assert ok("set", "list", pin_dir=pin_dir).split() == ["@office", "2", "IPv4,", "1", "IPv6", "elements"]
    assert ok("set", "remove", "office", "10.30.0.0/16", pin_dir=pin_dir) == "set @office: removed 1 element\n"
    fails(2, "10.99.0.0/16 is not in the set", "set", "remove", "office", "10.20.0.0/16", "10.99.0.0/16",
          pin_dir=pin_dir)
    assert set(members(pin_dir, "office")) == {"10.20.0.0/16", "2001:db8:20::/48"}  # all or nothing
    ok("allow", "from", "@office", "to", "any", "port", "443", pin_dir=pin_dir)
    fails(2, "set @office is used by a rule", "set", "destroy", "office", pin_dir=pin_dir)
    assert ok("set", "flush", "office", pin_dir=pin_dir) == "set @office: removed 2 elements\n"
    assert members(pin_dir, "office") == {}
    ok("delete", "allow", "from", "@office", "to", "any", "port", "443", pin_dir=pin_dir)
    assert ok("set", "destroy", "office", pin_dir=pin_dir) == "set @office removed\n"
    assert ok("set", "list", pin_dir=pin_dir) == "no sets\n"
    fails(2, "no set @office", "set", "list", "office", pin_dir=pin_dir)
    fails(2, "no set @office", "set", "flush", "office", pin_dir=pin_dir)
    fails(2, "bad set operation 'frobnicate'", "set", "frobnicate", "x", pin_dir=pin_dir)
    fails(2, "bad set name", "set", "add", "bad name", "10.0.0.0/8", pin_dir=pin_dir)
    fails(2, "set add: give prefixes or --file", "set", "add", "x", pin_dir=pin_dir)
    fails(2, "set destroy takes only the set's name", "set", "destroy", "x", "10.0.0.0/8", pin_dir=pin_dir)


# ---- the whole firewall in one file ---------------------------------------------------------


def test_save_apply_save_is_byte_identical(pin_dir: str, tmp_path: Any) -> None:
    ok("--create", "policy", "drop", pin_dir=pin_dir)
    ok("set", "add", "office", "10.20.0.0/16", "2001:db8:20::/48", "192.0.2.7", pin_dir=pin_dir)
    ok("ban", "-q", "203.0.113.0/24", "2001:db8:bad::/48", pin_dir=pin_dir)
    ok("allow", "proto", "tcp", "from", "@office", "to", "any", "port", "22", pin_dir=pin_dir)
    ok("allow", "80,443/tcp", pin_dir=pin_dir)
    ok("deny", "to", "any", "port", "1000:2000", "proto", "udp", pin_dir=pin_dir)
    saved = ok("save", pin_dir=pin_dir)
    assert 'policy = "drop"' in saved
    assert '"deny from @banned"' in saved and '"allow proto tcp from @office to any port 22"' in saved
    assert '"2001:db8:bad::/48"' in saved and '"192.0.2.7/32"' in saved
    f = tmp_path / "fw.toml"
    ok("save", str(f), pin_dir=pin_dir)
    assert f.read_text() == saved
    assert os.stat(f).st_mode & 0o777 == 0o600

    # change everything, then apply the file back: identity
    ok("policy", "pass", pin_dir=pin_dir)
    ok("delete", "1", "3", pin_dir=pin_dir)
    ok("set", "add", "extra", "10.9.0.0/16", pin_dir=pin_dir)
    ok("unban", "203.0.113.0/24", pin_dir=pin_dir)
    assert ok("apply", str(f), pin_dir=pin_dir) == "applied 4 rules, 2 sets (5 elements), policy drop\n"
    assert ok("save", pin_dir=pin_dir) == saved

    # and on a fresh state elsewhere (apply needs state: --create)
    other = pin_dir + "-other"
    try:
        fails(1, NO_STATE, "apply", str(f), pin_dir=other)
        ok("--create", "apply", str(f), pin_dir=other)
        assert ok("save", pin_dir=other) == saved
    finally:
        shutil.rmtree(other, ignore_errors=True)

    # a bad file changes nothing and names its line
    bad = tmp_path / "bad.toml"
    bad.write_text(saved.replace("port 22", "port 2200000"))
    fails(2, "bad.toml line ", "apply", str(bad), pin_dir=pin_dir)
    bad.write_text(saved.replace('"10.20.0.0/16"', '"10.20.0.0/8"'))
    fails(2, "10.20.0.0/8 has host bits set", "apply", str(bad), pin_dir=pin_dir)
    bad.write_text(saved.replace("office = [", "offyce = ["))
    fails(2, "uses @office, which the file does not define", "apply", str(bad), pin_dir=pin_dir)
    fails(2, "cannot read /nonexistent.toml", "apply", "/nonexistent.toml", pin_dir=pin_dir)
    assert ok("save", pin_dir=pin_dir) == saved
    # from stdin too
    assert ok("apply", "-", input=saved, pin_dir=pin_dir).startswith("applied 4 rules")


def test_save_into_a_missing_directory(pin_dir: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """pyxdp's config directory (/etc/pyxdp; here a temp path in its place) is
    made when missing, mode 0755; any other missing directory is named with
    the mkdir to run, and nothing is made."""
    from pyxdp import up as config
    from pyxdp.cli import main

    ok("--create", "deny", "from", "192.0.2.1", pin_dir=pin_dir)
    missing = tmp_path / "missing"
    fails(2, f"cannot write {missing}/x.toml: there is no directory {missing} (mkdir -p {missing})",
          "save", str(missing / "x.toml"), pin_dir=pin_dir)
    assert not missing.exists()

    conf_dir = tmp_path / "etc-pyxdp"
    monkeypatch.setattr(config, "CONFIG_DIR", str(conf_dir))
    old_umask = os.umask(0o077)
    try:
        assert main(["--pin-dir", pin_dir, "save", str(conf_dir / "firewall.toml")]) == 0
    finally:
        os.umask(old_umask)
    st = os.stat(conf_dir)
    assert stat.S_IMODE(st.st_mode) == 0o755 and st.st_uid == os.geteuid()
    assert '"deny from 192.0.2.1/32"' in (conf_dir / "firewall.toml").read_text()
    assert main(["--pin-dir", pin_dir, "save", str(conf_dir / "again.toml")]) == 0  # there now: used as it is
    # only that directory, not its missing parents
    monkeypatch.setattr(config, "CONFIG_DIR", str(tmp_path / "no" / "pyxdp"))
    fails(2, "there is no directory", "save", str(tmp_path / "no" / "pyxdp" / "x.toml"), pin_dir=pin_dir)


def test_save_apply_keeps_timeouts_counting_down(pin_dir: str, tmp_path: Any) -> None:
    ok("--create", "ban", "-q", "203.0.113.7", "--ttl", "600", pin_dir=pin_dir)
    ok("set", "add", "tmp", "198.51.100.0/24", "--ttl", "3600", pin_dir=pin_dir)
    ok("set", "add", "tmp", "2001:db8::/32", pin_dir=pin_dir)
    saved = ok("save", pin_dir=pin_dir)

    def ttls(text: str) -> dict[str, int | None]:
        out: dict[str, int | None] = {}
        for line in text.splitlines():
            line = line.strip().rstrip(",").strip('"')
            if "/" in line and not line.startswith("#"):
                words = line.split()
                out[words[0]] = int(words[2]) if len(words) == 3 else None
        return out

    first = ttls(saved)
    assert 595 <= first["203.0.113.7/32"] <= 600 and 3595 <= first["198.51.100.0/24"] <= 3600  # type: ignore
    assert first["2001:db8::/32"] is None
    f = tmp_path / "fw.toml"
    f.write_text(saved)
    ok("unban", "--all", pin_dir=pin_dir)
    ok("apply", str(f), pin_dir=pin_dir)
    again = ttls(ok("save", pin_dir=pin_dir))
    assert set(again) == set(first)
    for k, v in first.items():
        if v is None:
            assert again[k] is None
        else:
            assert again[k] is not None and v - 5 <= again[k] <= v  # type: ignore[operator]


# ---- state, status, policy, stats --------------------------------------------------------------


def test_status_policy_and_commands_without_state(pin_dir: str) -> None:
    r = run("status", pin_dir=pin_dir)
    assert r.returncode == 1 and "not loaded" in r.stdout
    r = run("status", "--json", pin_dir=pin_dir)
    assert r.returncode == 1 and json.loads(r.stdout)["loaded"] is False
    for args in (["list"], ["stats"], ["policy"], ["save"], ["set", "list"], ["detach", "nosuchif0"],
                 ["policy", "drop"], ["delete", "1"], ["unban", "192.0.2.1"], ["set", "add", "x", "10.0.0.0/8"],
                 ["trace", "--count", "1"], ["insert", "1", "deny", "22"], ["replay", "/dev/null"]):
        fails(1, f"no pyxdp state in {pin_dir}: {NO_STATE}", *args, pin_dir=pin_dir)
    assert not os.path.exists(pin_dir)
    assert ok("--create", "policy", "drop", pin_dir=pin_dir) == "policy: drop\n"
    assert os.stat(pin_dir).st_mode & 0o777 == 0o700
    assert ok("policy", pin_dir=pin_dir) == "drop\n"
    st = json.loads(ok("status", "--json", pin_dir=pin_dir))
    assert st["loaded"] is True and st["policy"] == "drop" and st["interfaces"] == [] and st["rules"] == 0
    assert st["sets"] == [] and st["trace_every"] == 0
    text = ok("status", pin_dir=pin_dir)
    assert "policy: drop" in text and "no interface attached" in text
    assert verdicts(pin_dir, P.udp4("192.0.2.1"), P.eth(P.ETH_ARP, P.arp())) == [
        ("drop", "policy", 0), ("pass", "arp", 0)]
    ok("policy", "pass", pin_dir=pin_dir)
    assert ok("list", pin_dir=pin_dir).startswith("policy pass;")
    # $PYXDP_PIN_DIR names the state when --pin-dir is not given
    assert ok("policy", env={"PYXDP_PIN_DIR": pin_dir}) == "pass\n"


def test_old_state_is_refused_with_what_to_do(pin_dir: str) -> None:
    """A pin dir from pyxdp 0.1 (the entries model): its 'cfg', 'src4' and
    'lens_count' maps (here one small array pinned under those names), no 'meta'."""
    from pyxdp.kernel.bpf import Map

    nr = {"x86_64": 321, "aarch64": 280}.get(platform.machine())
    if nr is None:
        pytest.skip("bpf syscall number unknown here")
    os.mkdir(pin_dir, 0o700)
    attr = (ctypes.c_uint32 * 30)(2, 4, 8, 4)  # BPF_MAP_TYPE_ARRAY, key 4, value 8, 4 entries
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(nr, 0, ctypes.byref(attr), ctypes.sizeof(attr))  # BPF_MAP_CREATE
    assert fd >= 0, os.strerror(ctypes.get_errno())
    with Map.from_fd(fd) as m:
        for name in ("cfg", "src4", "lens_count"):
            m.pin(os.path.join(pin_dir, name))
    for args in (["deny", "22"], ["list"], ["--create", "ban", "192.0.2.1"], ["attach", "nosuchif0"], ["save"]):
        line = fails(1, "holds state of pyxdp 0.1", *args, pin_dir=pin_dir)
        assert "detach" in line and "attach again" in line
    r = run("status", pin_dir=pin_dir)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert sorted(os.listdir(pin_dir)) == ["cfg", "lens_count", "src4"]  # left as it was


def test_attach_trace_stats_list_detach(pin_dir: str, netpair: NetPair) -> None:
    out = ok("attach", netpair.vb, "--netns", netpair.b, "--mode", "generic", pin_dir=pin_dir)
    assert out.startswith("attached to vb (netns ") and "generic mode" in out
    st = json.loads(ok("status", "--json", pin_dir=pin_dir))
    [iface] = st["interfaces"]
    assert (iface["ifname"], iface["netns"], iface["mode"], iface["attached"]) == ("vb", netpair.b, "generic", True)
    assert iface["prog_id"] > 0 and iface["ifindex"] > 0
    ok("deny", "from", "10.77.0.1", pin_dir=pin_dir)
    code, out, err = while_sending(netpair, [BIN, "--pin-dir", pin_dir, "trace", "--json", "--count", "2"])
    assert code == 0, err
    events = [json.loads(x) for x in out.splitlines()]
    assert len(events) == 2
    for key in ("verdict", "reason", "src", "dst", "proto", "sport", "dport", "ifindex", "rule"):
        assert key in events[0]
    udp = [e for e in events if e["proto"] == "udp"]
    assert udp and (udp[0]["verdict"], udp[0]["reason"], udp[0]["src"], udp[0]["rule"]) == (
        "drop", "rule-deny", "10.77.0.1", 1)
    assert json.loads(ok("status", "--json", pin_dir=pin_dir))["trace_every"] == 0  # tracing off again
    stats = json.loads(ok("stats", "--json", pin_dir=pin_dir))
    dropped = [s for s in stats["stats"] if (s["verdict"], s["reason"]) == ("drop", "rule-deny")]
    assert dropped and dropped[0]["packets"] >= 2 and dropped[0]["bytes"] > 0
    assert stats["lost_events"] == 0
    [row] = [json.loads(x) for x in ok("list", "--json", pin_dir=pin_dir).splitlines()]
    assert row["rule"] == "deny from 10.77.0.1/32" and row["packets"] == dropped[0]["packets"]
    assert "rule-deny" in ok("stats", pin_dir=pin_dir)
    assert "detached from vb; no interface left, state removed" in ok("detach", netpair.vb, "--netns", netpair.b,
                                                                      pin_dir=pin_dir)
    assert not os.path.exists(pin_dir)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_trace_stopped_by_sigterm_turns_tracing_off(pin_dir: str, sig: int) -> None:
    """SIGTERM and Ctrl-C (SIGINT) end it as asked: exit 0, tracing off."""
    ok("--create", "deny", "from", "192.0.2.1", pin_dir=pin_dir)
    tr = subprocess.Popen([BIN, "--pin-dir", pin_dir, "trace", "--sample", "3"], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if json.loads(ok("status", "--json", pin_dir=pin_dir))["trace_every"] == 3:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("tracing never came on")
        tr.send_signal(sig)
        assert tr.wait(timeout=10) == 0
    finally:
        tr.kill()
    assert json.loads(ok("status", "--json", pin_dir=pin_dir))["trace_every"] == 0


def test_replay_of_bad_captures(pin_dir: str, tmp_path: Any) -> None:
    ok("--create", "deny", "from", "192.0.2.0/24", pin_dir=pin_dir)
    not_pcap = tmp_path / "x.pcap"
    not_pcap.write_bytes(b"hello world, not a capture")
    fails(2, "not a pcap file", "replay", str(not_pcap), pin_dir=pin_dir)
    fails(2, "cannot read", "replay", str(tmp_path / "missing.pcap"), pin_dir=pin_dir)
    # a truncated last record is reported and skipped, the rest is replayed
    cap = tmp_path / "cut.pcap"
    write_cap(cap, P.udp4("192.0.2.9"), P.udp4("10.0.0.1"))
    cap.write_bytes(cap.read_bytes()[:-10])
    out = ok("replay", str(cap), pin_dir=pin_dir)
    assert out.splitlines()[0].split()[:3] == ["1", "drop", "rule-deny"]
    assert out.splitlines()[-1] == "1 packets: 0 pass, 1 drop; 1 skipped"


# ---- interfaces and other programs ---------------------------------------------------------


def test_detach_of_a_vanished_interface_forgets_it(pin_dir: str, netpair: NetPair) -> None:
    ok("attach", netpair.vb, "--netns", netpair.b, pin_dir=pin_dir)
    ok("deny", "from", "192.0.2.1", pin_dir=pin_dir)
    sh("ip", "-n", netpair.b, "link", "del", netpair.vb)  # takes the peer and our program with it
    st = json.loads(ok("status", "--json", pin_dir=pin_dir))
    assert [a["attached"] for a in st["interfaces"]] == [False]
    assert "no interface left, state removed" in ok("detach", netpair.vb, "--netns", netpair.b, pin_dir=pin_dir)
    assert not os.path.exists(pin_dir)


def test_detach_of_a_renamed_interface_is_refused(pin_dir: str, netpair: NetPair) -> None:
    ok("attach", netpair.vb, "--netns", netpair.b, pin_dir=pin_dir)
    sh("ip", "-n", netpair.b, "link", "set", "vb", "down")  # a link is renamed while down
    sh("ip", "-n", netpair.b, "link", "set", "vb", "name", "vbx")
    sh("ip", "-n", netpair.b, "link", "set", "vbx", "up")
    fails(2, "was renamed to vbx", "detach", "vb", "--netns", netpair.b, pin_dir=pin_dir)
    assert os.path.exists(pin_dir)  # nothing forgotten
    assert "state removed" in ok("detach", "vbx", "--netns", netpair.b, pin_dir=pin_dir)
    assert "prog/xdp" not in sh("ip", "-n", netpair.b, "-d", "link", "show", "vbx").stdout


def test_generic_load_unload_and_printk_of_the_seed_program(netpair: NetPair) -> None:
    out = ok("load", EXAMPLE, netpair.vb, "--netns", netpair.b)
    assert "loaded packets.bpf.o on vb" in out
    try:
        assert "prog/xdp" in sh("ip", "-n", netpair.b, "-d", "link", "show", "vb").stdout
        fails(1, "already", "load", EXAMPLE, netpair.vb, "--netns", netpair.b)
        code, out, err = while_sending(netpair, [BIN, "printk", "--count", "1"])
        assert code == 0 and "got a packet" in out, err
    finally:
        ok("unload", netpair.vb, "--netns", netpair.b)
    assert "prog/xdp" not in sh("ip", "-n", netpair.b, "-d", "link", "show", "vb").stdout
    fails(2, "runs no XDP program", "unload", netpair.vb, "--netns", netpair.b)


def test_verifier_rejection_shows_the_verifier(netpair: NetPair) -> None:
    bad = os.path.join(HERE, "..", "data", "reject.bpf.o")
    r = run("load", bad, netpair.vb, "--netns", netpair.b)
    assert r.returncode == 1
    [line] = r.stderr.strip().splitlines()
    assert "verifier rejected it: R1 offset is outside of the packet" in line
    path = line.rsplit("verifier log: ", 1)[1].rstrip(")")
    try:
        assert not path.startswith("/tmp/pyxdp-verifier.log")
        with open(path) as fh:
            assert "invalid access to packet" in fh.read()
    finally:
        os.unlink(path)
    assert "prog/xdp" not in sh("ip", "-n", netpair.b, "-d", "link", "show", "vb").stdout


def test_not_an_object_file(tmp_path: Any) -> None:
    junk = tmp_path / "junk.bpf.o"
    junk.write_bytes(b"\x7fELF not really")
    fails(2, "not a loadable BPF object", "load", str(junk), "lo")
    fails(2, "no such object file", "load", str(tmp_path / "missing.o"), "lo")


# ---- bad input: one line, the right exit code, nothing left behind ---------------------------


@pytest.mark.parametrize(
    "args, says",
    [
        (["deny", "from", "1.2.3.4/²"], "bad address '1.2.3.4/²'"),
        (["allow", "²²/tcp"], "bad port '²²'"),
        (["deny", "from", "10.0.0.0/٢٤"], "bad address '10.0.0.0/٢٤'"),
        (["deny", "from", "١٠.0.0.1"], "bad address"),
        (["ban", "192.0.2.0/²⁴"], "bad address"),
        (["deny", "from", "::ffff:192.0.2.9"], "write the IPv4 address (192.0.2.9)"),
        (["ban", "::ffff:192.0.2.9"], "write the IPv4 address (192.0.2.9)"),
        (["set", "add", "x", "::ffff:c000:209"], "write the IPv4 address (192.0.2.9)"),
        (["reject", "22"], "'reject'"),
        (["limit", "22/tcp"], "'limit'"),
        (["deny", "from", "300.1.2.3"], "bad address '300.1.2.3'"),
        (["deny", "from", "10.0.0.1/8"], "host bits set"),
        (["deny", "70000/udp"], "bad port '70000'"),
        (["deny", "22/sctp"], "bad protocol in '22/sctp'"),
        (["allow", "proto", "xyz"], "Unsupported protocol 'xyz'"),
        (["route", "allow", "in", "on", "eth0"], "'route' rules are not supported yet"),
        (["deny", "log", "22/tcp"], "'log' is not supported yet"),
        (["allow", "22/tcp", "comment", "it's"], "bad comment"),
        (["allow", "NoSuchApp", "--app-dir", "/nonexistent"], "Could not find a profile matching 'NoSuchApp'"),
        (["--dry-run", "attach", "lo"], "--dry-run is not supported by 'attach'"),
        (["reset"], "reset asks first and stdin is not a terminal: use 'reset --force'"),
        (["status", "sideways"], "bad form 'sideways'"),
        (["app", "frob"], "bad app command 'frob'"),
        (["deny", "80,443"], "needs a protocol"),
        (["deny", "1000:2000"], "needs a protocol"),
        (["ban", "192.0.2.1", "--ttl", "soon"], "bad ttl"),
        (["ban", "192.0.2.1", "--set", "bad.name"], "bad set name 'bad.name'"),
        (["policy", "maybe"], "bad policy 'maybe'"),
        (["frobnicate"], "invalid choice"),
        (["attach"], "the following arguments are required: iface"),
        (["attach", "nosuchif0"], "no interface 'nosuchif0'"),
        (["attach", "bad/name"], "bad interface name"),
        (["attach", "lo", "--netns", "pxt-no-such-ns"], "no network namespace 'pxt-no-such-ns'"),
        (["attach", "nosuchif0", "--mode", "turbo"], "bad mode 'turbo'"),
        (["trace", "--count", "0"], "--count must be 1 or more"),
        (["insert", "0", "deny", "22"], "not a positive number"),
        # issue 19: int() takes other scripts' digits; the command line takes 0-9 only
        (["insert", "١", "deny", "22"], "not a positive number: '١'"),
        (["trace", "--count", "٣"], "not a whole number: '٣'"),
        (["trace", "--sample", "٣"], "not a positive number"),
        (["printk", "--count", "٣"], "not a whole number"),
        (["attach", "nosuchif0", "--rules", "٦٤"], "not a positive number: '٦٤'"),  # never the host's lo
        (["attach", "nosuchif0", "--capacity", "١٠٠"], "not a positive number"),
        (["top", "--interval", "١"], "not a number: '١'"),
        (["top", "--sample", "٣"], "not a whole number"),
        (["deny", "from", "10.0.0.0/٨"], "bad address '10.0.0.0/٨'"),
        (["allow", "٢٢/tcp"], "bad port"),
        (["ban", "192.0.2.1", "--ttl", "٣٠"], "bad ttl"),
        (["state", "--timeout", "udp=٣٠"], "bad timeout"),
    ],
)
def test_bad_input(pin_dir: str, args: list[str], says: str) -> None:
    line = fails(2, says, "--create", *args, pin_dir=pin_dir)  # --create: a failure leaves no state behind
    assert "ValueError" not in line
    assert not os.path.exists(pin_dir)  # nothing half-made


def test_bad_input_leaves_existing_state_alone(pin_dir: str) -> None:
    ok("--create", "deny", "from", "192.0.2.0/24", pin_dir=pin_dir)
    before = ok("save", pin_dir=pin_dir)
    for args, says in (
        (["deny", "from", "@office"], "no set @office"),
        (["deny", "from", "1.2.3.4/²"], "bad address"),
        (["deny", "from", "::ffff:192.0.2.9"], "write the IPv4 address"),
        (["set", "remove", "nosuch", "10.0.0.0/8"], "no set @nosuch"),
        (["set", "destroy", "nosuch"], "no set @nosuch"),
        (["insert", "3", "deny", "proto", "icmp"], "insert 3: positions are 1 to 2"),
        (["ban", "192.0.2.1", "300.0.0.1"], "bad address '300.0.0.1'"),
        (["unban", "1.2.3.4/²"], "bad address"),
    ):
        fails(2, says, *args, pin_dir=pin_dir)
    assert ok("save", pin_dir=pin_dir) == before


def test_endless_input_is_one_line(pin_dir: str) -> None:
    """Issue 19 (7): /dev/zero as a rule-set or prefix file was read until
    memory ran out; now one line naming the file (and the line), exit 2,
    nothing changed."""
    ok("--create", "deny", "from", "192.0.2.0/24", pin_dir=pin_dir)
    before = ok("save", pin_dir=pin_dir)
    for args in (["apply", "/dev/zero"], ["up", "/dev/zero"]):
        fails(2, "/dev/zero: not a text file (it holds a NUL character)", *args, pin_dir=pin_dir)
    for args in (["ban", "--file", "/dev/zero"], ["unban", "--file", "/dev/zero"],
                 ["set", "add", "x", "--file", "/dev/zero"]):
        fails(2, "/dev/zero line 1: longer than 4096 characters", *args, pin_dir=pin_dir)
    fails(2, "stdin line 2: longer than 4096 characters", "ban", "--file", "-", input="192.0.2.7\n" + "9" * 4097,
          pin_dir=pin_dir)
    fails(2, "stdin line 2: bad address", "ban", "--file", "-", input="192.0.2.7\n" + "9" * 4096 + "\n",
          pin_dir=pin_dir)  # 4,096 characters and the newline: read, and refused for what it says
    assert ok("save", pin_dir=pin_dir) == before


def test_too_deep_nesting_names_the_line(pin_dir: str, tmp_path: Any) -> None:
    """Issue 19 (7): arrays nested 3,000 deep gave "error: RecursionError"."""
    ok("--create", "deny", "from", "192.0.2.0/24", pin_dir=pin_dir)
    before = ok("save", pin_dir=pin_dir)
    deep = tmp_path / "deep.toml"
    deep.write_text('policy = "drop"\n# [[[ not counted in a comment\nrules = ["[[[", ' + "[" * 3000 + "]" * 3000
                    + "]\n")
    fails(2, f"{deep} line 3: arrays or inline tables nested too deep (more than 64 levels)", "apply", str(deep),
          pin_dir=pin_dir)
    deep.write_text("rules = [\n" + "[\n" * 3000 + "]\n" * 3000 + "]\n")
    fails(2, f"{deep} line 65: arrays or inline tables nested too deep", "apply", str(deep), pin_dir=pin_dir)
    assert ok("save", pin_dir=pin_dir) == before


def test_rule_set_files_longer_than_the_cap_are_refused(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from pyxdp.cli import common
    from pyxdp.errors import UsageError

    path = tmp_path / "rules.toml"
    path.write_text('rules = ["deny 22"]\n' * 3)
    assert common.read_text(str(path)) == path.read_text()
    monkeypatch.setattr(common, "MAX_TEXT", 40)
    with pytest.raises(UsageError, match=f"{path}: longer than 0 MiB, refused"):
        common.read_text(str(path))


def test_empty_pin_dir_is_refused() -> None:
    for args in (["status"], ["deny", "22"], ["--create", "ban", "192.0.2.1"]):
        fails(2, "the pin directory is empty", *args, pin_dir="")
    fails(2, "the pin directory is empty", "deny", "22", env={"PYXDP_PIN_DIR": ""}, pin_dir="")


def test_missing_privilege(pin_dir: str) -> None:
    fails(1, "needs root", "--create", "deny", "from", "192.0.2.1", pin_dir=pin_dir, no_caps=True)
    fails(1, "needs root", "load", EXAMPLE, "nosuchif0", no_caps=True)
    fails(1, "needs root", "attach", "nosuchif0", pin_dir=pin_dir, no_caps=True)
    assert not os.path.exists(pin_dir)


def test_pin_dir_not_on_bpffs() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        fails(2, "is not on a bpffs", "--create", "deny", "from", "192.0.2.1", pin_dir=os.path.join(tmp, "state"))
        assert os.listdir(tmp) == []


def test_ip_netns_exec_is_refused_with_the_netns_form(pin_dir: str, netpair: NetPair) -> None:
    """'ip netns exec NS' gives the command a fresh /sys without the host's
    bpffs: pyxdp would mount one of its own there and pin its state into it,
    gone when the command exits (the program stays attached with no state,
    its clsact after detach). Refused before anything is attached."""
    r = subprocess.run(["ip", "netns", "exec", netpair.b, BIN, "--pin-dir", pin_dir, "attach", netpair.vb],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stdout == "", r
    (line,) = r.stderr.splitlines()
    assert line.startswith(f"pyxdp-load: error: 'ip netns exec {netpair.b}' gives this command a /sys of its own")
    assert line.endswith(f"(pyxdp-load attach IFACE --netns {netpair.b})"), line
    assert " xdp" not in sh("ip", "-n", netpair.b, "link", "show", netpair.vb).stdout
    assert "clsact" not in sh("tc", "-n", netpair.b, "qdisc", "show", "dev", netpair.vb).stdout
    assert not os.path.exists(pin_dir)
    # the form it names works, and keeps its state
    ok("attach", netpair.vb, "--netns", netpair.b, pin_dir=pin_dir)
    assert f"  {netpair.vb} (ifindex " in ok("status", pin_dir=pin_dir)
    ok("detach", netpair.vb, "--netns", netpair.b, pin_dir=pin_dir)
    assert "clsact" not in sh("tc", "-n", netpair.b, "qdisc", "show", "dev", netpair.vb).stdout


def test_a_private_mount_namespace_without_bpffs_is_refused(pin_dir: str, netpair: NetPair) -> None:
    """Any mount namespace that is not PID 1's and has no bpffs (unshare -m,
    a service with private mounts): a bpffs mounted there would vanish too."""
    try:
        os.readlink("/proc/1/ns/mnt")
    except OSError:
        pytest.skip("PID 1's mount namespace cannot be read here (a sandbox): nothing to compare with")
    script = f'umount -l /sys/fs/bpf && exec {BIN} --pin-dir {pin_dir} attach {netpair.vb} --netns {netpair.b}'
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r
    (line,) = r.stderr.splitlines()
    assert "is not a bpffs in this mount namespace, which is not the host's (PID 1's)" in line, line
    assert " xdp" not in sh("ip", "-n", netpair.b, "link", "show", netpair.vb).stdout


def test_missing_libbpf(pin_dir: str) -> None:
    # PYXDP_LIBBPF is honoured only outside sudo (conftest.SUDO_VARS)
    fails(1, "cannot load libbpf-none.so.9", "--create", "deny", "from", "192.0.2.1", pin_dir=pin_dir,
          env={"PYXDP_LIBBPF": "libbpf-none.so.9"}, drop_env=SUDO_VARS)
    assert not os.path.exists(pin_dir)


def test_pin_dir_someone_else_made_is_kept(pin_dir: str, netpair: NetPair) -> None:
    """Issue 19 (3): a failed first attach and the last detach remove what
    pyxdp pinned, and the directory only when pyxdp made it (in this run or
    an earlier one)."""
    os.mkdir(pin_dir, 0o700)
    fails(2, "no interface 'nosuch0'", "attach", "nosuch0", pin_dir=pin_dir)
    assert os.path.isdir(pin_dir) and os.listdir(pin_dir) == []
    where = (netpair.vb, "--netns", netpair.b)
    ok("attach", *where, pin_dir=pin_dir)
    assert "state removed" in ok("detach", *where, pin_dir=pin_dir)
    assert os.path.isdir(pin_dir) and os.listdir(pin_dir) == []
    assert stat.S_IMODE(os.stat(pin_dir).st_mode) == 0o700
    os.rmdir(pin_dir)
    fails(2, "no interface 'nosuch0'", "attach", "nosuch0", pin_dir=pin_dir)  # made here: gone again
    assert not os.path.exists(pin_dir)
    ok("attach", *where, pin_dir=pin_dir)  # made by this run...
    assert "state removed" in ok("detach", *where, pin_dir=pin_dir)  # ...and removed by the next
    assert not os.path.exists(pin_dir)


def test_no_compiler_needed(pin_dir: str, tmp_path: Any) -> None:
    """The installed package runs with nothing but its venv on PATH."""
    env = {"PATH": os.path.dirname(sys.executable)}
    assert shutil.which("clang", path=env["PATH"]) is None and shutil.which("cc", path=env["PATH"]) is None
    ok("--create", "deny", "from", "192.0.2.0/24", pin_dir=pin_dir, env=env)
    cap = write_cap(tmp_path / "c.pcap", P.udp4("192.0.2.1"))
    assert "1 packets: 0 pass, 1 drop" in ok("replay", cap, pin_dir=pin_dir, env=env)


def _on_a_pty(argv: list[str]) -> tuple[int, str]:
    """Run ``argv`` with stdin, stdout and stderr on a pseudo-terminal; (exit code, all it wrote)."""
    import pty

    pid, fd = pty.fork()
    if pid == 0:  # the child: exec at once
        os.environ.update(TERM="xterm", COLUMNS="140")
        os.execv(argv[0], argv)
    out = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace")


def test_progress_bar_on_a_terminal_for_a_big_ban_file_and_none_when_piped(pin_dir: str, tmp_path: Any) -> None:
    """ban --file of 200,000 addresses (a 2.6 MB file): on a terminal a bar for
    reading the file and one for writing the elements, with counts and rate;
    piped (what fail2ban and scripts see), the output of before, nothing else."""
    path = str(tmp_path / "big.txt")
    n = 200_000
    with open(path, "w") as f:
        f.writelines(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}\n" for i in range(n))
    ok("--create", "set", "add", "x", "192.0.2.1", pin_dir=pin_dir)
    code, out = _on_a_pty([BIN, "--pin-dir", pin_dir, "ban", "--file", path, "--set", "onpty", "-q"])
    assert code == 0, out
    assert f"read {path}" in out and "MiB/s" in out, out[-2000:]
    assert "ban @onpty" in out and f"{n:,}/{n:,}" in out and "elements/s" in out, out[-2000:]
    assert "rule 1: deny from @onpty" in out

    r = run("ban", "--file", path, "--set", "piped", "-q", pin_dir=pin_dir)
    assert (r.returncode, r.stdout, r.stderr) == (0, "rule 1: deny from @piped (inserted: no rule used that set yet)\n",
                                                  ""), r
    code, out = _on_a_pty([BIN, "--pin-dir", pin_dir, "ban", "192.0.2.77", "--set", "small"])
    assert code == 0 and "/s" not in out and "━" not in out, out  # one address: no bar
    assert len(members(pin_dir, "onpty")) == len(members(pin_dir, "piped")) == n


def test_progress_callbacks_of_the_bulk_calls(pin_dir: str) -> None:
    """Filter.ban, set_add, apply and ruleset (what save writes) call
    progress(done, total) after each batch: rising, ending at the total."""
    from pyxdp import Filter, parse_prefix

    n = 150_000
    prefixes = [parse_prefix(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}") for i in range(n)]
    calls: dict[str, list[tuple[int, int]]] = {k: [] for k in ("ban", "set_add", "ruleset", "apply")}
    with Filter.open(pin_dir, create=True) as flt:
        flt.ban(prefixes, ttl=600, progress=lambda d, t: calls["ban"].append((d, t)))
        flt.set_add("more", prefixes[:100_000], progress=lambda d, t: calls["set_add"].append((d, t)))
        spec = flt.ruleset(progress=lambda d, t: calls["ruleset"].append((d, t)))
        flt.set_destroy("more")
        flt.apply(spec, progress=lambda d, t: calls["apply"].append((d, t)))
    totals = {"ban": n, "set_add": 100_000, "ruleset": n + 100_000, "apply": 100_000}  # apply keeps @banned (same)
    for what, seen in calls.items():
        assert len(seen) >= 2 and seen[-1] == (totals[what], totals[what]), (what, seen)
        assert [d for d, _ in seen] == sorted(d for d, _ in seen), (what, seen)
