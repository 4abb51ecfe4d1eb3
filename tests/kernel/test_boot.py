"""/etc is the operator's, /var/lib/pyxdp is pyxdp's; boot waits for what the config names and does not
fail for an optional interface; 'remove'. Real interfaces in namespaces the tests make, the unit's own
commands run as systemd runs them (its Environment, ${VAR} expanded; the state in the test's pin
directory, the runtime in the test's own directory: tests/conftest.py's runtime_dir)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time
from typing import Any

from helpers.cli import BIN, fails, ok, run
from helpers.env import NetPair, sh, systemd_unit

from pyxdp import Filter

CONFIG = """\
# /etc/pyxdp/pyxdp.toml: the operator's (Ansible template 3.2); comments and order are theirs
policy = 'pass'
rules = [
  "deny proto udp to any port 5002",   # the lab's test port
  "deny from @blocked",
]

[sets]
blocked = ["192.0.2.0/24", "198.51.100.7"]

[[interface]]
name = "vb"
netns = "{ns}"
mode = "auto"
"""


def xdp(ns: str, dev: str) -> tuple[str, int]:
    """What ``ip`` says ``dev`` runs: ('native'|'generic'|'', program id)."""
    link = json.loads(sh("ip", "-n", ns, "-j", "-d", "link", "show", "dev", dev).stdout)[0]
    x = link.get("xdp")
    if not x:
        return "", 0
    return {1: "native", 2: "generic"}.get(x["mode"], str(x["mode"])), int(x["prog"]["id"])


def unit_env(pin_dir: str, cfg: str) -> dict[str, str]:
    env = dict(os.environ, PYXDP_PIN_DIR=pin_dir)
    key, _, value = systemd_unit()["Service"]["Environment"].partition("=")
    assert key == "PYXDP_CONFIG" and value == "/etc/pyxdp/pyxdp.toml"
    env[key] = cfg  # what 'systemctl edit' with Environment=PYXDP_CONFIG=... does
    return env


def execute(which: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The unit's ExecStart, ExecReload or ExecStop line, run as systemd runs it."""
    line = systemd_unit()["Service"][which]
    argv = [w.replace("${PYXDP_CONFIG}", env["PYXDP_CONFIG"]) for w in shlex.split(line)]
    assert argv[0] == "/usr/local/sbin/pyxdp-load"
    return subprocess.run([BIN, *argv[1:]], capture_output=True, text=True, env=env, timeout=60)


def done(r: subprocess.CompletedProcess[str]) -> list[str]:
    assert r.returncode == 0 and r.stderr == "", (r.stdout, r.stderr)
    return r.stdout.splitlines()


def saved(pin_dir: str) -> str:
    """The whole running firewall and its interfaces, the time left of elements cut out (it counts down)."""
    return re.sub(r" ttl \d+", " ttl N", ok("save", "--all", pin_dir=pin_dir))


def rules(pin_dir: str) -> list[str]:
    return [json.loads(x)["rule"] for x in ok("list", "--json", pin_dir=pin_dir).splitlines()
            if "rule" in json.loads(x)]


def members(pin_dir: str, name: str) -> dict[str, float | None]:
    return {r["prefix"]: r["expires_in"] for r in
            (json.loads(x) for x in ok("set", "list", name, "--json", pin_dir=pin_dir).splitlines())}


