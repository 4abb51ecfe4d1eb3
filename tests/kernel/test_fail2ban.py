"""The fail2ban action (contrib/fail2ban/action.d/pyxdp.conf) driven by the real
fail2ban (Debian's package): a server instance of the test's own (config dir,
socket, pid file, database and log under a temp dir; never the host's service
or /etc/fail2ban), a jail whose filter matches a line the test writes, and the
real pyxdp-load on a veth between two namespaces. A failure line for 10.77.0.1
bans it: its UDP and ICMP stop reaching 10.77.0.2; unbanip lets them through;
bans survive a fail2ban restart (restored from its database) with the time
left, and permanent bans (bantime = -1) carry no timeout."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

import pytest
from helpers.env import NetPair, needs_root, sh

pytestmark = needs_root

HERE = os.path.dirname(os.path.abspath(__file__))
NETIO = os.path.join(HERE, "..", "helpers", "netio.py")
CONTRIB = os.path.join(HERE, "..", "..", "contrib", "fail2ban")
ACTION = os.path.join(CONTRIB, "action.d", "pyxdp.conf")
PY_ACTION = os.path.join(CONTRIB, "action.d", "pyxdp-direct.py")
PYXDP = os.path.join(os.path.dirname(sys.executable), "pyxdp-load")
JAIL = "pxt"
SET = f"f2b-{JAIL}"
BANNED = "10.77.0.1"  # ns a's address: the sender
DST = "10.77.0.2"  # ns b's address, where pyxdp is attached (vb)

# Sends ICMP echo requests (raw socket) and prints how many were answered.
PING = r"""
import os, select, socket, struct, sys, time
dst, n = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
ident, got = os.getpid() & 0xFFFF, set()
def csum(b):
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    t = (t >> 16) + (t & 0xFFFF)
    return ~(t + (t >> 16)) & 0xFFFF
for seq in range(n):
    body = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + b"pyxdp-f2b"
    pkt = body[:2] + struct.pack("!H", csum(body + b"\0")) + body[4:]
    s.sendto(pkt, (dst, 0))
    end = time.monotonic() + 0.3
    while (left := end - time.monotonic()) > 0 and select.select([s], [], [], left)[0]:
        data, (src, _) = s.recvfrom(2048)
        icmp = data[(data[0] & 15) * 4:]
        typ, _, _, rid, rseq = struct.unpack("!BBHHH", icmp[:8])
        if src == dst and typ == 0 and rid == ident:
            got.add(rseq)
