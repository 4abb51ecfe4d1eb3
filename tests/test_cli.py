"""pyxdp-load as a user runs it: every subcommand, and every class of bad
input (one line on stderr, exit 2 for usage/input, 1 for runtime failures,
nothing half-applied)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Any

import packets as P
import pytest
from conftest import NetPair, needs_root, sh

pytestmark = needs_root

BIN = os.path.join(os.path.dirname(sys.executable), "pyxdp-load")
HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLE = os.path.join(HERE, "..", "examples", "packets.bpf.o")


def run(*args: str, pin_dir: str | None = None, env: dict[str, str] | None = None,
        input: str | None = None, no_caps: bool = False) -> subprocess.CompletedProcess[str]:
    cmd = [BIN] + (["--pin-dir", pin_dir] if pin_dir else []) + list(args)
    if no_caps:  # root without capabilities (an empty bounding set empties root's set at exec)
        cmd = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", *cmd]
    e = dict(os.environ)
    e.pop("PYXDP_DEBUG", None)
    e.update(env or {})
    return subprocess.run(cmd, capture_output=True, text=True, env=e, input=input, timeout=60)


def ok(*args: str, **kw: Any) -> str:
    r = run(*args, **kw)
    assert r.returncode == 0, r.stderr
    return r.stdout


def fails(code: int, says: str, *args: str, **kw: Any) -> None:
    r = run(*args, **kw)
    assert r.returncode == code, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyxdp-load: error: "), r.stderr
    assert says in lines[0], lines[0]
    assert "Traceback" not in r.stderr


def while_sending(pair: NetPair, cmd: list[str], tries: int = 50) -> tuple[int, str, str]:
    """Run ``cmd`` while datagrams go a -> b, until it exits by itself."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(tries):
            sh("ip", "netns", "exec", pair.a, sys.executable, os.path.join(HERE, "netio.py"), "send",
               "10.77.0.2", "5000", "2")
            if proc.poll() is not None:
                break
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    return proc.returncode, out, err


def test_rules_lifecycle_without_interface(pin_dir: str) -> None:
    assert "1 entry, ttl 600s" in ok("deny", "from", "203.0.113.0/24", "--ttl", "600", pin_dir=pin_dir)
    ok("allow", "from", "203.0.113.7", pin_dir=pin_dir)
    ok("deny", "53/udp", pin_dir=pin_dir)
    ok("deny", "from", "2001:db8::/32", "198.51.100.0/24", pin_dir=pin_dir)
    assert os.stat(pin_dir).st_mode & 0o777 == 0o700
    rows = [json.loads(x) for x in ok("list", "--json", pin_dir=pin_dir).splitlines()]
    by = {r.get("prefix") or f"{r['port']}/{r['proto']}": r for r in rows}
    assert set(by) == {"203.0.113.0/24", "203.0.113.7/32", "198.51.100.0/24", "2001:db8::/32", "53/udp"}
    assert by["203.0.113.0/24"]["action"] == "deny" and 590 < by["203.0.113.0/24"]["expires_in"] <= 600
    assert by["203.0.113.7/32"] == {"action": "allow", "hits": 0, "prefix": "203.0.113.7/32", "expires_in": None}
    assert "hits 0" in ok("list", pin_dir=pin_dir)
    ok("delete", "deny", "from", "198.51.100.0/24", pin_dir=pin_dir)
    ok("delete", "53/udp", pin_dir=pin_dir)
    assert len(ok("list", "--json", pin_dir=pin_dir).splitlines()) == 3
    assert ok("policy", pin_dir=pin_dir).strip() == "pass"
    ok("policy", "drop", pin_dir=pin_dir)
    assert ok("policy", pin_dir=pin_dir).strip() == "drop"
    st = json.loads(ok("status", "--json", pin_dir=pin_dir))
    assert st["loaded"] and st["policy"] == "drop" and st["interfaces"] == []
    assert "removed 0 expired" in ok("sweep", pin_dir=pin_dir)