def test_stop_saves_to_var_lib_boot_merges_and_etc_stays_byte_identical(pin_dir: str, netpair: NetPair,
                                                                         tmp_path: Any, runtime_dir: str) -> None:
    cfg = tmp_path / "pyxdp.toml"
    cfg.write_text(CONFIG.format(ns=netpair.b))
    original = cfg.read_bytes()
    env = unit_env(pin_dir, str(cfg))
    assert "attached to vb" in done(execute("ExecStart", env))[-1]
    ok("ban", "-q", "203.0.113.9", "--ttl", "2h", pin_dir=pin_dir)  # bans and an element added at run time
    ok("set", "add", "blocked", "192.0.2.200", pin_dir=pin_dir)
    runtime = os.path.join(runtime_dir, "runtime.toml")
    assert done(execute("ExecStop", env)) == [
        f"saved what changed at run time to {runtime}: 2 set elements (2 sets), 1 rule"]
    assert cfg.read_bytes() == original  # never written
    assert xdp(netpair.b, netpair.vb)[0] == "native"  # stopping does not open the firewall

    # a reboot: the state is gone (bpffs is empty), the unit starts: the config, with the runtime on top
    ok("remove", pin_dir=pin_dir)
    out = done(execute("ExecStart", env))
    assert out[:3] == [f"made the state in {pin_dir}",
                       f"restored from {runtime}: 2 set elements (2 sets), 1 rule",
                       "applied 3 rules, 2 sets (4 elements), policy pass"]
    assert rules(pin_dir) == ["deny from @banned", "deny proto udp to any port 5002", "deny from @blocked"]
    banned = members(pin_dir, "banned")["203.0.113.9/32"]
    assert banned is not None and 7000 < banned <= 7200  # its time left, not a new clock
    assert set(members(pin_dir, "blocked")) == {"192.0.2.0/24", "198.51.100.7/32", "192.0.2.200/32"}
    assert cfg.read_bytes() == original

    # the operator edits the file and does not reload: the edit is neither lost nor undone by the runtime
    edited = original.replace(b'"192.0.2.0/24", ', b"").replace(b"port 5002", b"port 5003")
    cfg.write_bytes(edited)
    done(execute("ExecStop", env))
    assert cfg.read_bytes() == edited
    ok("remove", pin_dir=pin_dir)
    done(execute("ExecStart", env))
    assert rules(pin_dir) == ["deny from @banned", "deny proto udp to any port 5003", "deny from @blocked"]
    assert set(members(pin_dir, "blocked")) == {"198.51.100.7/32", "192.0.2.200/32"}
    assert "203.0.113.9/32" in members(pin_dir, "banned")
    assert cfg.read_bytes() == edited


def test_reload_keeps_runtime_changes_and_dry_run_says_what_it_would_change(pin_dir: str, netpair: NetPair,
                                                                           tmp_path: Any) -> None:
    cfg = tmp_path / "pyxdp.toml"
    cfg.write_text(CONFIG.format(ns=netpair.b))
    env = unit_env(pin_dir, str(cfg))
    done(execute("ExecStart", env))
    ok("ban", "-q", "203.0.113.9", "--ttl", "2h", pin_dir=pin_dir)
    ok("allow", "22/tcp", pin_dir=pin_dir)  # a rule added by hand: kept only when the config says keep_rules
    cfg.write_text(CONFIG.format(ns=netpair.b).replace('"198.51.100.7"', '"198.51.100.8"')
                   + "\n[runtime]\nkeep_rules = true\n")
    before = saved(pin_dir)
    dry = ok("up", "--dry-run", str(cfg), pin_dir=pin_dir).splitlines()
    assert dry == ["would apply:   set blocked: +1 elements (198.51.100.8/32), -1 (198.51.100.7/32)"]
    assert saved(pin_dir) == before  # nothing changed
    assert done(execute("ExecReload", env)) == ["applied 4 rules, 2 sets (3 elements), policy pass"]
    assert rules(pin_dir) == ["deny from @banned", "deny proto udp to any port 5002", "deny from @blocked",
                              "allow proto tcp to any port 22"]
    assert set(members(pin_dir, "blocked")) == {"192.0.2.0/24", "198.51.100.8/32"}
    assert set(members(pin_dir, "banned")) == {"203.0.113.9/32"}
    assert ok("up", "--dry-run", str(cfg), pin_dir=pin_dir) == f"no change: 'up' of {cfg} would change nothing\n"
    # without keep_rules the hand-made rule goes; the ban (and its rule) stays
    cfg.write_text(CONFIG.format(ns=netpair.b).replace('"198.51.100.7"', '"198.51.100.8"'))
    assert ok("up", "--dry-run", str(cfg), pin_dir=pin_dir).splitlines() == \
        ["would apply: - rule 4: allow proto tcp to any port 22"]
    done(execute("ExecReload", env))
    assert rules(pin_dir) == ["deny from @banned", "deny proto udp to any port 5002", "deny from @blocked"]
    # --no-runtime: the config file alone
    assert ok("up", "--dry-run", "--no-runtime", str(cfg), pin_dir=pin_dir).splitlines() == [
        "would apply: - rule 1: deny from @banned", "would apply: - set banned (1 elements)"]
    ok("up", "--no-runtime", str(cfg), pin_dir=pin_dir)
    assert rules(pin_dir) == ["deny proto udp to any port 5002", "deny from @blocked"]
    # on no state: what a boot would do
    ok("remove", pin_dir=pin_dir)
    assert ok("up", "--dry-run", str(cfg), pin_dir=pin_dir).splitlines() == [
        f"would make the state in {pin_dir}",
        "would apply: + rule 1: deny proto udp to any port 5002", "would apply: + rule 2: deny from @blocked",
        "would apply: + set blocked: +2 elements (192.0.2.0/24, 198.51.100.8/32), -0", "would apply: policy - -> pass",
        f"would attach to vb (netns {netpair.b}): auto mode"]
    assert not os.path.exists(pin_dir)