print(len(got))
"""


def udp_through(pair: NetPair, n: int = 10, port: int = 5000) -> int:
    """Send ``n`` UDP datagrams a -> b; how many b received."""
    sh("ip", "-n", pair.a, "neigh", "flush", "all", check=False)
    rx = subprocess.Popen(["ip", "netns", "exec", pair.b, sys.executable, NETIO, "recv", str(port), "--family", "4",
                           "--seconds", "1.2"], stdout=subprocess.PIPE, text=True)
    try:
        assert rx.stdout is not None and rx.stdout.readline().strip() == "ready"
        sh("ip", "netns", "exec", pair.a, sys.executable, NETIO, "send", DST, str(port), str(n))
        out, _ = rx.communicate(timeout=10)
    finally:
        rx.kill()
        rx.wait()
    return int(out.split()[1])


def icmp_through(pair: NetPair, n: int = 3) -> int:
    """Send ``n`` echo requests a -> b; how many were answered."""
    return int(sh("ip", "netns", "exec", pair.a, sys.executable, "-c", PING, DST, str(n)).stdout)


def reaches(pair: NetPair) -> tuple[int, int]:
    return udp_through(pair), icmp_through(pair)


class Fail2ban:
    """One fail2ban server of the test's own, under a temp dir; the jail ``pxt``
    watches ``self.log`` and bans with the pyxdp action into ``pin_dir``. The
    action calls pyxdp-load through a wrapper that records each finished call."""

    def __init__(self, pin_dir: str, bantime: int, failregex: str = r"^pxtest-auth failure from <HOST>$",
                 usedns: str = "warn", python: bool = False, action_line: str | None = None) -> None:
        """``python``: the jail bans with the Python action (pyxdp-direct.py) as the
        README's example config sets it up (Debian's jail.conf, its
        ``[DEFAULT]`` block as written), found through PATH (this venv's
        pyxdp-load first) with the pin directory from $PYXDP_PIN_DIR.
        ``action_line``: the jail's ``action =`` instead (the shell action's)."""
        self.pin_dir = pin_dir
        self.dir = tempfile.mkdtemp(prefix="pxt-f2b-")
        self.conf = os.path.join(self.dir, "conf")
        self.sock = os.path.join(self.dir, "f2b.sock")
        self.pidfile = os.path.join(self.dir, "f2b.pid")
        self.log = os.path.join(self.dir, "auth.log")
        self.server_log = os.path.join(self.dir, "fail2ban.log")
        self.calls = os.path.join(self.dir, "calls")
        self.argv = os.path.join(self.dir, "argv")
        self.proc: subprocess.Popen[bytes] | None = None
        self.err: IO[bytes] | None = None
        for sub in ("action.d", "filter.d"):
            os.makedirs(os.path.join(self.conf, sub))
        shutil.copy(ACTION, os.path.join(self.conf, "action.d", "pyxdp.conf"))
        shutil.copy(PY_ACTION, os.path.join(self.conf, "action.d", "pyxdp-direct.py"))
        self.env = dict(os.environ, PYXDP_PIN_DIR=pin_dir,
                        PATH=os.path.dirname(sys.executable) + ":" + os.environ.get("PATH", "/usr/bin:/bin"))
        wrapper = os.path.join(self.dir, "pyxdp-load")
        # each call's exit status and words, written when it has finished (calls); its
        # arguments one by one, each ended by \x1f, a line per call (argv)
        self._write(wrapper, f'#!/bin/sh\nprintf "%s\\037" "$@" >>{self.argv}\necho >>{self.argv}\n'
                             f'{PYXDP} "$@"\nrc=$?\necho "$rc $*" >>{self.calls}\nexit $rc\n')
        os.chmod(wrapper, 0o755)
        self._write(os.path.join(self.conf, "fail2ban.local"), f"""\
[Definition]
loglevel = INFO
logtarget = {self.server_log}
syslogsocket = auto
socket = {self.sock}
pidfile = {self.pidfile}
dbfile = {os.path.join(self.dir, "fail2ban.sqlite3")}
dbpurgeage = 1d
allowipv6 = auto
""")
        self._write(os.path.join(self.conf, "filter.d", "pxtest.conf"), f"""\
