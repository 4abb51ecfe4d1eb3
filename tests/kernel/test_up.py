"""The declarative config and boot (that the config file parses, formats
back and refuses what it does not know with its line: tests/unit/test_up.py):
``pyxdp-load up`` makes the running firewall
and its interfaces what the file says (real interfaces in namespaces the
tests make, real packets), all or nothing, a second time changing nothing;
``save --all`` writes it back (the systemd unit's commands, runtime saving,
waiting and optional interfaces: tests/kernel/test_boot.py)."""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Any

import pytest
from helpers.cli import fails, ok, run
from helpers.env import NetPair, needs_root, sh
from helpers.traffic import dropped_all_but, exchange

from pyxdp import (
    Filter,
    InterfaceSpec,
    UsageError,
    Verdict,
    parse_ruleset,
)

# ---- up, save --all (root: namespaces, veths, bpffs) ---------------------------------------------


def config(pair: NetPair, *, rules: tuple[str, ...] = ("deny proto udp to any port 5002", "deny from @blocked"),
           blocked: tuple[str, ...] = ("192.0.2.0/24", "198.51.100.7 ttl 600"),
           ifaces: tuple[tuple[str, str, str], ...] | None = None) -> str:
    """A config file: ``ifaces`` (name, netns, mode) default to vb native in b and va generic in a."""
    if ifaces is None:
        ifaces = ((pair.vb, pair.b, "native"), (pair.va, pair.a, "generic"))
    text = 'policy = "pass"\nrules = [\n' + "".join(f'    "{r}",\n' for r in rules) + "]\n\n[sets]\nblocked = [\n"
    text += "".join(f'    "{e}",\n' for e in blocked) + "]\n"
    for name, ns, mode in ifaces:
        text += f'\n[[interface]]\nname = "{name}"\nnetns = "{ns}"\nmode = "{mode}"\n'
    return text


def xdp(ns: str, dev: str) -> tuple[str, int]:
    """What ``ip`` says ``dev`` runs: ('native'|'generic'|'', program id)."""
    link = json.loads(sh("ip", "-n", ns, "-j", "-d", "link", "show", "dev", dev).stdout)[0]
    x = link.get("xdp")
    if not x:
        return "", 0
    return {1: "native", 2: "generic"}.get(x["mode"], str(x["mode"])), int(x["prog"]["id"])


def status(pin_dir: str) -> dict[str, Any]:
    out = json.loads(ok("status", "--json", pin_dir=pin_dir))
    assert isinstance(out, dict)
    return out


def expires(pin_dir: str, name: str, prefix: str) -> float | None:
    rows = [json.loads(x) for x in ok("set", "list", name, "--json", pin_dir=pin_dir).splitlines()]
    return next(r["expires_in"] for r in rows if r["prefix"] == prefix)


def code(ns: str, dev: str) -> tuple[str, str]:
    """What ``ip`` says ``dev`` runs: ('native'|'generic'|'', the program's tag: the hash of its code)."""
    link = json.loads(sh("ip", "-n", ns, "-j", "-d", "link", "show", "dev", dev).stdout)[0]
    x = link.get("xdp")
    return ({1: "native", 2: "generic"}.get(x["mode"], str(x["mode"])), x["prog"]["tag"]) if x else ("", "")


def snapshot(pin_dir: str, pair: NetPair) -> tuple[str, tuple[str, str], tuple[str, str], tuple[str, str]]:
    """Everything 'up' may change: the whole saved firewall with its interfaces (set timeouts cut out: they
    count down), and what each interface runs (by its code: a change of the program's shape that is undone
    puts a program of the same code back, see pyxdp.store.shapes)."""
    saved = re.sub(r" ttl \d+", " ttl N", ok("save", "--all", pin_dir=pin_dir))
    return saved, code(pair.b, pair.vb), code(pair.a, pair.va), code(pair.b, "lo")


