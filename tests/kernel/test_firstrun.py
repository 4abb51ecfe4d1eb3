"""A new user's first minutes: setup (one quiet install, a link that makes
'sudo pyxdp-load' work as the README prints it, a rerun without the package
index), 'pyxdp-load' alone printing its commands, errors of attach/detach
that say what to do, and the readers (status, list) and a ban starting
without the imports they do not need."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from typing import Any

import pytest
from helpers.cli import BIN, fails, ok
from helpers.env import ROOT, NetPair, needs_root, sh

from pyxdp import UsageError

TREE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ---- no command -------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [[], ["--pin-dir", "/sys/fs/bpf/pyxdp-nosuch"], ["--log-file", "/dev/null"]])
def test_no_command_prints_the_commands_and_exits_2(args: list[str]) -> None:
    r = subprocess.run([BIN, *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r
    assert r.stdout == ""
    assert r.stderr.startswith("usage: pyxdp-load "), r.stderr
    for command in ("attach", "detach", "status", "allow", "deny", "ban", "unban", "list", "apply", "save"):
        assert f"\n    {command} " in r.stderr, command
    assert "Traceback" not in r.stderr


# ---- attach and detach say what to do ---------------------------------------------------------------


@needs_root
def test_detach_without_netns_names_the_namespace(pin_dir: str, netpair: NetPair, tmp_path: Any) -> None:
    log = str(tmp_path / "audit.log")
    ok("--log-file", log, "attach", netpair.vb, "--netns", netpair.b, pin_dir=pin_dir)
    fails(2, f"{netpair.vb} is attached in netns {netpair.b}: add --netns {netpair.b}",
          "detach", netpair.vb, pin_dir=pin_dir)
    fails(2, f"{netpair.vb} is not attached in netns {netpair.a}; it is attached in netns {netpair.b}: "
          f"use --netns {netpair.b}", "detach", netpair.vb, "--netns", netpair.a, pin_dir=pin_dir)
    fails(2, f"pyxdp is not attached to lo in netns {netpair.b} (see 'pyxdp-load status')",
          "detach", "lo", "--netns", netpair.b, pin_dir=pin_dir)
    assert netpair.vb in ok("status", pin_dir=pin_dir)  # the refused detaches changed nothing
    assert "state removed" in ok("--log-file", log, "detach", netpair.vb, "--netns", netpair.b, pin_dir=pin_dir)
    with open(log) as fh:
        lines = fh.read().splitlines()
    assert len(lines) == 3, lines  # state made, attach, detach: the refused ones are not changes
    assert "]: state created (" in lines[0]
    assert f"]: attach {netpair.vb} (netns {netpair.b}): program " in lines[1] and " mode | uid=0 " in lines[1]
    assert f"]: detach {netpair.vb} (netns {netpair.b}); no interface left: state removed | uid=0 " in lines[2]


@needs_root
def test_attach_errors_say_what_to_do(pin_dir: str, netpair: NetPair, tmp_path: Any) -> None:
    fails(2, "no interface 'nosuch0' (see 'ip link'; in a namespace: --netns NAME)", "attach", "nosuch0",
          pin_dir=pin_dir)
    fails(2, f"no interface 'nosuch0' in netns {netpair.b} (see 'ip -n {netpair.b} link')",
          "attach", "nosuch0", "--netns", netpair.b, pin_dir=pin_dir)
    log = tmp_path / "audit.log"
    fails(1, "(--mode generic works on any interface)", "--log-file", str(log), "attach", "lo", "--netns", netpair.b,
          "--mode", "native", pin_dir=pin_dir)
    assert not os.path.exists(pin_dir)  # a failed first attach leaves no state, and the audit trail says so
    whats = [ln.split("]: ", 1)[1].split(" | ")[0] for ln in log.read_text().splitlines()]
    assert whats == ["state created (1048576 set elements per family, 1024 rules)",
                     "state removed again: the change it was made for failed"], whats


# ---- start-up: readers do not import what they do not use ----------------------------------------


def _imports_of(args: list[str], env: dict[str, str] | None = None) -> tuple[int, set[str]]:
    """Exit code of the CLI run in a fresh interpreter, and the top-level modules it imported."""
    code = ("import sys\nfrom pyxdp.cli import main\nrc = main(sys.argv[1:])\n"
            "sys.stdout.flush()\nprint('MODULES', ' '.join(sorted(sys.modules)), file=sys.stderr)\nsys.exit(rc)\n")
    e = dict(os.environ)
    e.pop("PYXDP_DEBUG", None)
    e.update(env or {})
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=e, timeout=60)
    line = [ln for ln in r.stderr.splitlines() if ln.startswith("MODULES ")]
    assert line, r.stderr
    return r.returncode, set(line[0].split()[1:])


@needs_root
def test_status_list_and_ban_do_not_import_what_they_do_not_need(pin_dir: str, netpair: NetPair) -> None:
    ok("attach", netpair.vb, "--netns", netpair.b, pin_dir=pin_dir)
    ok("ban", "192.0.2.7", pin_dir=pin_dir)
    rc, mods = _imports_of(["--pin-dir", pin_dir, "status"])
    assert rc == 0
    assert "pyroute2" not in mods  # the attached interface is checked over a plain netlink socket
    assert "pyxdp.kernel.rtnl" in mods
    rc, mods = _imports_of(["--pin-dir", pin_dir, "list"])
    assert rc == 0
    assert not {"pyroute2", "pyxdp.model.rulefile", "pyxdp.kernel.rtnl", "logging", "threading"} & mods, mods
    # a ban (fail2ban runs one per ban) on a host without syslog and without --log-file: no logging at all
    rc, mods = _imports_of(["--pin-dir", pin_dir, "ban", "192.0.2.8"], {"PYXDP_SYSLOG": "off"})
    assert rc == 0
    assert not {"pyroute2", "logging", "logging.handlers"} & mods, mods
    assert not {"argparse", "pyxdp.cli.parser"} & mods, mods  # its plain form is read without argparse
    assert {"pyxdp.cli.sets", "pyxdp.cli.quick"} <= mods and not {"pyxdp.cli.rules", "pyxdp.cli.attach"} & mods, mods
    text = ok("status", pin_dir=pin_dir)
    assert f"{netpair.vb} (ifindex " in text and "NOT attached" not in text
    sh("ip", "-n", netpair.b, "link", "set", netpair.vb, "xdp", "off")
    assert "(NOT attached any more)" in ok("status", pin_dir=pin_dir)


@needs_root
def test_plain_netlink_reads_what_pyroute2_reads(pin_dir: str, netpair: NetPair) -> None:
    """pyxdp.kernel.rtnl (status) against pyxdp.kernel.xdp (pyroute2: attach, detach): the same answer for interfaces
    in the host's namespace and in others, with and without a program, native and generic."""
    from pyxdp.kernel.rtnl import Links
    from pyxdp.kernel.xdp import Netlink

    ok("attach", netpair.vb, "--netns", netpair.b, pin_dir=pin_dir)
    ok("attach", "lo", "--netns", netpair.a, "--mode", "generic", pin_dir=pin_dir)
    seen = 0
    for ns, names in ((None, ["lo"]), (netpair.a, ["lo", netpair.va]), (netpair.b, ["lo", netpair.vb])):
        with Links(ns) as mine, Netlink(ns) as theirs:
            for name in names:
                want = theirs.state(name)
                assert mine.state(name) == want
                assert mine.state_by_index(want.ifindex) == want
                seen += bool(want.prog_id)
            with pytest.raises(UsageError):
                mine.state("nosuch0")
            assert mine.state_by_index(1 << 30) is None
    assert seen == 2
    with pytest.raises(UsageError, match="no network namespace"):
        Links("pxt-no-such-ns")


