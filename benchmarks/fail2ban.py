"""fail2ban: 300 offenders at once (issue 21, item 4: banned in <= 1.0x the
time of an action that runs `true`, the floor, same run).

Each run is a fail2ban server of its own (Debian's fail2ban; config, socket,
database and log in a temp dir, never the host's service), one jail with
maxretry = 1 watching a log file; the script appends 300 failure lines from
300 distinct addresses at once. Three actions, interleaved round by round:

- ``true``: ``actionban = true`` (a process per ban that does nothing: the floor);
- ``shell``: contrib/fail2ban/action.d/pyxdp.conf (``pyxdp-load ban`` per ban);
- ``python``: contrib/fail2ban/action.d/pyxdp-direct.py (the library, in the server).

Time: from fail2ban's first ``Found`` line (its log's timestamp: the filter
has read the lines) to the end: for the pyxdp actions, the moment the jail's
set holds all 300 elements (polled every 10 ms from this process); for
``true``, the log's 300th ``Ban`` line, which fail2ban writes just before it
runs that ban's action (so the floor is, if anything, measured short).
Medians of --rounds rounds (default 3). Run as root after scripts/setup.sh --test:

    sudo .venv/bin/python benchmarks/fail2ban.py [--rounds 3] [--offenders 300]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from core import BIN, scratch_pin  # noqa: E402

from pyxdp import Filter  # noqa: E402

CONTRIB = os.path.join(HERE, "..", "contrib", "fail2ban", "action.d")
JAIL = "bench"
SET = f"f2b-{JAIL}"
STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def _stamp(line: str) -> float:
    m = STAMP.match(line)
    assert m, line
    return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


class Server:
    def __init__(self, kind: str, pin_dir: str) -> None:
        self.dir = tempfile.mkdtemp(prefix="pxbench-f2b-")
        self.conf = os.path.join(self.dir, "conf")
        self.sock = os.path.join(self.dir, "f2b.sock")
        self.log = os.path.join(self.dir, "auth.log")
        self.server_log = os.path.join(self.dir, "fail2ban.log")
        for sub in ("action.d", "filter.d"):
            os.makedirs(os.path.join(self.conf, sub))
        if kind == "true":
            self._write("action.d/floor.conf", "[Definition]\nactionban = true\nactionunban = true\n")
            action = "floor"
        elif kind == "shell":
            shutil.copy(os.path.join(CONTRIB, "pyxdp.conf"), os.path.join(self.conf, "action.d"))
            action = f"pyxdp[pyxdp={BIN}, pin_dir={pin_dir}]"
        else:
            shutil.copy(os.path.join(CONTRIB, "pyxdp-direct.py"), os.path.join(self.conf, "action.d"))
            action = f"pyxdp-direct.py[pin_dir={pin_dir}, pyxdp={BIN}]"
        self._write("fail2ban.local", f"[Definition]\nloglevel = INFO\nlogtarget = {self.server_log}\n"
                    f"socket = {self.sock}\npidfile = {self.dir}/f2b.pid\ndbfile = {self.dir}/db.sqlite3\n")
        self._write("filter.d/bench.conf", "[Definition]\nfailregex = ^bench failure from <HOST>$\n"
                    "datepattern = {NONE}\n")
        self._write("jail.local", f"[{JAIL}]\nenabled = true\nfilter = bench\nlogpath = {self.log}\n"
                    "backend = polling\nmaxretry = 1\nfindtime = 600\nbantime = 600\nignoreself = false\n"
                    f"usedns = no\naction = {action}\n")
        self._write("auth.log", "")
        self.proc = subprocess.Popen(["fail2ban-server", "-f", "-x", "-c", self.conf, "-s", self.sock,
                                      "-p", f"{self.dir}/f2b.pid"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        end = time.monotonic() + 20
        while self.client("status", JAIL).returncode != 0:
            if time.monotonic() > end:
                raise SystemExit(f"fail2ban did not start ({kind})")
            time.sleep(0.1)

    def _write(self, rel: str, text: str) -> None:
        with open(os.path.join(self.dir if rel == "auth.log" else self.conf, rel), "w") as f:
            f.write(text)

    def client(self, *words: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["fail2ban-client", "-c", self.conf, "-s", self.sock, *words],
                              capture_output=True, text=True)

    def lines(self) -> list[str]:
        with open(self.server_log, errors="replace") as f:
            return f.read().splitlines()

    def close(self) -> None:
        self.client("stop")
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def members(flt: Filter) -> int:
    for s in flt.sets(exact=False):
        if s.name == SET:
            return s.n4
    return 0


def one_run(kind: str, pin_dir: str, n: int, round_no: int) -> float:
    with Filter.open(pin_dir) as flt:  # each run starts without the set
        if SET in {s.name for s in flt.sets()}:
            flt.set_flush(SET)
    srv = Server(kind, pin_dir)
    try:
        addrs = [f"10.{100 + round_no}.{i // 250}.{1 + i % 250}" for i in range(n)]
        with open(srv.log, "a") as f:
            f.write("".join(f"bench failure from {a}\n" for a in addrs))
        reader = Filter.open(pin_dir, lock=False)
        end_wall = None
        deadline = time.monotonic() + 300
        try:
            while time.monotonic() < deadline:
                if kind == "true":
                    bans = [ln for ln in srv.lines() if f"[{JAIL}] Ban " in ln]
                    if len(bans) >= n:
                        end_wall = _stamp(bans[n - 1])
                        break
                elif members(reader) >= n:
                    end_wall = time.time()
                    break
                time.sleep(0.01)
        finally:
            reader.close()
        if end_wall is None:
            raise SystemExit(f"{kind}: not all {n} banned in 300 s")
        found = [ln for ln in srv.lines() if f"[{JAIL}] Found " in ln]
        # (this script's own 'status' polls while the server still starts the jail are not the action's)
        errors = [ln for ln in srv.lines() if " ERROR " in ln and "UnknownJailException" not in ln]
        if errors:
            raise SystemExit(f"{kind}: fail2ban logged errors: {errors[:3]}")
        return end_wall - _stamp(found[0])
    finally:
        srv.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--offenders", type=int, default=300)
    a = ap.parse_args()
    if shutil.which("fail2ban-server") is None:
        raise SystemExit("fail2ban is not installed: run scripts/setup.sh --test")
    kinds = ("true", "shell", "python")
    times: dict[str, list[float]] = {k: [] for k in kinds}
    with scratch_pin("f2b", make=False) as pin_dir:
        Filter.open(pin_dir, create=True).close()
        for r in range(a.rounds):
            for k in kinds:
                times[k].append(one_run(k, pin_dir, a.offenders, r))
                print(f"round {r + 1} {k:6}: {times[k][-1]:.2f} s", file=sys.stderr, flush=True)
        with Filter.open(pin_dir) as flt:
            flt.remove_state()
    floor = statistics.median(times["true"])
    print(f"| action | {a.offenders} offenders (median of {a.rounds}) | bans/s | vs the `true` floor | runs |")
    print("|---|---|---|---|---|")
    for k in kinds:
        med = statistics.median(times[k])
        runs = ", ".join(f"{t:.2f}" for t in times[k])
        print(f"| {k} | {med:.2f} s | {a.offenders / med:.0f} | {med / floor:.2f}x | {runs} |")


if __name__ == "__main__":
    main()