@needs_root
def test_up_attaches_applies_drops_and_a_second_run_changes_nothing(pin_dir: str, netpair: NetPair,
                                                                    tmp_path: Any) -> None:
    cfg = tmp_path / "pyxdp.toml"
    cfg.write_text(config(netpair))
    out = ok("up", str(cfg), pin_dir=pin_dir).splitlines()
    native_id = xdp(netpair.b, netpair.vb)
    assert native_id[0] == "native" and xdp(netpair.a, netpair.va) == ("generic", native_id[1])
    prog = native_id[1]
    assert out == [
        f"made the state in {pin_dir}",
        "applied 2 rules, 1 set (2 elements), policy pass",
        f"attached to vb (netns {netpair.b}): native mode, program id {prog}",
        f"attached to va (netns {netpair.a}): generic mode, program id {prog}",
    ]
    st = status(pin_dir)
    assert [(a["ifname"], a["netns"], a["mode"], a["prog_id"], a["attached"]) for a in st["interfaces"]] == \
        sorted([("vb", netpair.b, "native", prog, True), ("va", netpair.a, "generic", prog, True)],
               key=lambda t: t[1])
    left = expires(pin_dir, "blocked", "198.51.100.7/32")
    assert left is not None and 590 < left <= 600

    # real packets: port 5002 is denied, 5001 passes
    with Filter.open(pin_dir, lock=False) as flt:
        before = flt.stats().total(Verdict.DROP)
        got = exchange(netpair, "10.77.0.2", {5001: 20, 5002: 20}, settled=dropped_all_but(flt, before, 40))
    assert got == {5001: 20, 5002: 0}

    # idempotent: nothing changes, the same program stays, a ban's clock is not restarted
    hits = [json.loads(x) for x in ok("list", "--json", pin_dir=pin_dir).splitlines()]
    assert ok("up", str(cfg), pin_dir=pin_dir) == \
        f"no change: the firewall and its 2 interfaces are what {cfg} says\n"
    assert xdp(netpair.b, netpair.vb) == ("native", prog) and xdp(netpair.a, netpair.va) == ("generic", prog)
    assert [json.loads(x) for x in ok("list", "--json", pin_dir=pin_dir).splitlines()] == hits
    again = expires(pin_dir, "blocked", "198.51.100.7/32")
    assert again is not None and again <= left

    # a changed rule list is applied; an element running with a timeout keeps its time left
    cfg.write_text(config(netpair, rules=("deny from @blocked", "deny proto udp to any port 5002",
                                          "allow 22/tcp"), blocked=("192.0.2.0/24", "198.51.100.7 ttl 3600")))
    assert ok("up", str(cfg), pin_dir=pin_dir) == "applied 3 rules, 1 set (2 elements), policy pass\n"
    kept = expires(pin_dir, "blocked", "198.51.100.7/32")
    assert kept is not None and kept <= left + 1  # (the time left is carried in whole seconds, rounded up)
    # a leading ban list: the program with that fast path replaced the other on both interfaces at once
    mode, prog = xdp(netpair.b, netpair.vb)
    assert mode == "native" and xdp(netpair.a, netpair.va) == ("generic", prog)
    assert "ban first" in status(pin_dir)["shape"]["running"]

    # an interface the file no longer names is detached (last); the other keeps running the same program
    cfg.write_text(config(netpair, rules=("deny from @blocked", "deny proto udp to any port 5002", "allow 22/tcp"),
                          blocked=("192.0.2.0/24", "198.51.100.7 ttl 3600"),
                          ifaces=((netpair.vb, netpair.b, "native"),)))
    assert ok("up", str(cfg), pin_dir=pin_dir) == f"detached from va (netns {netpair.a})\n"
    assert xdp(netpair.a, netpair.va) == ("", 0) and xdp(netpair.b, netpair.vb) == ("native", prog)
    assert [a["ifname"] for a in status(pin_dir)["interfaces"]] == ["vb"]

    # another mode: attached again in it (native and generic cannot run at once)
    cfg.write_text(cfg.read_text().replace('mode = "native"', 'mode = "generic"'))
    assert ok("up", str(cfg), pin_dir=pin_dir) == \
        f"attached to vb (netns {netpair.b}) again: generic mode (was native), program id {prog}\n"
    assert xdp(netpair.b, netpair.vb) == ("generic", prog)
    # 'auto' takes the mode that runs
    cfg.write_text(cfg.read_text().replace('mode = "generic"', 'mode = "auto"'))
    assert ok("up", str(cfg), pin_dir=pin_dir).startswith("no change: ")
    with Filter.open(pin_dir, lock=False) as flt:
        before = flt.stats().total(Verdict.DROP)
        got = exchange(netpair, "10.77.0.2", {5001: 10, 5002: 10}, settled=dropped_all_but(flt, before, 20))
    assert got == {5001: 10, 5002: 0}

    # a file naming no interface detaches the last one, when told, and keeps the state (the file still
    # says the rules); see test_an_empty_config_is_refused_over_attached_interfaces
    cfg.write_text(config(netpair, ifaces=()))
    assert ok("up", "--allow-empty", str(cfg), pin_dir=pin_dir).splitlines() == [
        "applied 2 rules, 1 set (2 elements), policy pass", f"detached from vb (netns {netpair.b})"]
    assert xdp(netpair.b, netpair.vb) == ("", 0)
    assert status(pin_dir)["interfaces"] == []
    assert "deny from @blocked" in ok("save", pin_dir=pin_dir)


