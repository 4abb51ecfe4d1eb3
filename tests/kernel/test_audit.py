"""The audit trail: every change is a record on the 'pyxdp.audit' logger
(what, old -> new, who); the command line sends the records to syslog and to
--log-file (without root: tests/unit/test_audit.py, the library configures
no logging and a record is one clean line)."""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from helpers.cli import fails, ok
from helpers.env import SUDO_VARS, needs_root

LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} pyxdp-load\[(\d+)\]: (.*) \| (.*) pin_dir=(\S+)$")


def _comm(pid: int) -> str:
    with open(f"/proc/{pid}/comm") as fh:
        return fh.read().strip()


def _lines(path: str) -> list[tuple[str, str, str]]:
    """(what, who, pin_dir) of each line of an audit log file."""
    out = []
    with open(path) as fh:
        for line in fh.read().splitlines():
            m = LINE.match(line)
            assert m, line
            out.append((m.group(2), m.group(3), m.group(4)))
    return out


@needs_root
def test_cli_changes_go_to_the_log_file_with_who_made_them(pin_dir: str, tmp_path: Any) -> None:
    log = str(tmp_path / "audit.log")
    rules = tmp_path / "fw.toml"
    rules.write_text('policy = "drop"\nrules = ["deny from @banned", "allow 22/tcp"]\n\n[sets]\n'
                     'banned = ["203.0.113.7 ttl 600"]\noffice = ["192.0.2.0/24"]\n')
    calls = [
        ["--create", "ban", "192.0.2.7", "198.51.100.0/24", "--ttl", "60"],
        ["policy", "drop"],
        ["allow", "22/tcp"],
        ["insert", "1", "deny", "from", "192.0.2.9"],
        ["delete", "2"],
        ["set", "add", "office", "192.0.2.0/24", "2001:db8::/32"],
        ["set", "remove", "office", "2001:db8::/32"],
        ["set", "flush", "office"],
        ["set", "destroy", "office"],
        ["unban", "192.0.2.7", "192.0.2.99"],
        ["apply", str(rules)],
        ["list"], ["status"], ["save"], ["set", "list"], ["policy"],  # readers: no record
    ]
    for args in calls:
        ok("--log-file", log, *args, pin_dir=pin_dir)
    got = _lines(log)
    whats = [w for w, _who, _pin in got]
    assert whats == [
        "state created (1048576 set elements per family, 1024 rules)",
        "ban @banned: 192.0.2.7/32 198.51.100.0/24 ttl 60s (2 new, 0 refreshed); rule 1 added: deny from @banned",
        "policy pass -> drop",
        "rule 2 added: allow proto tcp to any port 22 (rules 1 -> 2)",
        "rule 1 added: deny from 192.0.2.9/32 (rules 2 -> 3)",
        "rules deleted: 2 'deny from @banned' (rules 3 -> 2)",
        "set @office made: add 192.0.2.0/24 2001:db8::/32 permanent (2 new, 0 refreshed)",
        "set @office: remove 2001:db8::/32 (1 removed)",
        "set @office flushed: 1 -> 0 elements",
        "set @office destroyed",
        "unban @banned: 192.0.2.7/32 192.0.2.99/32 (1 removed, 1 not banned)",
        "applied: policy drop -> drop, rules 2 -> 2, sets 1 -> 2, elements 1 -> 2",
    ], whats
    who = f"uid=0 ppid={os.getpid()} comm={_comm(os.getpid())}"
    for _what, by, pin in got:
        assert pin == pin_dir
        assert by == who or (by.startswith("uid=0 loginuid=") and by.endswith(f" ppid={os.getpid()} "
                                                                              f"comm={_comm(os.getpid())}")), by
    # a refused change and a bad command write nothing
    fails(2, "Could not delete non-existent rule", "--log-file", log, "delete", "allow", "99/tcp", pin_dir=pin_dir)
    assert len(_lines(log)) == len(got)


