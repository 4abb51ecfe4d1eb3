"""What tests share besides fixtures: whether we are root, this run's id
(in every name a test makes), the ``root`` marker, a shell helper and the
namespace pair the network tests use, reading a file, and tcpdump's reading
of a pcap file, the systemd unit."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess

import pytest

TREE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the tree's top
ROOT = os.geteuid() == 0
RUN = str(os.getpid())

# Test hooks ($PYXDP_SYSLOG, $PYXDP_TEST_KILL_AFTER, $PYXDP_LIBBPF) are honoured only in an
# environment pyxdp trusts (pyxdp.kernel.libbpf.environment_trusted): not under sudo, whose SUDO_UID
# says the environment is the invoking user's. The suite runs under sudo as the README prints
# it, so a test that needs a hook gives its child root's own environment: this run's without
# sudo's variables (drop_env=SUDO_VARS in helpers.cli.run). pyxdp never drops them itself: a
# command that sudo runs ignores the hooks (test_audit and test_hardening check that).
SUDO_VARS = ("SUDO_UID", "SUDO_GID", "SUDO_USER", "SUDO_COMMAND", "SUDO_HOME")
needs_root = pytest.mark.root  # skipped without root (see conftest.py); -m "not root" leaves it out


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=check)


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


def read(path: str) -> str:
    with open(path, encoding="utf-8") as fh:
        return fh.read()


def tcpdump(path: str, *extra: str) -> list[str]:
    """What tcpdump reads from the pcap file ``path`` (it must be installed: setup.sh --test does)."""
    if shutil.which("tcpdump") is None:
        pytest.fail("tcpdump is not installed: run scripts/setup.sh --test")
    r = subprocess.run(["tcpdump", "-r", path, "-nn", *extra], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


SYSTEMD_UNIT = os.path.join(TREE, "contrib", "systemd", "pyxdp.service")


def systemd_unit() -> configparser.ConfigParser:
    """contrib/systemd/pyxdp.service, read as systemd reads its keys (case kept)."""
    cp = configparser.ConfigParser(interpolation=None, strict=True)
    cp.optionxform = str  # type: ignore[method-assign] - unit keys are case-sensitive
    with open(SYSTEMD_UNIT, encoding="utf-8") as fh:
        cp.read_file(fh)
    return cp