[Definition]
failregex = {failregex}
datepattern = {{NONE}}
""")
        head = ""
        if python:  # Debian's jail.conf (its action_ = %(banaction)s[...]) and the README's [DEFAULT] as written
            for name in ("jail.conf", "paths-common.conf", "paths-debian.conf"):
                shutil.copy(os.path.join("/etc/fail2ban", name), os.path.join(self.conf, name))
            head = readme_example() + "\n"
            action_line = ""
        elif action_line is None:
            action_line = f"action = pyxdp[pyxdp={wrapper}, pin_dir={pin_dir}]"
        self._write(os.path.join(self.conf, "jail.local"), f"""\
{head}[{JAIL}]
enabled = true
filter = pxtest
logpath = {self.log}
backend = polling
maxretry = 1
findtime = 600
bantime = {bantime}
ignoreself = false
usedns = {usedns}
{action_line}
""")
        self._write(self.log, "")

    @staticmethod
    def _write(path: str, text: str) -> None:
        with open(path, "w") as f:
            f.write(text)

    def client(self, *words: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("fail2ban-client", "-c", self.conf, "-s", self.sock, *words, check=check)

    def start(self) -> None:
        assert self.proc is None
        self.err = open(os.path.join(self.dir, "server.err"), "ab")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            ["fail2ban-server", "-f", "-x", "-c", self.conf, "-s", self.sock, "-p", self.pidfile],
            stdout=subprocess.DEVNULL, stderr=self.err, env=self.env)
        self.wait(lambda: self.client("status", JAIL, check=False).returncode == 0, "the jail to start", 15)

    def stop(self) -> None:
        """A clean stop (fail2ban-client stop): the jail flushes its bans."""
        if self.proc is None:
            return
        self.client("stop", check=False)
        try:
            self.proc.wait(timeout=20)
        finally:
            if self.proc.poll() is None:  # did not stop: end the server this test started
                self.proc.kill()
                self.proc.wait()
            self.proc = None
            if self.err is not None:
                self.err.close()

    def fail(self, addr: str) -> None:
        self.log_line(f"pxtest-auth failure from {addr}")

    def log_line(self, line: str) -> None:
        with open(self.log, "a") as f:
            f.write(line + "\n")

    def argvs(self) -> list[list[str]]:
        """The arguments of each pyxdp-load call (started ones too)."""
        if not os.path.exists(self.argv):
            return []
        with open(self.argv) as f:
            return [line.split("\x1f")[:-1] for line in f.read().splitlines()]

    def server_text(self) -> str:
        """Everything the server wrote (its log and stderr)."""
        text = ""
        for path in (self.server_log, os.path.join(self.dir, "server.err")):
            if os.path.exists(path):
                with open(path, errors="replace") as f:
                    text += f.read()
        return text

    def banned_in_f2b(self) -> list[str]:
        out = self.client("status", JAIL).stdout
        m = re.search(r"Banned IP list:\s*(.*)", out)
        return m.group(1).split() if m else []

    def calls_made(self) -> list[str]:
        if not os.path.exists(self.calls):
            return []
        with open(self.calls) as f:
            return f.read().splitlines()

    def wait(self, cond: Callable[[], bool], what: str, seconds: float = 20) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if cond():
                return
            time.sleep(0.2)
        raise AssertionError(f"timed out after {seconds} s waiting for {what}\n{self.diagnostics()}")

    def diagnostics(self) -> str:
        text = []
        for path in (self.server_log, os.path.join(self.dir, "server.err")):
            if os.path.exists(path):
                with open(path) as f:
                    text.append(f"--- {os.path.basename(path)} (tail)\n" + "".join(f.readlines()[-40:]))
        text.append("--- pyxdp-load calls\n" + "\n".join(self.calls_made()))
        return "\n".join(text)

    def assert_no_errors(self) -> None:
        """Every action command exited 0 (fail2ban logs any other exit as an ERROR)."""
        with open(self.server_log) as f:
            # the test's own 'status JAIL' polls while the server is still starting the jail are not the action's
            errors = [ln for ln in f if " ERROR " in ln and "UnknownJailException" not in ln]
        assert not errors, self.diagnostics()

    def close(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def readme_example() -> str:
    """The Python action's example config in contrib/fail2ban/README.md, as written there."""
    with open(os.path.join(CONTRIB, "README.md")) as f:
        blocks = re.findall(r"```ini\n(.*?)```", f.read(), re.S)
    (block,) = [b for b in blocks if "pyxdp-direct.py" in b]
    return block


def set_members(pin_dir: str) -> list[str] | None:
    """The addresses in the jail's pyxdp set (``/32`` dropped), None when the
    set cannot be listed (e.g. before the first ban created it)."""
    r = sh(PYXDP, "--pin-dir", pin_dir, "set", "list", SET, check=False)
    if r.returncode != 0:
        return None
    return [line.split()[0].removesuffix("/32") for line in r.stdout.splitlines() if line.strip()]


Maker = Callable[..., Fail2ban]


