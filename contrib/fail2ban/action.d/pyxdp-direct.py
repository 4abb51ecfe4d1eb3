"""Fail2Ban action for pyxdp that runs inside fail2ban's server: no process
per ban. Banned addresses go into a pyxdp set per jail, ``f2b-<jail>``, that
the XDP filter drops (``deny from @SET``, inserted as rule 1 by the first ban
when no rule refers to the set yet), as with the shell action pyxdp.conf.

    [DEFAULT]                       (jail.local: every jail)
    banaction          = pyxdp-direct.py
    banaction_allports = pyxdp-direct.py

    [sshd]                          (or per jail, with options)
    action = pyxdp-direct.py[pin_dir=/sys/fs/bpf/pyxdp, setname=f2b-ssh]

Options: ``pin_dir`` (default: $PYXDP_PIN_DIR of the fail2ban server, else
/sys/fs/bpf/pyxdp), ``setname`` (default ``f2b-<jail>``), ``pythonpath``
(directories, ':'-separated, put first on fail2ban's sys.path to import
pyxdp from, e.g. /opt/pyxdp/.venv/lib/python3.11/site-packages) and
``pyxdp`` (default ``pyxdp-load``): when pyxdp is not importable and no
``pythonpath`` is given, the site-packages of the Python that runs that
``pyxdp-load`` (looked up in the server's PATH) is used; it must be the same
Python version (X.Y) as fail2ban's. The jail's other options (port, protocol,
chain, ...) are accepted and ignored: a ban drops all traffic from the address.

How it bans: ``ban`` checks the address and queues it; one thread of this
action writes what is queued in batches, each batch one ``Filter.open`` (the
writers' lock, held only for the batch) and one change per timeout, so 300
offenders at once are a few changes, not 300 processes. Bans and unbans are
written in the order fail2ban made them. A batch that fails is logged as an
ERROR by this action (the queue has already returned to fail2ban).

Timeouts: each element gets the time left until fail2ban's own end of that
ban (``time + bantime - now``, at least 1 s), also for bans fail2ban restores
from its database at start; ``bantime = -1`` bans without a timeout.

Restart: when the jail stops (fail2ban stop or restart, or the jail removed
by a reload), the set is NOT emptied: its elements end by their own timeouts,
the same moment fail2ban would have unbanned them, and a restart re-bans the
current ones (refreshing the same timeouts). So banned traffic stays dropped
while fail2ban restarts. ``fail2ban-client unban --all`` (and removing the
action from a running jail) empties the set. Permanent bans of a jail that is
gone stay until ``pyxdp-load unban --all --set f2b-<jail>``.
"""

import math
import os
import shutil
import subprocess
import sys
import threading
import time

from fail2ban.server.action import ActionBase

# fail2ban loads this file as the module named after it ("pyxdp-direct"): a
# file named pyxdp.py would stand in sys.modules for the library it imports

_FIND = ("import os, sys, pyxdp; print('%d.%d' % sys.version_info[:2]); "
         "print(os.path.dirname(os.path.dirname(os.path.abspath(pyxdp.__file__))))")


def _import_pyxdp(pythonpath, exe):
    """The pyxdp module: from ``pythonpath`` when given, else from the
    Python that runs ``exe`` (pyxdp-load, where pyxdp is installed with what
    it needs), else as fail2ban's Python finds it."""
    for d in reversed([d for d in pythonpath.split(":") if d]):
        if d not in sys.path:
            sys.path.insert(0, d)
    if pythonpath:
        try:
            import pyxdp
        except ImportError:
            raise ImportError(f"pyxdp action: no pyxdp in pythonpath={pythonpath}") from None
        return pyxdp
    path = shutil.which(exe)
    if path is None:
        try:
            import pyxdp
        except ImportError:
            raise ImportError(f"pyxdp action: pyxdp is not importable by fail2ban's Python ({sys.executable}) and "
                              f"'{exe}' is not in its PATH: give the action pythonpath=... or pyxdp=PATH") from None
        return pyxdp
    with open(os.path.realpath(path), "rb") as f:
        first = f.readline().decode("utf-8", "replace").strip()
    if not first.startswith("#!"):
        raise ImportError(f"pyxdp action: {path} is not a Python script: give the action pythonpath=...")
    # -I: not the working directory (a source tree there is not an installed pyxdp), nor $PYTHONPATH
    r = subprocess.run([*first[2:].split(), "-I", "-c", _FIND], capture_output=True, text=True, timeout=60)
    lines = r.stdout.split("\n")
    if r.returncode != 0 or len(lines) < 2:
        raise ImportError(f"pyxdp action: the Python of {path} cannot import pyxdp: {r.stderr.strip()[-200:]}")
    version, where = lines[0], lines[1]
    ours = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if version != ours:
        raise ImportError(f"pyxdp action: {path} runs Python {version}, fail2ban runs {ours}: install "
                          "pyxdp for fail2ban's Python and give pythonpath=...")
    sys.path.insert(0, where)  # first: before any other pyxdp fail2ban's Python might find (a source tree)
    import pyxdp
    return pyxdp


