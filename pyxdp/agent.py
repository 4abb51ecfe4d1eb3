"""The long-running part, ``pyxdp-load agent``: follows a config file and
keeps the firewall and its interfaces what the file says.

Every ``interval`` seconds it looks at the file (a stat; the text is read
only when the file changed, which also catches Kubernetes' ConfigMap update:
the ``..data`` symlink swapped to a new directory). With ``watch`` a changed
file is brought in by :func:`pyxdp.up.up`, all or nothing; a file that does
not parse, or that ``up`` refuses, is said in one log line and the last good
rule set keeps running. While the running firewall is not the file's (an
interface it names is missing, a step failed), ``up`` is tried again every
``retry`` seconds, so an interface that appears later is attached when it
appears. Without ``watch`` the file is never applied (``pyxdp-load up`` or a
systemd reload does that); the agent then only attaches again the interfaces
the state records that have come back (a NIC re-plugged, a namespace made
again).

A file's *generation* is the first 12 hex digits of its SHA-256: two hosts
(or a host before and after a reload) run the same rule set when their
generations agree. :meth:`Agent.status` says which generation runs, whether
it is the file's and every interface runs it (``ready``), and why not.

Stopping (:meth:`Agent.stop`) leaves the filter attached and the state
pinned, so a restart or an upgrade of the agent opens no window; the caller
may detach (``--detach-on-exit``) with :meth:`Agent.detach_all`. The
filter never needs the agent to enforce."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from .errors import PyxdpError

if TYPE_CHECKING:
    from .model.rulefile import InterfaceSpec, RuleSetSpec
    from .store.attach import Attachment

__all__ = ["DEFAULT_ROUTE", "Agent", "AgentStatus", "default_route_interfaces", "generation", "node_interfaces"]

GEN_DIGITS = 12


def generation(text: str) -> str:
    """The generation of a config file's text: 12 hex digits of its SHA-256."""
    return hashlib.sha256(text.encode()).hexdigest()[:GEN_DIGITS]


class AgentStatus(NamedTuple):
    """What the agent runs and whether it is what the file says."""

    generation: str | None  # the file generation the firewall runs (applied by this agent), None: none yet
    file_generation: str | None  # the file as last read; None: it could not be read
    ready: bool  # the firewall runs the file's generation on every interface the file names
    reason: str  # why not ready ("" when ready)
    last_pass: float  # time.monotonic() of the loop's last pass (0: none yet)
    reloads: int  # changes of the file brought in
    failures: int  # attempts that failed (a bad file, a refused or failed 'up')


class _Seen(NamedTuple):
    key: tuple[int, int, int, int] | None  # (dev, inode, size, mtime) of the file, None: unreadable
    text: str | None
    spec: RuleSetSpec | None  # None: it did not parse
    error: str  # why the text cannot be brought in ("" if it can)


