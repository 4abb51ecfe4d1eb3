"""What tests share besides fixtures: whether we are root, this run's id
(in every name a test makes), the ``root`` marker, a shell helper and the
namespace pair the network tests use."""

from __future__ import annotations

import os
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
