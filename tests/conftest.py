"""Shared fixtures. Everything a test creates is named with this run's pid
(pin dirs /sys/fs/bpf/pyxdp-t<pid>-*, namespaces pxt<pid>-*) and removed even
when the test fails. The sweeps at start and finish remove only leftovers whose
pid is no longer alive (and, at finish, this run's own), so two runs of the
suite on one machine leave each other alone."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
from collections.abc import Iterator

import pytest

ROOT = os.geteuid() == 0
RUN = str(os.getpid())
_seq = itertools.count()

needs_root = pytest.mark.skipif(not ROOT, reason="needs root (BPF and netlink)")


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=check)


_NETNS_RE = re.compile(r"pxt(\d+)-")
_PIN_RE = re.compile(r"pyxdp-t(\d+)-")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale(name: str, pattern: re.Pattern[str], own: bool) -> bool:
    """True when ``name`` was made by a run that is gone (or by this run, with
    ``own``). Names without a pid in them are never touched."""
    m = pattern.match(name)
    if m is None:
        return False
    pid = int(m.group(1))
    if not 0 < pid < 1 << 22:  # above the kernel's largest pid_max: not a run's name
        return False
    if pid == os.getpid():
        return own
    return not _pid_alive(pid)


def _sweep(own: bool = False) -> None:
    if not ROOT:
        return
    # 'ip netns list' prints "NAME" or "NAME (id: N)" per line
    for line in sh("ip", "netns", "list", check=False).stdout.splitlines():
        name = line.split(" ", 1)[0]
        if _stale(name, _NETNS_RE, own):
            sh("ip", "netns", "del", name, check=False)
    if os.path.isdir("/sys/fs/bpf"):
        for name in os.listdir("/sys/fs/bpf"):
            if _stale(name, _PIN_RE, own):
                shutil.rmtree(os.path.join("/sys/fs/bpf", name), ignore_errors=True)


def pytest_sessionstart(session: pytest.Session) -> None:
    if ROOT:
        from pyxdp.kernel.bpf import ensure_bpffs

        ensure_bpffs()
    _sweep()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _sweep(own=True)


@pytest.fixture
def pin_dir() -> Iterator[str]:
    """A fresh, unused pin directory path; removed after the test."""
    if not ROOT:
        pytest.skip("needs root")
    path = f"/sys/fs/bpf/pyxdp-t{RUN}-{next(_seq)}"
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def flt(pin_dir: str) -> Iterator[object]:
    """An open, locked Filter with fresh state (maps only)."""
    from pyxdp import Filter

    with Filter.open(pin_dir, create=True) as f:
        yield f


@pytest.fixture
def tester(flt: object) -> Iterator[object]:
    """A test-run instance sharing ``flt``'s rules."""
    with flt.tester() as t:  # type: ignore[attr-defined]
        yield t


class NetPair:
    """Two namespaces joined by a veth: ``a`` (10.77.0.1, fd77::1) sends,
    ``b`` (10.77.0.2, fd77::2) receives on interface ``vb``."""

    def __init__(self, tag: str) -> None:
        self.a = f"pxt{RUN}-{tag}a"
        self.b = f"pxt{RUN}-{tag}b"
        self.va = "va"
        self.vb = "vb"
        for ns in (self.a, self.b):
            sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", "pxtmp0", "netns", self.a, "type", "veth", "peer", "name", "pxtmp1", "netns", self.b)
        sh("ip", "-n", self.a, "link", "set", "pxtmp0", "name", self.va)
        sh("ip", "-n", self.b, "link", "set", "pxtmp1", "name", self.vb)
        for ns, dev, v4, v6 in ((self.a, self.va, "10.77.0.1", "fd77::1"), (self.b, self.vb, "10.77.0.2", "fd77::2")):
            sh("ip", "-n", ns, "addr", "add", f"{v4}/24", "dev", dev)
            sh("ip", "-n", ns, "addr", "add", f"{v6}/64", "dev", dev, "nodad")
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")

    def close(self) -> None:
        for ns in (self.a, self.b):
            sh("ip", "netns", "del", ns, check=False)


@pytest.fixture
def netpair(request: pytest.FixtureRequest) -> Iterator[NetPair]:
    if not ROOT:
        pytest.skip("needs root")
    pair = NetPair(str(next(_seq)))
    try:
        yield pair
    finally:
        pair.close()