@pytest.fixture
def f2b(pin_dir: str, netpair: NetPair) -> Iterator[Maker]:
    """pyxdp attached on ``vb`` in ns b; yields a maker of fail2ban instances
    (bantime per test). Teardown stops them and detaches, even on failure."""
    if shutil.which("fail2ban-server") is None or shutil.which("fail2ban-client") is None:
        pytest.fail("fail2ban is not installed: run scripts/setup.sh --test")
    made: list[Fail2ban] = []

    def make(bantime: int, **kw: Any) -> Fail2ban:
        made.append(Fail2ban(pin_dir, bantime, **kw))
        return made[-1]

    try:
        r = sh(PYXDP, "--pin-dir", pin_dir, "attach", netpair.vb, "--netns", netpair.b, check=False)
        assert r.returncode == 0, f"pyxdp-load attach failed: {r.stderr}"
        yield make
    finally:
        for f in made:
            f.close()
        sh(PYXDP, "--pin-dir", pin_dir, "detach", netpair.vb, "--netns", netpair.b, check=False)


def banned(f: Fail2ban, pin_dir: str, calls: int) -> Callable[[], bool]:
    """``calls`` ban commands for BANNED have finished and it is in the set."""
    return lambda: len(_bans(f)) >= calls and BANNED in (set_members(pin_dir) or [])


def unbanned(f: Fail2ban, pin_dir: str) -> Callable[[], bool]:
    """An unban command for BANNED has finished and it is not in the set."""
    return lambda: (any(re.search(rf" unban (.* )?{re.escape(BANNED)}( |$)", c) for c in f.calls_made())
                    and BANNED not in (set_members(pin_dir) or []))


def _ttl_of(call: str) -> int | None:
    m = re.search(r"--ttl (\d+)", call)
    return int(m.group(1)) if m else None


def _bans(f: Fail2ban) -> list[str]:
    """The finished ban commands for BANNED, exit status first."""
    return [c for c in f.calls_made() if re.search(rf" ban (.* )?{re.escape(BANNED)}( |$)", c)]


def test_log_line_bans_packets_stop_unbanip_lets_them_through(f2b: Maker, pin_dir: str, netpair: NetPair) -> None:
    f = f2b(600)
    f.start()
    assert reaches(netpair) == (10, 3)  # nothing banned yet

    f.fail(BANNED)
    f.wait(banned(f, pin_dir, 1), f"{BANNED} in pyxdp set {SET}")
    assert f.banned_in_f2b() == [BANNED]
    assert reaches(netpair) == (0, 0)
    (ban,) = _bans(f)
    assert ban.startswith(f"0 --pin-dir {pin_dir} ban --set {SET} --ttl ") and ban.endswith(f" -- {BANNED}"), ban
    ttl = _ttl_of(ban)
    assert ttl is not None and 595 <= ttl <= 602, ban  # fail2ban's end of ban, not permanent

    f.client("set", JAIL, "unbanip", BANNED)
    f.wait(unbanned(f, pin_dir), f"{BANNED} to leave {SET}")
    assert f.banned_in_f2b() == []
    assert reaches(netpair) == (10, 3)
    f.stop()
    f.assert_no_errors()


def test_restart_restores_a_timed_ban_with_the_time_left(f2b: Maker, pin_dir: str, netpair: NetPair) -> None:
    f = f2b(600)
    f.start()
    f.fail(BANNED)
    f.wait(banned(f, pin_dir, 1), f"{BANNED} in pyxdp set {SET}")
    banned_at = time.monotonic()
    assert reaches(netpair) == (0, 0)
    first = _ttl_of(_bans(f)[0])
    assert first is not None

    time.sleep(max(0.0, 4.0 - (time.monotonic() - banned_at)))
    f.stop()  # a clean stop flushes the jail: the set is emptied, packets pass
    assert set_members(pin_dir) in ([], None)
    assert udp_through(netpair) == 10

    f.start()  # the ban comes back from fail2ban's database
    f.wait(banned(f, pin_dir, 2), f"{BANNED} restored into {SET}")
    elapsed = time.monotonic() - banned_at
    assert f.banned_in_f2b() == [BANNED]
    assert reaches(netpair) == (0, 0)
    bans = _bans(f)
    assert len(bans) == 2, bans
    again = _ttl_of(bans[1])
    # the time left until fail2ban's end of the ban, not a fresh whole bantime
    assert again is not None and first - int(elapsed) - 3 <= again <= first - 3, (bans, elapsed)
    with open(f.server_log) as log:
        assert f"Restore Ban {BANNED}" in log.read()
    f.stop()
    f.assert_no_errors()


