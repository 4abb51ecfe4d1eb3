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
import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from helpers.env import ROOT, RUN, NetPair, sh

if TYPE_CHECKING:
    import logging

_seq = itertools.count()
ROOT_FIXTURES = {"pin_dir", "flt", "tester", "netpair"}  # a test using one needs root


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


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "root: needs root (BPF and netlink); skipped without it, "
                            "-m 'not root' leaves it out")
    config.addinivalue_line("markers", "long(seconds): takes that long or so here alone (a crash-injection "
                            "loop); under pytest-xdist the long tests start first, longest first")


def pytest_sessionstart(session: pytest.Session) -> None:
    if ROOT:
        from pyxdp.kernel.bpffs import ensure_bpffs

        ensure_bpffs()
    _sweep()


@pytest.hookimpl(trylast=True)  # after pytest's own reordering (by fixtures)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test that needs root is marked ``root`` (explicitly, or by using a
    fixture that makes BPF state or namespaces): ``pytest -m "not root"``
    leaves it out; run without root, it is skipped. In a pytest-xdist
    worker the ``long`` tests come first, longest first (the same order in
    every worker, as xdist requires): --dist loadgroup hands out tests in
    this order to whichever worker is free (each holds one running and one
    waiting), so the long ones run side by side from the start instead of
    one of them ending the run alone."""
    skip = pytest.mark.skip(reason="needs root (BPF and netlink)")
    for item in items:
        if ROOT_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.root)
        if not ROOT and item.get_closest_marker("root") is not None:
            item.add_marker(skip)
    if hasattr(config, "workerinput"):  # set in pytest-xdist's workers only
        items.sort(key=_longest_first)  # stable: file order otherwise


def _longest_first(item: pytest.Item) -> float:
    mark = item.get_closest_marker("long")
    return -float(mark.args[0]) if mark is not None else 0.0


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _sweep(own=True)


@pytest.fixture(autouse=True)
def runtime_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> str:
    """pyxdp's own files (/var/lib/pyxdp on a host: the runtime file, the record of the last 'up') go to a
    directory of each test's own: no test writes the host's, or sees another test's."""
    path = str(tmp_path_factory.mktemp("var-lib-pyxdp"))
    monkeypatch.setenv("PYXDP_RUNTIME_DIR", path)
    return path


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


@pytest.fixture
def netpair(request: pytest.FixtureRequest) -> Iterator[NetPair]:
    if not ROOT:
        pytest.skip("needs root")
    pair = NetPair(str(next(_seq)))
    try:
        yield pair
    finally:
        pair.close()


@pytest.fixture
def base() -> Iterator[str]:
    """A private parent directory (mode 0700, ours) for pin dirs under test."""
    path = tempfile.mkdtemp(prefix="pyxdp-hard-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def records() -> Iterator[list[logging.LogRecord]]:
    """The 'pyxdp.audit' records this process makes, through a handler of the test's own."""
    import logging

    got: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            got.append(record)

    log = logging.getLogger("pyxdp.audit")
    h = Keep()
    log.addHandler(h)
    old = log.level
    log.setLevel(logging.INFO)
    try:
        yield got
    finally:
        log.removeHandler(h)
        log.setLevel(old)
