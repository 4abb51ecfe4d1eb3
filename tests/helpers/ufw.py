"""Debian's real ufw, run only inside a test's own network namespace and a
private mount namespace: every ufw call runs under ``unshare --mount`` with
private copies of /etc/ufw, /lib/ufw and /etc/default/ufw bind-mounted over
the host's (and /var/lib/ufw when the host has one), then enters the test's
network namespace. The host's firewall and ufw's files on the host are never
read for rules nor written: :func:`host_fingerprint` is what a test compares
before and after."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile

SHARE = "/usr/share/ufw"
# the host's paths and the name of each private copy
MOUNTS = (("/etc/ufw", "etc_ufw"), ("/lib/ufw", "lib_ufw"), ("/etc/default/ufw", "default_ufw"),
          ("/var/lib/ufw", "var_lib_ufw"))


def available() -> str | None:
    """Why ufw cannot run here (None: it can)."""
    for tool in ("ufw", "unshare", "nsenter", "iptables"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed: run scripts/setup.sh --test"
    if not os.path.isdir(f"{SHARE}/iptables"):
        return f"{SHARE}/iptables is missing (ufw's templates)"
    return None


def _digest_tree(path: str) -> str:
    h = hashlib.sha256()
    if os.path.isfile(path):
        with open(path, "rb") as fh:
            h.update(fh.read())
        return h.hexdigest()
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        for name in sorted(filenames):
            p = os.path.join(dirpath, name)
            h.update(p.encode())
            if os.path.isfile(p) and not os.path.islink(p):
                with open(p, "rb") as fh:
                    h.update(fh.read())
    return h.hexdigest()


def host_fingerprint() -> dict[str, str]:
    """What ufw would change on the host, were it let out of its namespaces:
    every line of the host's rule sets (nftables, and iptables' legacy and
    nft tables when the tools are there) that names ufw (its tables' chains
    are all ufw-*, ufw6-*), and ufw's files on the host. Equal before and
    after a test that ran ufw means the test touched neither. (The rest of
    the host's rule set is not compared: other tools on a shared machine,
    a container runtime's NAT say, change it and count packets in it.)"""
    out: dict[str, str] = {}
    for cmd in (["nft", "list", "ruleset"], ["iptables-legacy-save"], ["ip6tables-legacy-save"],
                ["iptables-nft-save"], ["ip6tables-nft-save"]):
        if shutil.which(cmd[0]) is None:
            continue
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        out[" ".join(cmd)] = "\n".join(x for x in (r.stdout + r.stderr).splitlines() if "ufw" in x.lower())
    for host, _ in MOUNTS:
        out[host] = _digest_tree(host) if os.path.exists(host) else "missing"
    return out


class Ufw:
    """ufw in network namespace ``netns`` with private files under ``self.dir``,
    starting from the package's templates: IPv6 on, no rules, policy drop
    incoming, allow outgoing; sysctl and module loading left out (they are
    the host's to set)."""

    def __init__(self, netns: str) -> None:
        self.netns = netns
        self.dir = tempfile.mkdtemp(prefix="pyxdp-ufw-")
        d = self.dir
        shutil.copytree("/etc/ufw", f"{d}/etc_ufw", symlinks=True)
        shutil.copytree("/lib/ufw", f"{d}/lib_ufw", symlinks=True)
        os.mkdir(f"{d}/var_lib_ufw")
        for name in ("user.rules", "user6.rules"):  # never the host's own rules
            shutil.copy(f"{SHARE}/iptables/{name}", f"{d}/etc_ufw/{name}")
            os.chmod(f"{d}/etc_ufw/{name}", 0o640)
        shutil.copy(f"{SHARE}/ufw.conf", f"{d}/etc_ufw/ufw.conf")
        with open("/etc/default/ufw", encoding="utf-8") as fh:
            lines = fh.read().splitlines()
        fixed = {"IPV6": "yes", "DEFAULT_INPUT_POLICY": '"DROP"', "DEFAULT_OUTPUT_POLICY": '"ACCEPT"',
                 "DEFAULT_FORWARD_POLICY": '"DROP"', "MANAGE_BUILTINS": "no", "IPT_SYSCTL": "", "IPT_MODULES": '""'}
        out = [x for x in lines if x.partition("=")[0].strip() not in fixed]
        out += [f"{k}={v}" for k, v in fixed.items()]
        with open(f"{d}/default_ufw", "w", encoding="utf-8") as fh:
            fh.write("\n".join(out) + "\n")
        with open(f"{d}/etc_ufw/sysctl.conf", "w", encoding="utf-8"):
            pass

    def run(self, *words: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        """``ufw WORDS`` in the private mount namespace and the test's network namespace."""
        mounts = []
        for host, name in MOUNTS:
            if os.path.exists(host):
                mounts.append(f"mount --bind {self.dir}/{name} {host}")
        script = " && ".join(mounts) + f' && exec nsenter --net=/run/netns/{self.netns} "$@"'
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                            "ufw", *words], capture_output=True, text=True, env=env, timeout=120)
        if check and r.returncode != 0:
            raise AssertionError(f"ufw {' '.join(words)}: {r.stdout}{r.stderr}")
        return r

    def file(self, name: str) -> str:
        """A file of ufw's private copy: 'user.rules', 'user6.rules', 'ufw.conf' or 'default' (/etc/default/ufw)."""
        path = f"{self.dir}/default_ufw" if name == "default" else f"{self.dir}/etc_ufw/{name}"
        with open(path, encoding="utf-8") as fh:
            return fh.read()

    def root(self) -> str:
        """A directory laid out as a root (ROOT/etc/ufw, ROOT/etc/default/ufw) of ufw's files now."""
        r = f"{self.dir}/root"
        shutil.rmtree(r, ignore_errors=True)
        os.makedirs(f"{r}/etc/default")
        shutil.copytree(f"{self.dir}/etc_ufw", f"{r}/etc/ufw", symlinks=True)
        shutil.copy(f"{self.dir}/default_ufw", f"{r}/etc/default/ufw")
        return r

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