@needs_root
def test_a_log_file_that_cannot_be_used_refuses_the_change(pin_dir: str, tmp_path: Any) -> None:
    ok("--create", "policy", "pass", pin_dir=pin_dir)
    target = tmp_path / "target"
    target.write_text("")
    os.symlink(target, tmp_path / "link.log")
    fails(2, f"--log-file {tmp_path}/link.log: a symlink (refused)", "--log-file", str(tmp_path / "link.log"),
          "policy", "drop", pin_dir=pin_dir)
    fails(2, f"--log-file {tmp_path}/no/such/dir.log: No such file or directory",
          "--log-file", str(tmp_path / "no" / "such" / "dir.log"), "policy", "drop", pin_dir=pin_dir)
    assert ok("policy", pin_dir=pin_dir) == "pass\n"  # nothing changed
    assert target.read_text() == ""
    # a reader never opens it
    assert ok("--log-file", str(tmp_path / "no" / "such" / "dir.log"), "list", pin_dir=pin_dir)
    ok("--log-file", str(tmp_path / "new.log"), "policy", "drop", pin_dir=pin_dir)
    assert (tmp_path / "new.log").stat().st_mode & 0o777 == 0o640
    # issue 19: a FIFO would hold every change until something reads it: refused at once, read or not
    fifo = tmp_path / "fifo.log"
    os.mkfifo(fifo)
    fails(2, f"--log-file {fifo}: not a regular file (a FIFO)", "--log-file", str(fifo), "policy", "pass",
          pin_dir=pin_dir)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        fails(2, f"--log-file {fifo}: not a regular file (a FIFO)", "--log-file", str(fifo), "policy", "pass",
              pin_dir=pin_dir)
        try:
            got = os.read(reader, 4096)
        except BlockingIOError:
            got = b""
        assert got == b""  # nothing written
    finally:
        os.close(reader)
    assert ok("policy", pin_dir=pin_dir) == "drop\n"


@pytest.fixture
def syslog(tmp_path: Any) -> Iterator[tuple[socket.socket, str]]:
    """A syslog socket of our own: a unix datagram socket bound in a temp dir."""
    path = str(tmp_path / "log")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(5)
    try:
        yield s, path
    finally:
        s.close()


def _pending(s: socket.socket) -> list[bytes]:
    out = []
    s.setblocking(False)
    try:
        while True:
            out.append(s.recv(65536))
    except BlockingIOError:
        pass
    finally:
        s.settimeout(5)
    return out


@needs_root
def test_cli_changes_go_to_syslog_as_auth(pin_dir: str, syslog: tuple[socket.socket, str]) -> None:
    s, path = syslog
    env = {"PYXDP_SYSLOG": path}
    own = {"env": env, "drop_env": SUDO_VARS}  # root's own environment (conftest.SUDO_VARS)
    ok("--create", "ban", "192.0.2.7", pin_dir=pin_dir, **own)
    ok("policy", "drop", pin_dir=pin_dir, **own)
    got = [m.decode() for m in _pending(s)]
    assert len(got) == 3, got  # state created, ban, policy
    pri = 4 * 8 + 6  # facility auth, severity info
    for m in got:
        assert re.match(rf"^<{pri}>pyxdp-load\[\d+\]: .* \| uid=0 .*ppid={os.getpid()} comm=\S+ "
                        rf"pin_dir={re.escape(pin_dir)}\x00$", m), m
    assert "]: ban @banned: 192.0.2.7/32 permanent (1 new, 0 refreshed); rule 1 added: deny from @banned |" in got[1]
    assert "]: policy pass -> drop |" in got[2]
    ok("list", pin_dir=pin_dir, **own)  # a reader sends nothing
    ok("--log-file", os.devnull, "policy", "pass", pin_dir=pin_dir, **own)  # --log-file as well as syslog
    assert [m.decode().split(": ", 1)[1].split(" |")[0] for m in _pending(s)] == ["policy drop -> pass"]
    # under sudo the caller's environment does not choose the socket (and /dev/log is not there, or is not ours)
    ok("policy", "drop", pin_dir=pin_dir, env={**env, "SUDO_UID": "1000"}, drop_env=SUDO_VARS)
    assert _pending(s) == []
    ok("policy", "pass", pin_dir=pin_dir, env={"PYXDP_SYSLOG": "off"})
    assert _pending(s) == []