def test_file_and_stdin_all_or_nothing(pin_dir: str, tmp_path: Any) -> None:
    good = tmp_path / "good.txt"
    good.write_text("# bans\n10.0.0.0/8\n192.0.2.1\n\n2001:db8::/48\n")
    assert "3 entries" in ok("deny", "--file", str(good), pin_dir=pin_dir)
    bad = tmp_path / "bad.txt"
    bad.write_text("10.1.0.0/16\n10.2.0.0/16\n10.3.0.1/16\n")
    fails(2, "bad.txt line 3: 10.3.0.1/16 has host bits set", "deny", "--file", str(bad), pin_dir=pin_dir)
    assert len(ok("list", "--json", pin_dir=pin_dir).splitlines()) == 3  # nothing from bad.txt
    assert "2 entries" in ok("allow", "--file", "-", pin_dir=pin_dir, input="172.16.0.0/12\n172.16.5.0/24\n")
    fails(2, "stdin line 1", "deny", "--file", "-", pin_dir=pin_dir, input="nonsense\n")
    r = subprocess.run([BIN, "--pin-dir", pin_dir, "deny", "--file", "-"], input=b"\xff\xfe10.0.0.0/8\n",
                       capture_output=True, timeout=60)
    err = r.stderr.decode(errors="replace").strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and err[0].startswith("pyxdp-load: error: stdin")


def test_stats_and_replay(pin_dir: str, tmp_path: Any) -> None:
    from pyxdp.pcap import write_pcap

    ok("deny", "from", "192.0.2.0/24", pin_dir=pin_dir)
    ok("deny", "53/udp", pin_dir=pin_dir)
    cap = tmp_path / "cap.pcap"
    with open(cap, "wb") as fh:
        write_pcap(fh, [P.udp4("192.0.2.9", 80), P.udp4("10.0.0.1", 53), P.tcp4("10.0.0.1", 22),
                        P.eth(P.ETH_ARP, P.arp())])
    lines = [json.loads(x) for x in ok("replay", str(cap), "--json", pin_dir=pin_dir).splitlines()]
    assert [(x["verdict"], x["reason"]) for x in lines[:4]] == [
        ("drop", "src-deny"), ("drop", "port-deny"), ("pass", "policy"), ("pass", "arp")]
    assert lines[0]["src"] == "192.0.2.9" and lines[1]["dport"] == 53
    assert lines[4] == {"summary": True, "packets": 4, "pass": 2, "drop": 2}
    assert "4 packets: 2 pass, 2 drop" in ok("replay", str(cap), pin_dir=pin_dir)
    stats = json.loads(ok("stats", "--json", pin_dir=pin_dir))
    assert stats == {"stats": [], "lost_events": 0}  # replay leaves live counters alone
    assert "lost trace events: 0" in ok("stats", pin_dir=pin_dir)
    not_pcap = tmp_path / "x.pcap"
    not_pcap.write_bytes(b"hello world, not a capture")
    fails(2, "not a pcap file", "replay", str(not_pcap), pin_dir=pin_dir)
    fails(2, "cannot read", "replay", str(tmp_path / "missing.pcap"), pin_dir=pin_dir)


def test_attach_trace_stats_detach(pin_dir: str, netpair: NetPair) -> None:
    out = ok("attach", netpair.vb, "--netns", netpair.b, "--mode", "generic", pin_dir=pin_dir)
    assert "generic mode" in out
    st = json.loads(ok("status", "--json", pin_dir=pin_dir))
    [iface] = st["interfaces"]
    assert (iface["ifname"], iface["netns"], iface["mode"], iface["attached"]) == ("vb", netpair.b, "generic", True)
    assert iface["prog_id"] > 0 and iface["ifindex"] > 0
    ok("deny", "from", "10.77.0.1", pin_dir=pin_dir)
    code, out, err = while_sending(netpair, [BIN, "--pin-dir", pin_dir, "trace", "--json", "--count", "2"])
    assert code == 0, err
    events = [json.loads(x) for x in out.splitlines()]
    assert len(events) == 2
    for key in ("verdict", "reason", "src", "dst", "proto", "sport", "dport", "ifindex"):
        assert key in events[0]
    udp = [e for e in events if e["proto"] == "udp"]
    assert udp and udp[0]["verdict"] == "drop" and udp[0]["reason"] == "src-deny" and udp[0]["src"] == "10.77.0.1"
    stats = json.loads(ok("stats", "--json", pin_dir=pin_dir))
    assert any(s["reason"] == "src-deny" and s["packets"] >= 2 for s in stats["stats"])
    assert "detached from vb; no interface left, state removed" in ok("detach", netpair.vb, "--netns", netpair.b,
                                                                      pin_dir=pin_dir)
    assert not os.path.exists(pin_dir)


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