@pytest.mark.long(15)
@needs_root
def test_a_bad_file_or_a_failing_step_changes_nothing(pin_dir: str, netpair: NetPair, tmp_path: Any) -> None:
    cfg = tmp_path / "pyxdp.toml"
    cfg.write_text(config(netpair))
    ok("up", str(cfg), pin_dir=pin_dir)
    before = snapshot(pin_dir, netpair)
    changed = config(netpair, rules=("allow 22/tcp",), ifaces=((netpair.vb, netpair.b, "generic"),))
    bad = tmp_path / "bad.toml"
    speed = changed + '\n[[interface]]\nname = "lo"\nnetns = "' + netpair.b + '"\nspeed = 5\n'
    for text, code, says in [
        (speed, 2, f"bad.toml line {speed.splitlines().index('speed = 5') + 1}: unknown key 'speed' in [[interface]]"),
        (changed.replace("allow 22/tcp", "allow 99999/tcp"), 2, "bad.toml line 3: bad port '99999'"),
        (changed.replace('mode = "generic"', 'mode = "turbo"'), 2, "bad mode 'turbo' for interface vb"),
        # checked before anything changes: a missing interface or namespace (a runtime failure: exit 1)
        (changed + '\n[[interface]]\nname = "nosuch0"\nnetns = "' + netpair.b + '"\n', 1,
         f"no interface nosuch0 (netns {netpair.b}) and the config does not call it optional: nothing changed"),
        (changed + '\n[[interface]]\nname = "vb"\nnetns = "pxt-no-such-ns"\n', 1,
         "no interface vb (netns pxt-no-such-ns) and the config does not call it optional"),
        # fails halfway (lo has no native XDP): the rules applied and the interfaces changed are put back
        (changed + '\n[[interface]]\nname = "lo"\nnetns = "' + netpair.b + '"\nmode = "native"\n', 1,
         "attach to lo (native)"),
    ]:
        bad.write_text(text)
        fails(code, says, "up", str(bad), pin_dir=pin_dir)
        assert snapshot(pin_dir, netpair) == before, text
    fails(2, "cannot read /nonexistent/pyxdp.toml", "up", "/nonexistent/pyxdp.toml", pin_dir=pin_dir)
    # another tool's XDP program is not replaced
    other = pin_dir + "-other"
    try:
        ok("attach", "lo", "--netns", netpair.b, "--mode", "generic", pin_dir=other)
        bad.write_text(changed + '\n[[interface]]\nname = "lo"\nnetns = "' + netpair.b + '"\n')
        fails(1, f"lo (netns {netpair.b}): runs XDP program", "up", str(bad), pin_dir=pin_dir)
        assert snapshot(pin_dir, netpair)[:3] == before[:3]
    finally:
        run("detach", "lo", "--netns", netpair.b, pin_dir=other)
        shutil.rmtree(other, ignore_errors=True)
    # and the state is not made by an 'up' that fails
    fresh = pin_dir + "-fresh"
    try:
        bad.write_text(config(netpair, ifaces=(("nosuch0", netpair.b, "auto"),)))
        fails(1, "no interface nosuch0", "up", str(bad), pin_dir=fresh)
        assert not os.path.exists(fresh)
    finally:
        shutil.rmtree(fresh, ignore_errors=True)