class Agent:
    """Follows ``config`` for the state in ``pin_dir``; see the module's text.
    ``log`` gets one line per event (the CLI prefixes and prints it)."""

    def __init__(self, pin_dir: str, config: str, *, watch: bool = True, interval: float = 1.0,
                 retry: float = 5.0, select: tuple[str, ...] = (), log: Callable[[str], None] | None = None) -> None:
        self.pin_dir = pin_dir
        self.select = select
        self.config = config
        self.watch = watch
        self.interval = interval
        self.retry = retry
        self._log = log or (lambda msg: None)
        self._stop = threading.Event()
        self._seen = _Seen(None, None, None, "not read yet")
        self._running: str | None = None  # the generation this agent brought in
        self._tried: tuple[object, float] = (None, 0.0)  # ((generation, interfaces), monotonic time) of the last 'up'
        self._said = ""  # the last problem logged (each is said once until it changes)
        self._reloads = 0
        self._failures = 0
        self._status = AgentStatus(None, None, False, "starting", 0.0, 0, 0)

    # ---- the loop -----------------------------------------------------------------

    def run(self) -> None:
        """Pass after pass, ``interval`` seconds apart, until :meth:`stop`."""
        while not self._stop.is_set():
            self.step()
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()

    def status(self) -> AgentStatus:
        return self._status  # replaced whole by each pass: a reader in another thread sees one pass's

    def step(self) -> None:
        """One pass: read the file when it changed, bring it in when told to
        and needed, attach what came back, then say where things stand."""
        seen = self._read()
        gen = generation(seen.text) if seen.text is not None else None
        reason = ""
        if self.select and seen.spec is not None:
            seen = seen._replace(spec=seen.spec._replace(interfaces=node_interfaces(self.select)))
        if self.watch:
            if seen.error:
                reason = seen.error
            elif gen != self._running or not self._attached_all(seen.spec):
                reason = self._bring_in(seen, gen)
        else:
            self._reattach()
            reason = self._how_far(seen, gen)
        if reason and reason != self._said:
            self._log(reason)
        self._said = reason
        ready = not reason
        self._status = AgentStatus(self._running, gen, ready, reason, time.monotonic(), self._reloads,
                                   self._failures)

    # ---- reading the file ------------------------------------------------------------

    def _read(self) -> _Seen:
        try:
            st = os.stat(self.config)  # through the ..data symlink a ConfigMap mount swaps
            key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError as exc:
            return _Seen(None, None, None, f"cannot read {self.config}: {exc.strerror}; the firewall runs on as it is")
        if key == self._seen.key:
            return self._seen
        from .model.rulefile import parse_ruleset

        try:
            with open(self.config, encoding="utf-8") as fh:
                text = fh.read()
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
            return _Seen(None, None, None, f"cannot read {self.config}: {why}; the firewall runs on as it is")
        try:
            spec = parse_ruleset(text, self.config)
        except PyxdpError as exc:
            self._failures += 1
            self._seen = _Seen(key, text, None, f"refused generation {generation(text)}: {exc}; "
                               f"{self._keeping()}")
            return self._seen
        self._seen = _Seen(key, text, spec, "")
        return self._seen

    def _keeping(self) -> str:
        return f"keeping generation {self._running}" if self._running else "the firewall runs on as it is"

    # ---- bringing it in ------------------------------------------------------------

    def _bring_in(self, seen: _Seen, gen: str | None) -> str:
        """``up`` with the file's rule set; '' when it is in, else why not.
        The same generation is tried again only every ``retry`` seconds."""
        from .filter import Filter

        assert seen.spec is not None and gen is not None
        attempt = (gen, seen.spec.interfaces)
        last, last_at = self._tried
        if last == attempt and time.monotonic() - last_at < self.retry:
            return self._said or f"generation {gen} is not in yet"
        self._tried = (attempt, time.monotonic())
        try:
            with Filter.open(self.pin_dir, create=True, with_program=bool(seen.spec.interfaces), migrate=True) as flt:
                if flt.recovered:
                    self._log(flt.recovered)
                changes = flt.up(seen.spec)
        except (PyxdpError, OSError) as exc:
            self._failures += 1
            return f"cannot bring in {self.config} (generation {gen}): {exc}; {self._keeping()}; trying again " \
                   f"every {self.retry:g} s"
        for c in changes:
            self._log(str(c))
        if not seen.spec.interfaces:
            self._log(f"no interface of this node matches {', '.join(self.select)}" if self.select else
                      f"{self.config} names no interface")
        if gen != self._running:
            self._reloads += 1
            self._log(f"running generation {gen} of {self.config}")
        self._running = gen
        return ""

    def _attached_all(self, spec: RuleSetSpec | None) -> bool:
        """Every interface ``spec`` names runs the filter (an interface that
        went away and came back does not)."""
        if spec is None:
            return False
        if not spec.interfaces:
            return True
        live = {(a.netns, a.ifname) for a in self._interfaces() if a.attached}
        return all((i.netns, i.name) in live for i in spec.interfaces)

    def _interfaces(self) -> list[Attachment]:
        from .filter import Filter

        try:
            with Filter.open(self.pin_dir, lock=False) as flt:
                return list(flt.interfaces())
        except (PyxdpError, OSError):
            return []

    def _how_far(self, seen: _Seen, gen: str | None) -> str:
        """Without ``watch``: ready when the state runs on every interface the file names."""
        if seen.error:
            return seen.error
        if not self._attached_all(seen.spec):
            return f"the filter does not run on every interface {self.config} names (not watching it: " \
                   "'pyxdp-load up' brings it in)"
        return ""

    def _reattach(self) -> None:
        """Attach again each interface the state records that runs nothing now but exists."""
        from .filter import Filter
        from .model.modes import XdpMode

        todo = [a for a in self._interfaces() if not a.attached]
        if not todo:
            return
        try:
            with Filter.open(self.pin_dir) as flt:
                for a in flt.interfaces():
                    if a.attached or not _exists(a.ifname, a.netns):
                        continue
                    try:  # the record names an interface that went away: it is made anew
                        flt.detach(a.ifname, netns=a.netns, keep=True)
                        b = flt.attach(a.ifname, mode=XdpMode(a.mode), netns=a.netns)
                    except (PyxdpError, OSError) as exc:
                        self._log(f"cannot attach to {a.ifname} again: {exc}")
                        continue
                    self._log(f"attached to {a.ifname} again: {b.mode} mode, program id {b.prog_id}")
        except (PyxdpError, OSError) as exc:
            self._log(f"cannot open the state to attach again: {exc}")

    def detach_all(self) -> list[str]:
        """Detach the filter from every interface it runs on (``--detach-on-exit``); returns their names."""
        from .filter import Filter

        gone = []
        with Filter.open(self.pin_dir) as flt:
            for a in flt.interfaces():  # the state stays: its sets and bans outlive the agent
                flt.detach(a.ifname, netns=a.netns, keep=True)
                gone.append(a.ifname if a.netns is None else f"{a.ifname} (netns {a.netns})")
        return gone