def test_generic_load_unload_of_the_seed_program(netpair: NetPair) -> None:
    out = ok("load", EXAMPLE, netpair.vb, "--netns", netpair.b)
    assert "loaded packets.bpf.o on vb" in out
    assert "prog/xdp" in sh("ip", "-n", netpair.b, "-d", "link", "show", "vb").stdout
    fails(1, "already", "load", EXAMPLE, netpair.vb, "--netns", netpair.b)
    ok("unload", netpair.vb, "--netns", netpair.b)
    assert "prog/xdp" not in sh("ip", "-n", netpair.b, "-d", "link", "show", "vb").stdout
    fails(2, "runs no XDP program", "unload", netpair.vb, "--netns", netpair.b)


def test_printk_streams_trace_pipe(netpair: NetPair) -> None:
    ok("load", EXAMPLE, netpair.vb, "--netns", netpair.b)
    try:
        code, out, err = while_sending(netpair, [BIN, "printk", "--count", "1"])
        assert code == 0 and "got a packet" in out, err
    finally:
        ok("unload", netpair.vb, "--netns", netpair.b)


# ---- bad input: one line, the right exit code, nothing left behind -------------


@pytest.mark.parametrize(
    "args, code, says",
    [
        (["deny", "from", "300.1.2.3"], 2, "bad address '300.1.2.3'"),
        (["deny", "from", "10.0.0.1/8"], 2, "host bits set"),
        (["deny", "70000/udp"], 2, "bad port '70000'"),
        (["deny", "22/sctp"], 2, "bad protocol 'sctp'"),
        (["deny", "from", "192.0.2.1", "--ttl", "soon"], 2, "bad ttl"),
        (["deny"], 2, "nothing to add"),
        (["deny", "--file", "/nonexistent/list.txt"], 2, "cannot read /nonexistent/list.txt"),
        (["policy", "maybe"], 2, "bad policy 'maybe'"),
        (["frobnicate"], 2, "invalid choice"),
        (["attach"], 2, "the following arguments are required: iface"),
        (["attach", "nosuchif0"], 2, "no interface 'nosuchif0'"),
        (["attach", "bad/name"], 2, "bad interface name"),
        (["attach", "lo", "--netns", "pxt-no-such-ns"], 2, "no network namespace 'pxt-no-such-ns'"),
        (["attach", "lo", "--mode", "turbo"], 2, "bad mode 'turbo'"),
        (["trace", "--count", "0"], 2, "--count must be 1 or more"),
    ],
)
def test_bad_input(pin_dir: str, args: list[str], code: int, says: str) -> None:
    fails(code, says, *args, pin_dir=pin_dir)
    assert not os.path.exists(pin_dir)  # nothing half-made


def test_commands_on_missing_state(pin_dir: str) -> None:
    for args in (["list"], ["stats"], ["detach", "lo"], ["delete", "from", "192.0.2.1"], ["replay", "/dev/null"]):
        fails(1, "no pyxdp filter state", *args, pin_dir=pin_dir)
    assert "not loaded" in ok("status", pin_dir=pin_dir)


def test_delete_of_missing_entry(pin_dir: str) -> None:
    ok("deny", "from", "192.0.2.0/24", pin_dir=pin_dir)
    fails(2, "no entry for 198.51.100.0/24", "delete", "from", "192.0.2.0/24", "198.51.100.0/24", pin_dir=pin_dir)
    fails(2, "is an deny entry, not allow".replace("an deny", "an deny"), "delete", "allow", "from", "192.0.2.0/24",
          pin_dir=pin_dir)
    assert len(ok("list", "--json", pin_dir=pin_dir).splitlines()) == 1