# ---- setup: one quiet install, a link, a rerun without the index --------------------------------


def _installed(pkg: str) -> bool:
    r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True, check=False)
    return "install ok installed" in r.stdout


def _copy_tree(dst: str) -> None:
    os.makedirs(os.path.join(dst, "scripts"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(TREE, name), dst)
    for name in ("setup.sh", "venv_current.py"):
        shutil.copy(os.path.join(TREE, "scripts", name), os.path.join(dst, "scripts"))
    shutil.copytree(os.path.join(TREE, "pyxdp"), os.path.join(dst, "pyxdp"),
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


OFFLINE = {"PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": "http://127.0.0.1:9/", "PIP_RETRIES": "0",
           "PIP_EXTRA_INDEX_URL": "", "PIP_FIND_LINKS": "", "PIP_NO_CACHE_DIR": "1"}


def _setup(tree: str, sbin: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    e["PYXDP_SBIN"] = sbin
    e.update(env or {})
    return subprocess.run(["bash", os.path.join(tree, "scripts", "setup.sh")], capture_output=True, text=True,
                          env=e, timeout=900, check=False)


@pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="setup.sh is for Debian")
def test_setup_installs_once_quietly_links_and_reruns_without_the_index(tmp_path: Any) -> None:
    if not all(_installed(p) for p in ("libbpf1", "iproute2")):
        pytest.skip("setup.sh would apt-get install its packages first")
    tree, sbin = str(tmp_path / "tree"), str(tmp_path / "sbin")
    _copy_tree(tree)
    os.mkdir(sbin)
    link, cli = os.path.join(sbin, "pyxdp-load"), os.path.join(os.path.realpath(tree), ".venv", "bin", "pyxdp-load")
    try:
        first = _setup(tree, sbin)
        out = first.stdout + first.stderr
        if first.returncode != 0 and any(s in out for s in ("NewConnectionError", "Could not find a version",
                                                               "Temporary failure in name resolution")):
            pytest.skip("the package index is unreachable: a first setup needs it")
        assert first.returncode == 0, out
        assert "deprecat" not in out.lower() and "Warning:" not in out, out  # setuptools' license warnings
        last = first.stdout.strip().splitlines()[-1]
        assert last.startswith("setup: .venv ready (Python ") and last.endswith(f"pyxdp-load is {link} -> {cli}"), last
        assert os.readlink(link) == cli
        # the link is a command: no arguments prints the usage
        r = subprocess.run([link], capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
        assert r.returncode == 2 and r.stderr.startswith("usage: pyxdp-load"), r

        record = [os.path.join(root, f) for root, _d, files in os.walk(os.path.join(tree, ".venv"))
                  for f in files if f == "RECORD" and "pyxdp-" in root]
        assert len(record) == 1
        mtime = os.stat(record[0]).st_mtime_ns
        again = _setup(tree, sbin, OFFLINE)  # the index unreachable: nothing to install, nothing fails
        assert again.returncode == 0, again.stdout + again.stderr
        lines = again.stdout.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("setup: .venv up to date (Python "), again.stdout
        assert again.stdout.strip().endswith(f"pyxdp-load is {link} -> {cli}")
        assert os.stat(record[0]).st_mtime_ns == mtime  # not reinstalled

        # a changed file of the package is seen (and then needs the index)
        check = [os.path.join(tree, ".venv", "bin", "python"), "-I", os.path.join("scripts", "venv_current.py")]
        assert subprocess.run(check, cwd=tree, capture_output=True, text=True).returncode == 0
        with open(os.path.join(tree, "pyxdp", "store", "state.py"), "a") as fh:
            fh.write("# changed\n")
        r = subprocess.run(check, cwd=tree, capture_output=True, text=True)
        assert (r.returncode, r.stdout) == (1, "pyxdp/store/state.py changed\n")
        stale = _setup(tree, sbin, OFFLINE)
        assert stale.returncode != 0 and "setup: installing into .venv: pyxdp/store/state.py changed" in stale.stdout
    finally:
        shutil.rmtree(tree, ignore_errors=True)


def test_setup_links_only_where_nothing_else_is(tmp_path: Any) -> None:
    """The link step of setup.sh on its own: .venv/bin/python is a stand-in that calls .venv complete."""
    tree = tmp_path / "tree"
    (tree / "scripts").mkdir(parents=True)
    shutil.copy(os.path.join(TREE, "scripts", "setup.sh"), tree / "scripts")
    (tree / "scripts" / "venv_current.py").write_text("")  # unused: the fake python below answers
    (tree / ".venv" / "bin").mkdir(parents=True)
    fake = tree / ".venv" / "bin" / "python"
    fake.write_text("#!/bin/sh\n[ \"$1\" = --version ] && echo 'Python 3.11.2'\nexit 0\n")
    fake.chmod(0o755)
    cli = os.path.join(os.path.realpath(tree), ".venv", "bin", "pyxdp-load")
    sbin = tmp_path / "sbin"
    sbin.mkdir()
    link = str(sbin / "pyxdp-load")

    def last_line() -> str:
        r = _setup(str(tree), str(sbin), {"PATH": os.environ["PATH"]})
        if r.returncode != 0 and "installing" in r.stdout:
            pytest.skip("setup.sh wants packages installed first")
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout.strip().splitlines()[-1]

    if not all(_installed(p) for p in ("libbpf1", "iproute2")) or shutil.which("dpkg-query") is None:
        pytest.skip("setup.sh would apt-get install its packages first")
    assert last_line() == f"setup: .venv up to date (Python 3.11.2); pyxdp-load is {link} -> {cli}"
    assert os.readlink(link) == cli
    assert last_line().endswith(f"pyxdp-load is {link} -> {cli}")  # ours already: kept
    os.unlink(link)
    os.symlink("/nonexistent/old-tree/.venv/bin/pyxdp-load", link)  # ours, from a tree moved away
    assert last_line().endswith("(replaced a dangling link to /nonexistent/old-tree/.venv/bin/pyxdp-load)")
    assert os.readlink(link) == cli
    os.unlink(link)
    os.symlink("/bin/true", link)  # someone else's link
    assert last_line() == f"setup: .venv up to date (Python 3.11.2); {link} is not ours (/bin/true): left alone; " \
        f"run {cli}"
    assert os.readlink(link) == "/bin/true"
    os.unlink(link)
    with open(link, "w") as fh:  # someone else's file
        fh.write("#!/bin/sh\necho theirs\n")
    assert last_line().endswith(f"{link} is not ours (a file): left alone; run {cli}")
    with open(link) as fh:
        assert fh.read() == "#!/bin/sh\necho theirs\n"
    os.unlink(link)
    if ROOT:
        return
    sbin.chmod(0o555)  # not root: no link, and setup still succeeds
    assert last_line().endswith(f"cannot link {link} (not root?): run {cli}")