@needs_root
def test_a_syslog_that_refuses_is_a_warning_not_a_failure(pin_dir: str, tmp_path: Any) -> None:
    path = str(tmp_path / "dead")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.close()  # the socket file stays, nobody reads it
    own = {k: v for k, v in os.environ.items() if k not in SUDO_VARS}  # root's own environment (conftest.SUDO_VARS)
    r = subprocess.run([sys.executable, "-m", "pyxdp.cli", "--pin-dir", pin_dir, "--create", "policy", "drop"],
                       capture_output=True, text=True, env={**own, "PYXDP_SYSLOG": path}, timeout=60)
    assert r.returncode == 0 and r.stdout == "policy: drop\n", r
    assert r.stderr.startswith(f"pyxdp-load: warning: audit records not written to syslog ({path}): "), r.stderr
    assert len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr


@needs_root
def test_api_changes_are_records_on_the_pyxdp_audit_logger(pin_dir: str, records: list[logging.LogRecord]) -> None:
    import pyxdp
    from pyxdp.model.rulefile import Element

    with pyxdp.Filter.open(pin_dir, create=True) as flt:
        flt.add_rule("allow 80/tcp")
        flt.deny("from 192.0.2.0/24", position=1)
        flt.set_policy(pyxdp.Verdict.DROP)
        flt.set_trace(10)
        flt.set_trace(0)
        flt.replace_rules(["deny 23/tcp"])
        flt.ban([f"203.0.113.{i}" for i in range(1, 11)], ttl=30)
        flt.unban(["203.0.113.1"])
        flt.unban(["198.51.100.1"])  # not banned: nothing changed, no record
        flt.set_add("x", ["10.0.0.0/8"])
        flt.set_remove("x", ["10.0.0.0/8"])
        flt.set_flush("x")
        flt.set_destroy("x")
        flt.delete_rules([1])
        flt.apply(pyxdp.RuleSetSpec((pyxdp.parse_rule("deny from @y"),), {"y": [Element(pyxdp.parse_prefix("::1"),
                                                                                           None)]}, None))
        flt.remove_state()
    texts = [r.getMessage().split(" | ")[0] for r in records]
    assert texts == [
        "state created (1048576 set elements per family, 1024 rules)",
        "rule 1 added: allow proto tcp to any port 80 (rules 0 -> 1)",
        "rule 1 added: deny from 192.0.2.0/24 (rules 1 -> 2)",
        "policy pass -> drop",
        "tracing off -> 1 in 10",
        "tracing 1 in 10 -> off",
        "rules replaced: 2 -> 1 rules",
        "ban @banned: 10 prefixes ttl 30s (10 new, 0 refreshed); rule 1 added: deny from @banned",
        "unban @banned: 203.0.113.1/32 (1 removed, 0 not banned)",
        "set @x made: add 10.0.0.0/8 permanent (1 new, 0 refreshed)",
        "set @x: remove 10.0.0.0/8 (1 removed)",
        "set @x flushed: 0 -> 0 elements",
        "set @x destroyed",
        "rules deleted: 1 'deny from @banned' (rules 2 -> 1)",
        "applied: policy drop -> drop, rules 1 -> 1, sets 1 -> 1, elements 9 -> 1",
        "state removed",
    ], texts
    for r in records:
        assert r.levelno == logging.INFO and r.name == "pyxdp.audit"
        assert r.pyxdp_pin_dir == pin_dir  # type: ignore[attr-defined]
        assert r.pyxdp_who["uid"] == 0 and r.pyxdp_who["ppid"] == os.getppid()  # type: ignore[attr-defined]