def _iface(name: str, ns: str, **keys: object) -> str:
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items())
    return f'\n[[interface]]\nname = "{name}"\nnetns = "{ns}"\n{extra}'


def test_up_waits_for_a_late_interface_skips_an_optional_one_and_attaches_it_later(
        pin_dir: str, netpair: NetPair, tmp_path: Any) -> None:
    cfg = tmp_path / "pyxdp.toml"
    cfg.write_text('rules = ["deny proto udp to any port 5002"]\n' + _iface("vb", netpair.b)
                   + _iface("late0", netpair.b, wait=30) + _iface("usb0", netpair.b, optional=True, wait=1))
    e = dict(os.environ)
    proc = subprocess.Popen([BIN, "--pin-dir", pin_dir, "up", str(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=e)
    try:
        time.sleep(2)  # 'up' is waiting for late0: nothing attached yet
        assert proc.poll() is None and xdp(netpair.b, netpair.vb) == ("", 0) and not os.path.exists(pin_dir)
        sh("ip", "-n", netpair.b, "link", "add", "late0", "type", "veth", "peer", "name", "late1")
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert err.splitlines() == [f"pyxdp-load: warning: usb0 (netns {netpair.b}) is missing (optional, waited 1 s): "
                                "not attached; 'pyxdp-load up --only usb0' attaches it when it appears"]
    assert [x.split(":")[0] for x in out.splitlines()] == [
        f"made the state in {pin_dir}", "applied 1 rule, 0 sets (0 elements)",
        f"attached to vb (netns {netpair.b})", f"attached to late0 (netns {netpair.b})"]
    prog = xdp(netpair.b, netpair.vb)[1]
    assert prog and xdp(netpair.b, "late0")[1] == prog
    # a second run: the optional one is still missing (a warning), nothing else to do, exit 0
    r = run("up", str(cfg), pin_dir=pin_dir)
    assert r.returncode == 0 and r.stdout == "" and len(r.stderr.splitlines()) == 1, (r.stdout, r.stderr)
    # it appears: what pyxdp-attach@usb0.service runs attaches it, and nothing else changes
    sh("ip", "-n", netpair.b, "link", "add", "usb0", "type", "veth", "peer", "name", "usb1")
    before = ok("save", pin_dir=pin_dir)
    assert ok("up", "--only", "usb0", str(cfg), pin_dir=pin_dir) == \
        f"attached to usb0 (netns {netpair.b}): native mode, program id {prog}\n"
    assert ok("save", pin_dir=pin_dir) == before and xdp(netpair.b, netpair.vb)[1] == prog
    assert ok("up", "--only", "usb0", str(cfg), pin_dir=pin_dir).startswith("no change")
    fails(2, "names no interface 'eth9'", "up", "--only", "eth9", str(cfg), pin_dir=pin_dir)


def test_a_missing_required_interface_fails_and_changes_nothing(pin_dir: str, netpair: NetPair,
                                                                tmp_path: Any) -> None:
    cfg = tmp_path / "pyxdp.toml"
    cfg.write_text('rules = ["deny proto udp to any port 5002"]\n' + _iface("vb", netpair.b)
                   + _iface("gone0", netpair.b, wait=0.5))
    fails(1, f"no interface gone0 (netns {netpair.b}) (waited 0.5 s) and the config does not call it optional: "
          "nothing changed", "up", str(cfg), pin_dir=pin_dir)
    assert not os.path.exists(pin_dir) and xdp(netpair.b, netpair.vb) == ("", 0)
    # over running state: rules and interfaces stay as they were
    ok("up", "-", input='rules = ["allow 22/tcp"]\n' + _iface("vb", netpair.b), pin_dir=pin_dir)
    before = ok("save", "--all", pin_dir=pin_dir)
    fails(1, "no interface gone0", "up", str(cfg), pin_dir=pin_dir)
    assert ok("save", "--all", pin_dir=pin_dir) == before
    fails(1, "no interface gone0", "up", "--dry-run", str(cfg), pin_dir=pin_dir)


def test_remove_removes_a_state_with_or_without_interfaces(pin_dir: str, netpair: NetPair) -> None:
    with Filter.open(pin_dir, create=True):
        pass
    assert ok("remove", pin_dir=pin_dir) == f"removed the state in {pin_dir}\n"
    assert not os.path.exists(pin_dir)
    fails(1, "no pyxdp state", "remove", pin_dir=pin_dir)
    ok("attach", "vb", "--netns", netpair.b, pin_dir=pin_dir)
    ok("attach", "va", "--netns", netpair.a, "--mode", "generic", pin_dir=pin_dir)
    assert ok("remove", pin_dir=pin_dir).splitlines() == [
        f"detached from {n} (netns {ns})" for n, ns in sorted([("va", netpair.a), ("vb", netpair.b)],
                                                              key=lambda t: t[1])] + [
        f"removed the state in {pin_dir}"]
    assert xdp(netpair.b, netpair.vb) == ("", 0) and xdp(netpair.a, netpair.va) == ("", 0)
    assert not os.path.exists(pin_dir)


def test_a_record_an_up_killed_part_way_left_names_what_the_firewall_holds(pin_dir: str, tmp_path: Any) -> None:
    """The record of the applied config is written pending before 'up' changes anything and final after:
    of a pending one (a kill in between), the base is the new config when the running firewall holds all of
    it (the 'up' was done), else the one before (it was undone)."""
    from pyxdp import parse_ruleset
    from pyxdp.runtime import applied_base, record_applied

    old = parse_ruleset('rules = ["deny from @blocked"]\n[sets]\nblocked = ["192.0.2.0/24"]\n')
    new = parse_ruleset('rules = ["deny from @blocked", "allow 22/tcp"]\n[sets]\nblocked = ["192.0.2.0/24"]\n')
    with Filter.open(pin_dir, create=True) as flt:
        flt.apply(old)
        record_applied(flt.state, new, old, pending=True)  # killed before its first change: undone
        assert applied_base(flt.state, flt.ruleset) == old
        flt.apply(new)  # killed after its last change, before the final record
        flt.ban(["203.0.113.9"])  # what runs beyond it does not matter
        assert applied_base(flt.state, flt.ruleset) == new
        record_applied(flt.state, new, None, pending=True)  # no record before it, and undone
        flt.apply(old)
        assert applied_base(flt.state, flt.ruleset) is None
        record_applied(flt.state, old)
        assert applied_base(flt.state, flt.ruleset) == old
        # a file that only takes things out: the running firewall holds both; the base is the one it is
        record_applied(flt.state, old, new, pending=True)
        flt.apply(new)  # undone
        assert applied_base(flt.state, flt.ruleset) == new
        flt.apply(old)  # done
        flt.ban(["203.0.113.10"])
        assert applied_base(flt.state, flt.ruleset) == old
    # a record is of one state: the same pin directory made anew is another
    ok("remove", pin_dir=pin_dir)
    with Filter.open(pin_dir, create=True) as flt:
        assert applied_base(flt.state, flt.ruleset) is None