def test_missing_privilege(pin_dir: str) -> None:
    fails(1, "needs root", "deny", "from", "192.0.2.1", pin_dir=pin_dir, no_caps=True)
    fails(1, "needs root", "load", EXAMPLE, "lo", no_caps=True)
    fails(1, "needs root", "attach", "lo", pin_dir=pin_dir, no_caps=True)
    assert not os.path.exists(pin_dir)


def test_pin_dir_not_on_bpffs() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        fails(2, "is not on a bpffs", "deny", "from", "192.0.2.1", pin_dir=os.path.join(tmp, "state"))
        assert os.listdir(tmp) == []


def test_missing_libbpf(pin_dir: str) -> None:
    fails(1, "cannot load libbpf-none.so.9", "deny", "from", "192.0.2.1", pin_dir=pin_dir,
          env={"PYXDP_LIBBPF": "libbpf-none.so.9"})
    assert not os.path.exists(pin_dir)


def test_verifier_rejection_shows_the_verifier(netpair: NetPair) -> None:
    bad = os.path.join(HERE, "data", "reject.bpf.o")
    r = run("load", bad, netpair.vb, "--netns", netpair.b)
    assert r.returncode == 1
    [line] = r.stderr.strip().splitlines()
    assert "verifier rejected it: R1 offset is outside of the packet" in line
    path = line.rsplit("verifier log: ", 1)[1].rstrip(")")
    with open(path) as fh:
        assert "invalid access to packet" in fh.read()
    assert "prog/xdp" not in sh("ip", "-n", netpair.b, "-d", "link", "show", "vb").stdout


def test_not_an_object_file(tmp_path: Any) -> None:
    junk = tmp_path / "junk.bpf.o"
    junk.write_bytes(b"\x7fELF not really")
    fails(2, "not a loadable BPF object", "load", str(junk), "lo")
    fails(2, "no such object file", "load", str(tmp_path / "missing.o"), "lo")


def test_incompatible_pinned_map_is_explained(pin_dir: str) -> None:
    ok("deny", "from", "192.0.2.1", pin_dir=pin_dir)
    from pyxdp.bpf import Map
    os.unlink(os.path.join(pin_dir, "ports"))
    with Map.from_pin(os.path.join(pin_dir, "lens_count")) as m:
        m.pin(os.path.join(pin_dir, "ports"))  # an ARRAY of the wrong shape where "ports" belongs
    fails(1, "pinned map ports differs: value_size 8 (pinned) != 24 (wanted)", "attach", "lo", pin_dir=pin_dir)


def test_no_compiler_needed(pin_dir: str, tmp_path: Any) -> None:
    """The installed package runs with nothing but its venv on PATH."""
    env = {"PATH": os.path.dirname(sys.executable)}
    assert shutil.which("clang", path=env["PATH"]) is None and shutil.which("cc", path=env["PATH"]) is None
    ok("deny", "from", "192.0.2.0/24", pin_dir=pin_dir, env=env)
    from pyxdp.pcap import write_pcap
    cap = tmp_path / "c.pcap"
    with open(cap, "wb") as fh:
        write_pcap(fh, [P.udp4("192.0.2.1")])
    assert "1 packets: 0 pass, 1 drop" in ok("replay", str(cap), pin_dir=pin_dir, env=env)