@pytest.mark.long(12)
@needs_root
def test_an_empty_config_is_refused_over_attached_interfaces(pin_dir: str, netpair: NetPair, tmp_path: Any) -> None:
    """Issue 19 (5): an empty file (or /dev/null, or one with rules but no
    interface) over a state running on interfaces would leave them
    unfiltered: refused with one line naming them and --allow-empty,
    nothing changed; with --allow-empty it detaches them."""
    cfg = tmp_path / "pyxdp.toml"
    cfg.write_text(config(netpair))
    ok("up", str(cfg), pin_dir=pin_dir)
    before = snapshot(pin_dir, netpair)
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    rules_only = tmp_path / "rules.toml"
    rules_only.write_text(config(netpair, ifaces=()))
    names = f"va (netns {netpair.a}), vb (netns {netpair.b})"
    for how in ({"args": (str(empty),)}, {"args": (), "env": {"PYXDP_CONFIG": "/dev/null"}},
                {"args": ("-",), "input": ""}, {"args": (str(rules_only),)}):
        line = fails(2, f"the config names no interface: 'up' would detach the filter from {names}", "up",
                     *how["args"], pin_dir=pin_dir, env=how.get("env"), input=how.get("input"))
        assert "--allow-empty" in line
        assert snapshot(pin_dir, netpair) == before, how
    with pytest.raises(UsageError, match="names no interface"), Filter.open(pin_dir) as flt:
        flt.up(parse_ruleset(""))
    assert snapshot(pin_dir, netpair) == before
    # when told: everything detached, the state kept with the file's rules
    out = ok("up", "--allow-empty", pin_dir=pin_dir, env={"PYXDP_CONFIG": "/dev/null"}).splitlines()
    assert out == ["applied 0 rules, 0 sets (0 elements)", f"detached from va (netns {netpair.a})",
                   f"detached from vb (netns {netpair.b})"]
    assert xdp(netpair.a, netpair.va) == ("", 0) and xdp(netpair.b, netpair.vb) == ("", 0)
    assert status(pin_dir)["interfaces"] == []
    # nothing attached any more: an empty file needs no flag
    assert ok("up", str(empty), pin_dir=pin_dir).startswith("no change: ")


@needs_root
def test_save_all_then_up_on_fresh_state_reproduces_everything(pin_dir: str, netpair: NetPair,
                                                               tmp_path: Any) -> None:
    ok("attach", netpair.vb, "--netns", netpair.b, "--mode", "native", pin_dir=pin_dir)
    ok("attach", netpair.va, "--netns", netpair.a, "--mode", "generic", pin_dir=pin_dir)
    ok("policy", "drop", pin_dir=pin_dir)
    ok("set", "add", "office", "10.77.0.0/24", "fd77::/64", pin_dir=pin_dir)
    ok("allow", "proto", "udp", "from", "@office", "to", "any", "port", "5001", pin_dir=pin_dir)
    ok("ban", "-q", "203.0.113.7", "2001:db8:bad::/48", "--ttl", "1h", pin_dir=pin_dir)
    # plain 'save' is as it was: no interfaces
    assert "[[interface]]" not in ok("save", pin_dir=pin_dir)
    cfg = tmp_path / "pyxdp.toml"
    assert ok("save", "--all", str(cfg), pin_dir=pin_dir) == ""
    assert os.stat(cfg).st_mode & 0o777 == 0o600
    text = cfg.read_text()
    assert re.sub(r" ttl \d+", "", text) == re.sub(r" ttl \d+", "", ok("save", "--all", pin_dir=pin_dir))
    spec = parse_ruleset(text, "saved")
    assert sorted(spec.interfaces) == sorted([InterfaceSpec("vb", netpair.b, "native"),
                                              InterfaceSpec("va", netpair.a, "generic")])
    assert [str(r) for r in spec.rules] == ["deny from @banned", "allow proto udp from @office to any port 5001"]
    assert {e.ttl is None for e in spec.sets["banned"]} == {False}

    # everything goes: detaching both removes the state
    ok("detach", netpair.vb, "--netns", netpair.b, pin_dir=pin_dir)
    assert ok("detach", netpair.va, "--netns", netpair.a, pin_dir=pin_dir).endswith("state removed\n")
    assert not os.path.exists(pin_dir)
    out = ok("up", str(cfg), pin_dir=pin_dir).splitlines()
    assert out[:2] == [f"made the state in {pin_dir}", "applied 2 rules, 2 sets (4 elements), policy drop"]
    assert len(out) == 4 and all(line.startswith("attached to ") for line in out[2:])
    assert xdp(netpair.b, netpair.vb)[0] == "native" and xdp(netpair.a, netpair.va)[0] == "generic"
    back = ok("save", "--all", pin_dir=pin_dir)
    assert re.sub(r" ttl \d+", "", back) == re.sub(r" ttl \d+", "", text)
    for a, b in zip(parse_ruleset(back).sets["banned"], spec.sets["banned"]):
        assert a.prefix == b.prefix and a.ttl is not None and b.ttl is not None and b.ttl - 5 <= a.ttl <= b.ttl
    assert ok("up", str(cfg), pin_dir=pin_dir).startswith("no change: ")
    # and the restored firewall filters: the office's port passes, the rest is dropped by the policy
    with Filter.open(pin_dir, lock=False) as flt:
        before = flt.stats().total(Verdict.DROP)
        got = exchange(netpair, "10.77.0.2", {5001: 10, 5003: 10}, settled=dropped_all_but(flt, before, 20))
    assert got == {5001: 10, 5003: 0}