def test_permanent_ban_has_no_timeout_and_survives_restart(f2b: Maker, pin_dir: str, netpair: NetPair) -> None:
    f = f2b(-1)
    f.start()
    assert reaches(netpair) == (10, 3)
    f.fail(BANNED)
    f.wait(banned(f, pin_dir, 1), f"{BANNED} in pyxdp set {SET}")
    assert reaches(netpair) == (0, 0)
    assert _ttl_of(_bans(f)[0]) is None  # no --ttl: permanent

    f.stop()
    f.start()
    f.wait(banned(f, pin_dir, 2), f"{BANNED} restored into {SET}")
    bans = _bans(f)
    assert len(bans) == 2 and _ttl_of(bans[1]) is None, bans
    assert reaches(netpair) == (0, 0)

    f.client("set", JAIL, "unbanip", BANNED)
    f.wait(unbanned(f, pin_dir), f"{BANNED} to leave {SET}")
    assert reaches(netpair) == (10, 3)
    f.stop()
    f.assert_no_errors()


def test_captured_text_never_becomes_an_option(f2b: Maker, pin_dir: str, netpair: NetPair) -> None:
    """A jail whose filter captures text, not only addresses (<F-ID>, usedns =
    raw): what the log line says reaches pyxdp-load as one address word after
    '--', which it refuses. '--file SECRET' never reads the file, '--all' never
    empties the set, '198.51.100.9 --all' stays one word, also when fail2ban
    passes it through a shell variable (a value with a shell character)."""
    f = f2b(600, failregex=r"^pxtest-auth bad user <F-ID>.+</F-ID>$", usedns="raw")
    secret_text = f"pxt-secret-{os.getpid()}-{time.monotonic_ns()}"
    secret = os.path.join(f.dir, "root-only")
    with open(os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as fh:
        fh.write(secret_text + "\n")
    f.start()
    f.log_line(f"pxtest-auth bad user {BANNED}")  # an address: banned as usual
    f.wait(banned(f, pin_dir, 1), f"{BANNED} in pyxdp set {SET}")
    assert reaches(netpair) == (0, 0)

    words = [f"--file {secret}", "--all", "198.51.100.9 --all", "203.0.113.9 --all (x)"]
    for w in words:
        f.log_line(f"pxtest-auth bad user {w}")

    def tried(cmd: str) -> Callable[[], bool]:  # a finished 'cmd' call for each word
        return lambda: all(any(f" {cmd} " in c and w in c for c in f.calls_made()) for w in words)

    f.wait(tried("ban"), "a ban command for each captured text")
    for w in words:  # fail2ban takes them as banned (its filter matched); the unban tries them too
        f.client("set", JAIL, "unbanip", w, check=False)
    f.wait(tried("unban"), "an unban command for each captured text")

    assert secret_text not in f.server_text(), f.diagnostics()  # the file was never read
    assert set_members(pin_dir) == [BANNED], f.diagnostics()  # '--all' emptied nothing
    assert reaches(netpair) == (0, 0)
    calls = [a[a.index("ban" if "ban" in a else "unban"):] for a in f.argvs()]
    for w in words:
        for cmd in ("ban", "unban"):
            # one word after '--', whatever it holds
            assert any(c[0] == cmd and c[-2:] == ["--", w] for c in calls), (cmd, w, f.argvs())
    for c in f.calls_made():
        if "--all" in c or secret in c:
            assert not c.startswith("0 "), f.calls_made()  # refused: pyxdp-load exits 2
    f.stop()


class Stream:
    """UDP datagrams a -> b every 10 ms (a thread) until :meth:`close`,
    which returns (sent, received)."""

    def __init__(self, pair: NetPair, port: int = 5001) -> None:
        import socket
        import threading

        from helpers.netio import netns

        with netns(pair.b):
            self.rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rx.bind((DST, port))
        self.rx.settimeout(0.05)
        with netns(pair.a):
            self.tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.port, self.sent, self.received, self.done = port, 0, 0, threading.Event()
        self.threads = [threading.Thread(target=self._send), threading.Thread(target=self._recv)]
        for t in self.threads:
            t.start()

    def _send(self) -> None:
        while not self.done.is_set():
            self.tx.sendto(b"pyxdp-f2b-restart", (DST, self.port))
            self.sent += 1
            time.sleep(0.01)

    def _recv(self) -> None:
        while not self.done.is_set():
            try:
                self.rx.recv(64)
                self.received += 1
            except TimeoutError:
                pass

    def close(self) -> tuple[int, int]:
        time.sleep(0.3)  # the last datagrams' way
        self.done.set()
        for t in self.threads:
            t.join()
        self.tx.close()
        self.rx.close()
        return self.sent, self.received


def _ttl_left(pin_dir: str, addr: str) -> float | None:
    """The seconds left of ``addr``'s element in the jail's set (None: permanent or not there)."""
    import json

    r = sh(PYXDP, "--pin-dir", pin_dir, "set", "list", SET, "--json", check=False)
    for line in r.stdout.splitlines() if r.returncode == 0 else []:
        e = json.loads(line)
        if e["prefix"].removesuffix("/32") == addr:
            return None if e["expires_in"] is None else float(e["expires_in"])
    return None


def test_python_action_as_the_readme_configures_it_and_a_restart_never_lets_banned_traffic_in(
        f2b: Maker, pin_dir: str, netpair: NetPair) -> None:
    """The Python action (pyxdp-direct.py) from the README's example config as written
    ([DEFAULT] banaction = pyxdp-direct.py over Debian's jail.conf, pyxdp found
    through pyxdp-load on PATH, the pin dir from $PYXDP_PIN_DIR): a log line
    bans, a restart keeps the element (its timeout is the time left) and
    re-bans it, and datagrams from the banned address sent all through the
    stop and the start never arrive; unbanip lets them through; 'unban --all'
    empties the set."""
    f = f2b(600, python=True)
    f.start()
    assert reaches(netpair) == (10, 3)
    f.fail(BANNED)
    f.wait(lambda: set_members(pin_dir) == [BANNED], f"{BANNED} in pyxdp set {SET}")
    assert f.banned_in_f2b() == [BANNED]
    assert reaches(netpair) == (0, 0)
    ttl = _ttl_left(pin_dir, BANNED)
    assert ttl is not None and 590 <= ttl <= 601, ttl  # fail2ban's end of the ban

    stream = Stream(netpair)
    try:
        time.sleep(0.3)
        f.stop()  # the jail stops: the set keeps its element
        assert set_members(pin_dir) == [BANNED], f.diagnostics()
        time.sleep(0.5)
        f.start()  # the ban is restored from fail2ban's database: banned again, same end
        f.wait(lambda: "Restore Ban " + BANNED in f.server_text(), "the ban restored")
        time.sleep(0.5)
    finally:
        sent, received = stream.close()
    assert sent >= 50 and received == 0, (sent, received)
    assert set_members(pin_dir) == [BANNED]
    again = _ttl_left(pin_dir, BANNED)
    assert again is not None and again <= ttl, (ttl, again)

    f.client("set", JAIL, "unbanip", BANNED)
    f.wait(lambda: set_members(pin_dir) == [], f"{BANNED} to leave {SET}")
    assert reaches(netpair) == (10, 3)
    f.fail(BANNED)  # again, then every ban at once
    f.wait(lambda: set_members(pin_dir) == [BANNED], f"{BANNED} in pyxdp set {SET} again")
    f.client("unban", "--all")
    f.wait(lambda: set_members(pin_dir) == [], f"{SET} emptied by unban --all")
    assert reaches(netpair) == (10, 3)
    f.stop()
    f.assert_no_errors()
    assert "pyxdp action: bans into @f2b-pxt" in f.server_text()