def test_trace_stopped_by_sigterm_turns_tracing_off(pin_dir: str) -> None:
    import signal
    import time

    ok("deny", "from", "192.0.2.1", pin_dir=pin_dir)
    tr = subprocess.Popen([BIN, "--pin-dir", pin_dir, "trace", "--sample", "3"], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if json.loads(ok("status", "--json", pin_dir=pin_dir))["trace_every"] == 3:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("tracing never came on")
        tr.send_signal(signal.SIGTERM)
        assert tr.wait(timeout=10) == 128 + signal.SIGTERM
    finally:
        tr.kill()
    assert json.loads(ok("status", "--json", pin_dir=pin_dir))["trace_every"] == 0


def test_rules_sets_apply_and_save(pin_dir: str, tmp_path: Any) -> None:
    assert "rule 1: allow proto tcp from 192.168.0.0/16 to any port 22" in ok(
        "allow", "proto", "tcp", "from", "192.168.0.0/16", "to", "any", "port", "22", pin_dir=pin_dir)
    ok("deny", "proto", "tcp", "from", "any", "to", "any", "port", "22:23", pin_dir=pin_dir)
    assert "rule 1: deny proto icmp" in ok("insert", "1", "deny", "proto", "icmp", pin_dir=pin_dir)
    prefixes = tmp_path / "office.txt"
    prefixes.write_text("10.20.0.0/16\n2001:db8:20::/48\n")
    assert "2 new prefixes" in ok("set", "add", "office", "--file", str(prefixes), pin_dir=pin_dir)
    ok("allow", "from", "@office", "to", "any", "port", "443", pin_dir=pin_dir)
    ok("deny", "from", "198.51.100.0/24", pin_dir=pin_dir)  # still a simple entry
    listing = ok("list", pin_dir=pin_dir)
    assert "deny  from 198.51.100.0/24" in listing
    assert "    4  allow from @office to any port 443" in listing
    assert "@office" in ok("set", "list", pin_dir=pin_dir) and "10.20.0.0/16" in ok("set", "list", "office",
                                                                                   pin_dir=pin_dir)
    saved = ok("save", pin_dir=pin_dir)
    assert saved.count('    "') == 6  # four rules, two prefixes
    fails(2, "set @office is used by a rule", "set", "destroy", "office", pin_dir=pin_dir)
    ok("delete", "1", pin_dir=pin_dir)
    ok("delete", "allow", "from", "@office", "to", "any", "port", "443", pin_dir=pin_dir)
    assert len(ok("list", "--json", pin_dir=pin_dir).splitlines()) == 3  # one entry, two rules

    # apply the saved file back: identity; then a bad file changes nothing and names its line
    f = tmp_path / "rules.toml"
    f.write_text(saved)
    assert "applied 4 rules, 1 set, policy pass" in ok("apply", str(f), pin_dir=pin_dir)
    assert ok("save", pin_dir=pin_dir) == saved
    bad = tmp_path / "bad.toml"
    bad.write_text(saved.replace("port 443", "port 4430000"))
    fails(2, "bad.toml line 8: bad port '4430000'", "apply", str(bad), pin_dir=pin_dir)
    bad.write_text(saved.replace('"10.20.0.0/16"', '"10.20.0.0/8"'))
    fails(2, "bad.toml line 13: set office: 10.20.0.0/8 has host bits set", "apply", str(bad), pin_dir=pin_dir)
    assert ok("save", pin_dir=pin_dir) == saved
    ok("save", str(tmp_path / "again.toml"), pin_dir=pin_dir)
    assert (tmp_path / "again.toml").read_text() == saved
    # IPv6 hosts written with digits and colons only stay entries; 'from any' alone is a rule
    assert "1 entry, ttl 60s" in ok("deny", "from", "2001::1", "--ttl", "60", pin_dir=pin_dir)
    assert "rule 5: deny" in ok("deny", "from", "any", pin_dir=pin_dir)


@pytest.mark.parametrize(
    "args,says",
    [
        (["allow", "proto", "gre"], "bad protocol 'gre'"),
        (["deny", "from", "@office"], "no set @office"),
        (["deny", "proto", "icmp", "--ttl", "10"], "--ttl and --file are for simple entries"),
        (["insert", "3", "deny", "proto", "icmp"], "insert 3: positions are 1 to 1"),
        (["delete", "7"], "no rule number 7"),
        (["delete", "deny", "proto", "udp"], "no such rule: deny proto udp"),
        (["set", "add", "bad name"], "bad set name"),
        (["set", "remove", "nosuch", "10.0.0.0/8"], "no set @nosuch"),
        (["set", "frobnicate", "x"], "bad set operation 'frobnicate'"),
        (["apply", "/nonexistent.toml"], "cannot read /nonexistent.toml"),
    ],
)
def test_bad_rule_input(pin_dir: str, args: list[str], says: str) -> None:
    ok("deny", "from", "192.0.2.1", pin_dir=pin_dir)  # the state exists
    fails(2, says, *args, pin_dir=pin_dir)
    assert len(ok("list", "--json", pin_dir=pin_dir).splitlines()) == 1