@needs_root
def test_up_attaches_an_interface_made_anew_and_forgets_its_old_record(pin_dir: str, netpair: NetPair,
                                                                       tmp_path: Any) -> None:
    cfg = tmp_path / "pyxdp.toml"
    cfg.write_text(config(netpair))
    ok("up", str(cfg), pin_dir=pin_dir)
    old = {a["ifname"]: a["ifindex"] for a in status(pin_dir)["interfaces"]}
    # the veth goes and comes back under the same names (a driver reload, a container restart): new ifindexes
    sh("ip", "-n", netpair.b, "link", "del", netpair.vb)
    sh("ip", "link", "add", "pxtmp0", "netns", netpair.a, "type", "veth", "peer", "name", "pxtmp1", "netns",
       netpair.b)
    sh("ip", "-n", netpair.a, "link", "set", "pxtmp0", "name", netpair.va)
    sh("ip", "-n", netpair.b, "link", "set", "pxtmp1", "name", netpair.vb)
    assert [a["attached"] for a in status(pin_dir)["interfaces"]] == [False, False]
    assert [i.name for i in parse_ruleset(ok("save", "--all", pin_dir=pin_dir)).interfaces] == ["va", "vb"]
    out = ok("up", str(cfg), pin_dir=pin_dir).splitlines()
    assert sorted(line.split(":")[0] for line in out) == [f"attached to va (netns {netpair.a})",
                                                          f"attached to vb (netns {netpair.b})"]
    now = status(pin_dir)["interfaces"]
    assert len(now) == 2 and all(a["attached"] for a in now)
    assert all(a["ifindex"] != old[a["ifname"]] for a in now)
    assert xdp(netpair.b, netpair.vb)[0] == "native" and xdp(netpair.a, netpair.va)[0] == "generic"
    assert ok("up", str(cfg), pin_dir=pin_dir).startswith("no change: ")
    # gone for good: 'save --all' leaves out what no longer exists (a boot's 'up' would fail on it), and an
    # 'up' of that file forgets the records
    sh("ip", "-n", netpair.b, "link", "del", netpair.vb)
    saved = tmp_path / "saved.toml"
    ok("save", "--all", str(saved), pin_dir=pin_dir)
    assert parse_ruleset(saved.read_text()).interfaces == ()
    assert sorted(ok("up", str(saved), pin_dir=pin_dir).splitlines()) == [
        f"detached from va (netns {netpair.a})", f"detached from vb (netns {netpair.b})"]
    assert status(pin_dir)["interfaces"] == []


@needs_root
def test_apply_leaves_interfaces_alone_and_says_so(pin_dir: str, netpair: NetPair, tmp_path: Any) -> None:
    cfg = tmp_path / "pyxdp.toml"
    cfg.write_text(config(netpair))
    out = ok("--create", "apply", str(cfg), pin_dir=pin_dir)
    assert out == ("applied 2 rules, 1 set (2 elements), policy pass\n"
                   f"note: 'apply' leaves interfaces as they are; 'pyxdp-load up {cfg}' also attaches the file's "
                   "2 interfaces (and detaches others)\n")
    assert xdp(netpair.b, netpair.vb) == ("", 0) and xdp(netpair.a, netpair.va) == ("", 0)
    assert status(pin_dir)["interfaces"] == []


@needs_root
def test_up_reads_pyxdp_config_and_stdin(pin_dir: str, netpair: NetPair, tmp_path: Any) -> None:
    cfg = tmp_path / "elsewhere.toml"
    cfg.write_text(config(netpair, ifaces=((netpair.vb, netpair.b, "auto"),)))
    out = ok("up", pin_dir=pin_dir, env={"PYXDP_CONFIG": str(cfg)})
    assert "attached to vb" in out
    assert ok("up", "-", input=cfg.read_text(), pin_dir=pin_dir) == \
        "no change: the firewall and its 1 interface are what stdin says\n"
    r = run("up", pin_dir=pin_dir, env={"PYXDP_CONFIG": str(tmp_path / "missing.toml")})
    assert r.returncode == 2 and r.stderr.strip().endswith("missing.toml: No such file or directory")