DEFAULT_ROUTE = "default-route"


def node_interfaces(select: tuple[str, ...]) -> tuple[InterfaceSpec, ...]:
    """The interfaces of this host's namespace that ``select`` names, in
    auto mode: each item a name, a shell pattern (``eth*``, ``en[op]*``) or
    ``default-route`` (the interfaces of the IPv4 and IPv6 default routes)."""
    import fnmatch

    from .kernel.rtnl import Links
    from .model.rulefile import InterfaceSpec

    try:  # netlink, not /sys/class/net: that shows the namespace sysfs was mounted in, not this process's
        with Links() as nl:
            links = sorted(x.ifname for x in nl.all())
    except (PyxdpError, OSError):
        links = []
    names: list[str] = []
    for item in select:
        found = default_route_interfaces() if item == DEFAULT_ROUTE else fnmatch.filter(links, item)
        names += [n for n in found if n not in names]
    return tuple(InterfaceSpec(n) for n in names)


def default_route_interfaces() -> list[str]:
    """The interfaces the default routes (IPv4 0.0.0.0/0, IPv6 ::/0) of the main table leave by."""
    out: list[str] = []
    try:
        with open("/proc/net/route", encoding="ascii") as fh:
            for line in fh.readlines()[1:]:
                f = line.split()
                if len(f) > 7 and f[1] == "00000000" and f[7] == "00000000" and int(f[3], 16) & 1:  # RTF_UP
                    out.append(f[0])
    except OSError:
        pass
    try:
        with open("/proc/net/ipv6_route", encoding="ascii") as fh:
            for line in fh:
                f = line.split()
                if len(f) == 10 and f[0] == "0" * 32 and f[1] == "00" and f[9] != "lo" and int(f[8], 16) & 1:
                    out.append(f[9])
    except OSError:
        pass
    return list(dict.fromkeys(out))


def _exists(ifname: str, netns: str | None) -> bool:
    from .kernel.rtnl import Links

    try:
        with Links(netns) as links:
            links.state(ifname)
    except (PyxdpError, OSError):
        return False
    return True