class Action(ActionBase):
    """A fail2ban action (``ActionBase``: start, stop, ban, reban, unban,
    flush, prolong) that bans through the pyxdp library."""

    def __init__(self, jail, name, pin_dir="", setname="", pythonpath="", pyxdp="pyxdp-load", **_ignored):
        super().__init__(jail, name)
        self._cond = threading.Condition()
        self._ops = []  # ("ban", prefix, deadline or None) | ("unban", prefix, None) | ("flush", None, None)
        self._busy = False
        self._stopping = False
        self._thread = None
        self._px = None
        self._configure(pin_dir, setname, pythonpath, pyxdp)

    def _configure(self, pin_dir, setname, pythonpath, pyxdp):
        self.pin_dir = pin_dir or os.environ.get("PYXDP_PIN_DIR") or "/sys/fs/bpf/pyxdp"
        self.setname = setname or f"f2b-{self._jail.name}"
        self.pythonpath = pythonpath
        self.pyxdp = pyxdp

    # ---- fail2ban's interface -------------------------------------------------------

    def start(self):
        if self._px is None:
            self._px = _import_pyxdp(self.pythonpath, self.pyxdp)
        try:
            from pyxdp.model.rules import parse_set_name

            self.setname = parse_set_name(self.setname)
        except self._px.UsageError as exc:
            raise ValueError(f"pyxdp action: {exc}; give the action setname=...") from None
        with self._cond:
            self._stopping = False
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=f"f2b/pyxdp.{self._jail.name}", daemon=True)
                self._thread.start()
        self._logSys.info("[%s] pyxdp action: bans into @%s in %s (pyxdp %s)", self._jail.name, self.setname,
                          self.pin_dir, self._px.__version__)

    def stop(self):
        """Writes what is queued, then ends the thread; the set keeps its elements."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()

    def ban(self, aInfo):
        bantime = int(aInfo["bantime"])
        deadline = None if bantime < 0 else float(aInfo["time"]) + bantime
        self._queue("ban", self._prefix(aInfo), deadline)

    def reban(self, aInfo):
        return self.ban(aInfo)

    @property
    def _prolongable(self):
        return True

    def prolong(self, aInfo):
        """bantime.increment raised the ban time: re-banning replaces the timeout."""
        return self.ban(aInfo)

    def unban(self, aInfo):
        self._queue("unban", self._prefix(aInfo), None)

    def flush(self):
        """``fail2ban-client unban --all`` or the action removed from a running
        jail: empty the set. When the jail stops, keep it (the elements end
        by their own timeouts; a restart re-bans the current ones)."""
        if not self._jail.actions.active:
            self._logSys.notice("[%s] pyxdp action: @%s kept as it is (its elements end by their timeouts, "
                                "a restart re-bans the current ones)", self._jail.name, self.setname)
            return True
        self._queue("flush", None, None)
        self._wait_idle()
        return True

    def clearAllParams(self):  # noqa: N802 (fail2ban's name): a reload keeps this action
        pass

    def reload(self, pin_dir="", setname="", pythonpath="", pyxdp="pyxdp-load", **_ignored):
        """A fail2ban reload: the options the jail now gives (the queue is written first)."""
        self._wait_idle()
        self._configure(pin_dir, setname, pythonpath, pyxdp)
        self.start()

    # ---- the queue ---------------------------------------------------------------------

    def _prefix(self, aInfo):
        """The address as pyxdp reads it (a bad one raises here: fail2ban logs the ban failed)."""
        if self._px is None:
            self._px = _import_pyxdp(self.pythonpath, self.pyxdp)
        return self._px.parse_prefix(str(aInfo["ip"]))

    def _queue(self, op, prefix, deadline):
        with self._cond:
            self._ops.append((op, prefix, deadline))
            self._cond.notify_all()

    def _wait_idle(self):
        with self._cond:
            while (self._ops or self._busy) and self._thread is not None and self._thread.is_alive():
                self._cond.wait()

    def _run(self):
        while True:
            with self._cond:
                while not self._ops and not self._stopping:
                    self._cond.wait()
                if not self._ops:
                    return
                ops, self._ops = self._ops, []
                self._busy = True
            try:
                self._write(ops)
            except Exception as exc:  # noqa: BLE001 - logged: fail2ban had its answer already
                self._logSys.error("[%s] pyxdp action: %d change(s) of @%s failed: %s", self._jail.name,
                                   len(ops), self.setname, exc)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _write(self, ops):
        """Write ``ops`` in order: each run of bans one change per timeout,
        each run of unbans one change; under one open of the state."""
        px = self._px
        try:
            flt = px.Filter.open(self.pin_dir)
        except px.NotLoaded:
            if all(op != "ban" for op, _, _ in ops):
                return  # nothing is filtered there, so nothing is banned: unbans and flushes succeed
            raise
        with flt:
            i = 0
            while i < len(ops):
                j = i
                while j < len(ops) and ops[j][0] == ops[i][0] and ops[i][0] != "flush":
                    j += 1
                run = ops[i:max(j, i + 1)]
                i = max(j, i + 1)
                try:
                    self._write_run(flt, run)
                except Exception as exc:  # noqa: BLE001 - the other runs are still written
                    self._logSys.error("[%s] pyxdp action: %s of %s into @%s failed: %s", self._jail.name,
                                       run[0][0], ", ".join(str(p) for _, p, _ in run[:5] if p is not None)
                                       + (" ..." if len(run) > 5 else ""), self.setname, exc)

    def _write_run(self, flt, run):
        op = run[0][0]
        if op == "flush":
            if self.setname in {s.name for s in flt.sets(exact=False)}:
                flt.set_flush(self.setname)
        elif op == "unban":
            flt.unban([p for _, p, _ in run], set=self.setname)
        else:
            now = time.time()
            ttls = {}  # prefix -> seconds (0: permanent); a later ban of the same address wins
            for _, p, deadline in run:
                ttls[p] = 0 if deadline is None else max(1, math.ceil(deadline - now))
            by_ttl = {}
            for p, ttl in ttls.items():
                by_ttl.setdefault(ttl, []).append(p)
            for ttl, prefixes in sorted(by_ttl.items()):
                flt.ban(prefixes, ttl=ttl or None, set=self.setname)
