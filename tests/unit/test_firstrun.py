"""A first run without root: no command prints the commands; scripts/setup.sh installs once, quietly,
links pyxdp-load only where nothing else is (what the first commands on a host do:
tests/kernel/test_firstrun.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

import pytest
from helpers.cli import BIN
from helpers.env import ROOT

TREE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("args", [[], ["--pin-dir", "/sys/fs/bpf/pyxdp-nosuch"], ["--log-file", "/dev/null"]])
def test_no_command_prints_the_commands_and_exits_2(args: list[str]) -> None:
    r = subprocess.run([BIN, *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r
    assert r.stdout == ""
    assert r.stderr.startswith("usage: pyxdp-load "), r.stderr
    for command in ("attach", "detach", "status", "allow", "deny", "ban", "unban", "list", "apply", "save"):
        assert f"\n    {command} " in r.stderr, command
    assert "Traceback" not in r.stderr


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


@pytest.mark.long(25)
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


def test_version_is_the_package_version_and_loads_nothing_else() -> None:
    """``--version`` prints pyxdp.__version__, which the installed package's
    metadata (pyproject reads it from there) agrees with; it loads no module
    of a command (no argparse, no handler)."""
    from importlib.metadata import version

    import pyxdp

    r = subprocess.run([BIN, "--version"], capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout, r.stderr) == (0, f"pyxdp-load {pyxdp.__version__}\n", "")
    assert version("pyxdp") == pyxdp.__version__ == "0.3.0"
    py = os.path.join(os.path.dirname(BIN), "python")
    r = subprocess.run([py, "-X", "importtime", "-c", "import sys; from pyxdp.cli import main; "
                        "sys.exit(main(['--version']))"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r
    loaded = {line.split("|")[-1].strip() for line in r.stderr.splitlines()[1:]}
    assert not loaded & {"argparse", "pyxdp.cli.parser", "pyxdp.filter"}, sorted(loaded)
    r = subprocess.run([BIN, "--help"], capture_output=True, text=True, timeout=60)
    assert "--version" in r.stdout, r
