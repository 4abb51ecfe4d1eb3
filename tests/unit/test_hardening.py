"""Safety and robustness of the parts under pyxdp's state (issue 9): pin
directories only pyxdp and root control, files written without following
planted symlinks, a writers' lock that says it waits and gives up, the
libbpf override ignored under sudo/setuid, bounded ring-buffer reads, pcap
replay that reports bad records, and test runs that leave each other alone."""

from __future__ import annotations

import ctypes
import gc
import io
import os
import platform
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from helpers.env import ROOT, RUN, needs_root

from pyxdp.errors import LockTimeout, NotLoaded, PyxdpError, UnsafeState, UsageError

NOBODY = 65534


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as fh:
        return fh.read()


# ---- pin directories ---------------------------------------------------------

@pytest.fixture
def base() -> Iterator[str]:
    """A private parent directory (mode 0700, ours) for pin dirs under test."""
    path = tempfile.mkdtemp(prefix="pyxdp-hard-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_make_pin_dir_creates_it_private(base: str) -> None:
    from pyxdp.store.pindir import check_pin_dir, make_pin_dir

    old = os.umask(0o077 if os.getuid() else 0o022)
    try:
        path = os.path.join(base, "state")
        assert make_pin_dir(path) is True
    finally:
        os.umask(old)
    st = os.lstat(path)
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700
    open(os.path.join(path, "cfg"), "w").close()
    assert make_pin_dir(path, ["cfg"]) is False  # exists, ours, holds only what we made
    check_pin_dir(path, ["cfg", "stats"])


@needs_root
def test_pin_dir_of_another_user_is_refused_and_kept(base: str) -> None:
    from pyxdp.store.pindir import check_pin_dir, make_pin_dir

    path = os.path.join(base, "state")
    os.mkdir(path, 0o755)
    open(os.path.join(path, "cfg"), "w").close()
    os.chown(path, NOBODY, NOBODY)
    with pytest.raises(UnsafeState) as ei:
        make_pin_dir(path, ["cfg"])
    assert str(ei.value) == (f"pin dir {path} is owned by uid {NOBODY}, not root: "
                             "remove it or choose another --pin-dir")
    assert isinstance(ei.value, PermissionError) and isinstance(ei.value, PyxdpError)
    assert ei.value.path == path
    with pytest.raises(UnsafeState):
        check_pin_dir(path, ["cfg"])
    st = os.lstat(path)  # neither removed nor changed
    assert st.st_uid == NOBODY and stat.S_IMODE(st.st_mode) == 0o755
    assert os.listdir(path) == ["cfg"]


@pytest.mark.parametrize("mode", [0o770, 0o702, 0o1777])
def test_group_or_world_writable_pin_dir_is_refused(base: str, mode: int) -> None:
    from pyxdp.store.pindir import check_pin_dir, make_pin_dir

    path = os.path.join(base, "state")
    os.mkdir(path)
    os.chmod(path, mode)
    with pytest.raises(UnsafeState, match=rf"pin dir {path} is group- or world-writable \(mode {mode:04o}\)"):
        make_pin_dir(path)
    with pytest.raises(UnsafeState):
        check_pin_dir(path, [])
    assert stat.S_IMODE(os.lstat(path).st_mode) == mode  # never chmod'ed


def test_foreign_entry_in_pin_dir_is_refused(base: str) -> None:
    from pyxdp.store.pindir import check_pin_dir, make_pin_dir

    path = os.path.join(base, "state")
    assert make_pin_dir(path)
    open(os.path.join(path, "cfg"), "w").close()
    open(os.path.join(path, "evil"), "w").close()
    with pytest.raises(UnsafeState, match=rf"pin dir {path} holds 'evil', which pyxdp did not make"):
        check_pin_dir(path, ["cfg"])
    with pytest.raises(UnsafeState):
        make_pin_dir(path, ["cfg"])
    assert sorted(os.listdir(path)) == ["cfg", "evil"]


@needs_root
def test_entry_owned_by_another_user_is_refused(base: str) -> None:
    from pyxdp.store.pindir import check_pin_dir

    path = os.path.join(base, "state")
    os.mkdir(path, 0o700)
    entry = os.path.join(path, "cfg")
    open(entry, "w").close()
    os.chown(entry, NOBODY, NOBODY)
    with pytest.raises(UnsafeState, match=rf"holds 'cfg' owned by uid {NOBODY}, not root"):
        check_pin_dir(path, ["cfg"])


def test_symlinked_pin_dir_is_refused(base: str) -> None:
    from pyxdp.store.pindir import check_pin_dir, make_pin_dir

    real = os.path.join(base, "real")
    os.mkdir(real, 0o700)
    link = os.path.join(base, "state")
    os.symlink(real, link)
    with pytest.raises(UnsafeState, match=rf"pin dir {link} is a symlink"):
        make_pin_dir(link)
    with pytest.raises(UnsafeState, match="is a symlink"):
        check_pin_dir(link, [])
    assert os.path.islink(link)


def test_pin_dir_in_a_parent_others_can_write_is_refused(base: str) -> None:
    from pyxdp.store.pindir import make_pin_dir

    parent = os.path.join(base, "shared")
    os.mkdir(parent)
    os.chmod(parent, 0o777)  # writable by all, not sticky: the directory could be swapped
    with pytest.raises(UnsafeState, match="writable by others without the sticky bit"):
        make_pin_dir(os.path.join(parent, "state"))
    assert os.listdir(parent) == []
    os.chmod(parent, 0o1777)  # sticky, like bpffs' root: fine
    assert make_pin_dir(os.path.join(parent, "state"))


def test_missing_pin_dir_and_parent(base: str) -> None:
    from pyxdp.store.pindir import check_pin_dir, make_pin_dir

    with pytest.raises(NotLoaded, match="does not exist"):
        check_pin_dir(os.path.join(base, "none"), [])
    with pytest.raises(UsageError, match="does not exist"):
        make_pin_dir(os.path.join(base, "none", "state"))


@needs_root
def test_pin_dir_on_bpffs_made_by_another_user(tmp_path: object) -> None:
    """The real case: the bpffs root is 1777, a user makes the pin dir first."""
    from pyxdp.kernel.bpffs import BPFFS, ensure_bpffs, is_bpffs
    from pyxdp.store.pindir import make_pin_dir

    ensure_bpffs()
    assert is_bpffs(BPFFS)
    path = f"{BPFFS}/pyxdp-t{RUN}-hard-foreign"
    os.mkdir(path, 0o755)
    try:
        os.chown(path, NOBODY, NOBODY)
        with pytest.raises(UnsafeState, match=f"owned by uid {NOBODY}, not root"):
            make_pin_dir(path, ["cfg"])
        assert os.path.isdir(path) and os.stat(path).st_uid == NOBODY
    finally:
        os.rmdir(path)
    assert make_pin_dir(path)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
    finally:
        os.rmdir(path)


@needs_root
def test_ensure_bpffs_mounts_private(base: str) -> None:
    from pyxdp.kernel.bpffs import ensure_bpffs, is_bpffs

    mnt = os.path.join(base, "bpffs")
    os.mkdir(mnt)
    ensure_bpffs(mnt)
    try:
        assert is_bpffs(mnt)
        assert stat.S_IMODE(os.stat(mnt).st_mode) & 0o777 == 0o700  # (bpffs adds the sticky bit)
    finally:
        subprocess.run(["umount", mnt], check=False)
    assert not is_bpffs(mnt)


# ---- files -------------------------------------------------------------------

def test_write_file_atomic_writes_and_replaces(base: str) -> None:
    from pyxdp.safefile import write_file_atomic

    path = os.path.join(base, "rules.toml")
    write_file_atomic(path, "one\n")
    assert _read(path) == "one\n"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    os.chmod(path, 0o600)
    write_file_atomic(path, b"two\n", mode=0o644)
    assert _read(path) == "two\n"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600  # an existing file keeps its mode
    write_file_atomic(os.path.join(base, "secret"), "x", mode=0o600)
    assert stat.S_IMODE(os.stat(os.path.join(base, "secret")).st_mode) == 0o600
    assert sorted(os.listdir(base)) == ["rules.toml", "secret"]  # no temporaries left


@needs_root
def test_save_over_another_users_writable_file_leaves_no_file_they_can_edit(base: str, tmp_path: object) -> None:
    """Issue 19 (7): ``save`` over a 0666 file another user owns left a
    root-owned 0666 file that user could edit. The file is replaced by one
    of root's, with the old mode's bits except write for group and others."""
    from pyxdp.safefile import write_file_atomic

    path = os.path.join(base, "rules.toml")
    for old_mode, new_mode in ((0o666, 0o644), (0o664, 0o644), (0o640, 0o640), (0o600, 0o600)):
        with open(path, "w") as fh:
            fh.write("theirs\n")
        os.chown(path, NOBODY, NOBODY)
        os.chmod(path, old_mode)
        write_file_atomic(path, "ours\n")
        st = os.stat(path)
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, new_mode), (oct(old_mode), st.st_uid, oct(st.st_mode))
        assert _read(path) == "ours\n"
        os.unlink(path)


@needs_root
def test_pcap_capture_never_writes_into_another_users_file(base: str) -> None:
    """Issue 19 (7): ``trace --pcap FILE`` truncated and wrote into the file
    there. Now a file of its own (root, 0600) replaces it, as ``save`` does;
    the other user's file (here kept by a second link) is untouched. A FIFO
    is still written into (a reader at the other end)."""
    from pyxdp.model.pcap import open_capture

    path = os.path.join(base, "cap.pcap")
    with open(path, "w") as fh:
        fh.write("theirs\n")
    os.chown(path, NOBODY, NOBODY)
    os.chmod(path, 0o666)
    kept = os.path.join(base, "kept")
    os.link(path, kept)
    with open_capture(path) as out:
        out.write(b"packets")
    st = os.stat(path)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600)
    assert not os.path.samefile(path, kept)
    assert _read(kept) == "theirs\n" and _read(path) == "packets"
    assert sorted(os.listdir(base)) == ["cap.pcap", "kept"]  # no temporaries left
    fifo = os.path.join(base, "fifo")
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        with open_capture(fifo) as out:
            out.write(b"live")
        assert os.read(reader, 16) == b"live"
    finally:
        os.close(reader)
    with open_capture(os.devnull) as out:
        out.write(b"gone")
    link = os.path.join(base, "link.pcap")
    os.symlink(kept, link)
    with pytest.raises(UsageError, match="it is a symlink"):
        open_capture(link)
    assert _read(kept) == "theirs\n"


def test_write_file_atomic_refuses_a_symlink_target(base: str) -> None:
    from pyxdp.safefile import write_file_atomic

    victim = os.path.join(base, "victim")
    with open(victim, "w") as fh:
        fh.write("precious\n")
    link = os.path.join(base, "rules.toml")
    os.symlink(victim, link)
    with pytest.raises(UsageError, match=rf"cannot write {link}: it is a symlink"):
        write_file_atomic(link, "evil\n")
    assert _read(victim) == "precious\n"
    assert os.readlink(link) == victim
    assert sorted(os.listdir(base)) == ["rules.toml", "victim"]


def test_write_file_atomic_does_not_follow_a_planted_temporary(base: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from pyxdp.safefile import write_file_atomic

    victim = os.path.join(base, "victim")
    with open(victim, "w") as fh:
        fh.write("precious\n")
    path = os.path.join(base, "rules.toml")
    # links at the old fixed name and at the name the "random" generator gives first
    os.symlink(victim, path + ".tmp")
    os.symlink(victim, os.path.join(base, ".rules.toml.guessed"))
    monkeypatch.setattr(tempfile, "_get_candidate_names", lambda: iter(["guessed", "second"]))
    write_file_atomic(path, "new\n")
    assert _read(victim) == "precious\n"
    assert _read(path) == "new\n" and not os.path.islink(path)
    assert os.readlink(os.path.join(base, ".rules.toml.guessed")) == victim
    assert not os.path.exists(os.path.join(base, ".rules.toml.second"))


def test_write_file_atomic_errors_are_usage_errors(base: str) -> None:
    from pyxdp.safefile import write_file_atomic

    with pytest.raises(UsageError, match=r"cannot write .*: there is no directory (\S+)/none \(mkdir -p \1/none\)$"):
        write_file_atomic(os.path.join(base, "none", "f"), "x")
    with pytest.raises(UsageError, match="not a regular file"):
        write_file_atomic(base, "x")


def test_write_private_temp(base: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from pyxdp.safefile import write_private_temp

    monkeypatch.setattr(tempfile, "tempdir", None)
    monkeypatch.setenv("TMPDIR", base)
    monkeypatch.delenv("SUDO_UID", raising=False)
    if os.getuid() != os.geteuid():
        pytest.skip("runs setuid")
    a = write_private_temp("pyxdp-verifier-", "log one\n")
    b = write_private_temp("pyxdp-verifier-", "log two\n")
    assert a != b and os.path.dirname(a) == base
    assert os.path.basename(a).startswith("pyxdp-verifier-")
    assert stat.S_IMODE(os.stat(a).st_mode) == 0o600
    assert _read(a) == "log one\n" and _read(b) == "log two\n"
    monkeypatch.setattr(tempfile, "tempdir", None)
    monkeypatch.setenv("SUDO_UID", "1000")  # under sudo $TMPDIR is the user's: not used
    c = write_private_temp("pyxdp-verifier-", "log three\n")
    try:
        assert os.path.dirname(c) == "/tmp"
    finally:
        os.unlink(c)


# ---- the writers' lock ---------------------------------------------------------

HOLD = """
import sys
from pyxdp.store.lock import DirLock
lk = DirLock(sys.argv[1])
print("locked", flush=True)
sys.stdin.read()
"""


def test_lock_waits_says_so_and_times_out(base: str) -> None:
    from pyxdp.store.lock import DirLock

    holder = subprocess.Popen([sys.executable, "-c", HOLD, base], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        said: list[str] = []
        t0 = time.monotonic()
        with pytest.raises(LockTimeout) as ei:
            DirLock(base, timeout=0.4, on_wait=said.append)
        assert 0.35 <= time.monotonic() - t0 < 3
        assert said == [f"waiting for another pyxdp writer (pid {holder.pid}) to finish with {base}"]
        assert str(ei.value).startswith(
            f"another pyxdp writer (pid {holder.pid}) holds {base} for over 0.4 s; if it is stuck, stop it"
        )
        assert isinstance(ei.value, TimeoutError) and isinstance(ei.value, PyxdpError)
    finally:
        holder.communicate("", timeout=30)
    with DirLock(base, timeout=0) as again:  # released: free at once
        assert again.locked
    again.release()  # a second release does nothing


SECOND_OPEN = """
import sys, time
from pyxdp import Filter, LockTimeout
first = Filter.open(sys.argv[1], create=True)
t0 = time.monotonic()
try:
    Filter.open(sys.argv[1])
except LockTimeout as exc:
    print(f"{time.monotonic() - t0:.1f} {exc}")
first.close()
with Filter.open(sys.argv[1]):  # closed: free again
    print("reopened")
"""


@needs_root
def test_a_second_open_in_the_same_process_says_so(pin_dir: str) -> None:
    """Issue 19 (7): a second Filter.open while this process holds the lock
    waited 30 s and blamed "another pyxdp writer (pid <its own pid>)". With
    no other thread that could release it, it is refused at once, saying
    this process holds it."""
    r = subprocess.run([sys.executable, "-c", SECOND_OPEN, pin_dir], capture_output=True, text=True, timeout=60,
                       env={k: v for k, v in os.environ.items() if k != "PYXDP_LOCK_TIMEOUT"})
    assert r.returncode == 0 and r.stderr == "", r.stderr
    took, msg = r.stdout.splitlines()[0].split(" ", 1)
    assert float(took) < 10  # not the 30 s timeout
    assert msg.startswith("this process (pid ") and f"holds the writers' lock on {pin_dir} already, through " \
        "another open Filter (or DirLock): close that one first" in msg, msg
    assert r.stdout.splitlines()[1:] == ["reopened"]


def test_a_second_lock_waits_for_another_thread_of_this_process(base: str) -> None:
    """With another thread that may release it, the wait names this process."""
    import threading

    from pyxdp.store.lock import DirLock

    first = DirLock(base)
    timer = threading.Timer(0.3, first.release)
    timer.start()
    said: list[str] = []
    with DirLock(base, timeout=10, on_wait=said.append) as second:
        assert second.locked and not first.locked
    timer.join()
    assert said == [f"waiting for another Filter of this process (pid {os.getpid()}) to finish with {base}"]


def test_lock_waits_until_released(base: str) -> None:
    import threading

    from pyxdp.store.lock import DirLock

    first = DirLock(base)
    timer = threading.Timer(0.3, first.release)
    timer.start()
    said: list[str] = []
    with DirLock(base, timeout=10, on_wait=said.append) as second:
        assert second.locked and not first.locked
    timer.join()
    assert len(said) == 1


def test_lock_timeout_from_environment(base: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from pyxdp.store.lock import DirLock, lock_timeout

    assert lock_timeout({}) == 30.0
    assert lock_timeout({"PYXDP_LOCK_TIMEOUT": "2.5"}) == 2.5
    for bad in ("x", "-1", "nan", "٣"):
        with pytest.raises(UsageError, match="PYXDP_LOCK_TIMEOUT"):
            lock_timeout({"PYXDP_LOCK_TIMEOUT": bad})
    monkeypatch.setenv("PYXDP_LOCK_TIMEOUT", "0.1")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, base], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        with pytest.raises(LockTimeout, match=r"for over 0\.1 s"):
            DirLock(base)
    finally:
        holder.communicate("", timeout=30)


def test_lock_dropped_unreleased_warns_and_releases(base: str) -> None:
    from pyxdp.store.lock import DirLock

    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        lk = DirLock(base)
        del lk
        gc.collect()
    assert [w.category for w in got] == [ResourceWarning]
    assert f"DirLock on {base} was never released" in str(got[0].message)
    DirLock(base, timeout=0).release()  # free again


LEFT_OPEN = """
import builtins, gc, sys, warnings
from pyxdp import Filter
kept = Filter.open(sys.argv[1], lock=sys.argv[2] == "locked")
kept.sets(); kept.rules(); kept.config()
builtins.kept = kept  # open until the interpreter exits
if sys.argv[3] == "dropped":  # one dropped while running still warns
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        other = Filter.open(sys.argv[1], lock=False)
        m = other.state.map("cfg")
        other.state._maps.clear()  # the map is the caller's now, and dropped unclosed
        del m, other
        gc.collect()
    print(sorted({w.category.__name__ for w in got}))
"""


@needs_root
@pytest.mark.parametrize("lock", ["locked", "unlocked"])
@pytest.mark.parametrize("warn", ["-Wdefault", "-Wignore"])
def test_objects_left_open_at_exit_print_nothing(pin_dir: str, lock: str, warn: str) -> None:
    """Issue 19 (7): maps and a Filter left open printed "Exception ignored in
    _Fd.__del__ ... sys.meta_path is None" at interpreter exit (the warning
    imported at shutdown). At exit they are closed without a word; dropped
    while running, one still warns (ResourceWarning)."""
    from pyxdp import Filter

    with Filter.open(pin_dir, create=True) as f:
        f.deny("22")
    for dropped in ("kept", "dropped"):
        r = subprocess.run([sys.executable, warn, "-c", LEFT_OPEN, pin_dir, lock, dropped], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0 and r.stderr == "", r.stderr
        assert r.stdout == ("['ResourceWarning']\n" if dropped == "dropped" else ""), r.stdout
    with Filter.open(pin_dir, lock=False) as f:
        assert [str(r.rule) for r in f.rules()] == ["deny to any port 22"]


def test_lock_refuses_symlink_and_missing(base: str) -> None:
    from pyxdp.store.lock import DirLock

    link = os.path.join(base, "link")
    os.symlink(base, link)
    with pytest.raises(UnsafeState, match="is a symlink"):
        DirLock(link)
    with pytest.raises(NotLoaded):
        DirLock(os.path.join(base, "none"))


# ---- PYXDP_LIBBPF ------------------------------------------------------------

def test_libbpf_override_ignored_under_sudo_and_setuid() -> None:
    from pyxdp.kernel.libbpf import environment_trusted, libbpf_soname

    env = {"PYXDP_LIBBPF": "/home/user/evil.so"}
    plain = (1000, 1000, 1000, 1000)
    assert libbpf_soname(env, plain, secure=False) == "/home/user/evil.so"
    assert libbpf_soname(env, (0, 0, 0, 0), secure=False) == "/home/user/evil.so"  # root's own shell
    assert libbpf_soname({**env, "SUDO_UID": "1000"}, (0, 0, 0, 0), secure=False) == "libbpf.so.1"
    assert libbpf_soname(env, (1000, 0, 1000, 1000), secure=False) == "libbpf.so.1"  # setuid
    assert libbpf_soname(env, (1000, 1000, 1000, 0), secure=False) == "libbpf.so.1"  # setgid
    assert libbpf_soname(env, plain, secure=True) == "libbpf.so.1"  # file capabilities (AT_SECURE)
    assert libbpf_soname({}, plain, secure=False) == "libbpf.so.1"
    assert not environment_trusted({"SUDO_UID": "0"}, plain, secure=False)
    assert environment_trusted({}, plain, secure=False)


def test_libbpf_override_ignored_in_a_sudo_process() -> None:
    """A whole process: the override would fail to load; under SUDO_UID it is not used."""
    code = "from pyxdp.kernel.libbpf import lib; print(lib.libbpf_num_possible_cpus())"
    env = {**os.environ, "PYXDP_LIBBPF": "libbpf-none.so.9"}
    r = subprocess.run([sys.executable, "-c", code], env={**env, "SUDO_UID": "1000"},
                       capture_output=True, text=True)
    assert r.returncode == 0 and int(r.stdout) >= 1, r.stderr
    env.pop("SUDO_UID", None)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "cannot load libbpf-none.so.9" in r.stderr


def test_system_tools_not_taken_from_path_under_sudo(base: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """ensure_bpffs runs 'mount' as root: under sudo/setuid $PATH is not the
    privileged user's, so only the system directories are searched."""
    from pyxdp.kernel.bpffs import system_tool

    fake = os.path.join(base, "mount")
    with open(fake, "w") as fh:
        fh.write("#!/bin/sh\nexit 0\n")
    os.chmod(fake, 0o755)
    monkeypatch.setenv("PATH", f"{base}:/usr/bin:/bin")
    monkeypatch.delenv("SUDO_UID", raising=False)
    if os.getuid() == os.geteuid() and os.getgid() == os.getegid():
        assert system_tool("mount") == fake
    monkeypatch.setenv("SUDO_UID", "1000")
    tool = system_tool("mount")
    assert tool != fake and os.path.dirname(tool) in ("/usr/sbin", "/usr/bin", "/sbin", "/bin")
    assert system_tool("pyxdp-no-such-tool") == "/usr/bin/pyxdp-no-such-tool"


# ---- pcap replay -----------------------------------------------------------------

def _pcap(*records: bytes, tail: bytes = b"") -> io.BytesIO:
    head = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)
    return io.BytesIO(head + b"".join(records) + tail)


def _rec(data: bytes, caplen: int | None = None) -> bytes:
    n = len(data) if caplen is None else caplen
    return struct.pack("<IIII", 0, 0, n, n) + data


def test_pcap_oversize_record_is_reported_and_skipped() -> None:
    from pyxdp.model.pcap import PcapRecord, read_pcap, read_pcap_records

    big = 300000
    f = _pcap(_rec(b"a" * 60), _rec(b"\0" * big), _rec(b"c" * 64))
    got = list(read_pcap_records(f, "x.pcap"))
    assert got[0] == PcapRecord(1, b"a" * 60, None)
    assert got[1].number == 2 and got[1].data == b""
    assert got[1].error == "captured length 300000 is not plausible (over 262144); skipped"
    assert got[2] == PcapRecord(3, b"c" * 64, None)
    assert len(got) == 3
    f.seek(0)
    with pytest.raises(UsageError, match="x.pcap: packet 2: captured length 300000 is not plausible"):
        list(read_pcap(f, "x.pcap"))


def test_pcap_oversize_record_past_the_end() -> None:
    from pyxdp.model.pcap import read_pcap_records

    f = _pcap(_rec(b"a" * 60), _rec(b"\0" * 10, caplen=1 << 30))
    got = list(read_pcap_records(f))
    assert [r.error is None for r in got] == [True, False]
    assert got[1].error is not None and "the file ends 10 bytes into it" in got[1].error


@pytest.mark.parametrize(("tail", "error"), [
    (_rec(b"b" * 40, caplen=64), "truncated data (40 of 64 bytes)"),
    (b"\0" * 7, "truncated record header (7 of 16 bytes)"),
], ids=["data", "header"])
def test_pcap_truncated_last_record_is_reported(tail: bytes, error: str) -> None:
    from pyxdp.model.pcap import PcapRecord, read_pcap, read_pcap_records

    f = _pcap(_rec(b"a" * 60), _rec(b"c" * 64), tail=tail)
    assert list(read_pcap_records(f)) == [
        PcapRecord(1, b"a" * 60), PcapRecord(2, b"c" * 64), PcapRecord(3, b"", error)
    ]
    f.seek(0)
    with pytest.raises(UsageError, match=rf"pcap: packet 3: {error[:15]}"):
        list(read_pcap(f))


def test_pcap_bad_file_still_raises() -> None:
    from pyxdp.model.pcap import read_pcap_records

    with pytest.raises(UsageError, match="bad magic"):
        list(read_pcap_records(io.BytesIO(b"\0" * 40), "f"))


# ---- ring buffer -----------------------------------------------------------------
# A ring buffer and a 9-instruction XDP program that writes one 8-byte record
# per run, made with the bpf() syscall here: independent of the shipped
# object's layout. Test-runs with ``repeat`` produce records at will.

_SYS_BPF = {"x86_64": 321, "aarch64": 280}.get(platform.machine())
_BPF_MAP_CREATE, _BPF_PROG_LOAD = 0, 5
_RINGBUF, _XDP = 27, 6
_RINGBUF_BYTES = 4096  # holds 256 records of 8 bytes (+ 8 bytes of header each)


def _bpf(cmd: int, attr: bytes) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    buf = ctypes.create_string_buffer(attr.ljust(128, b"\0"), 128)
    ret = int(libc.syscall(_SYS_BPF, cmd, buf, 128))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bpf({cmd}): {os.strerror(err)}")
    return ret


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, src << 4 | dst, off, imm)


def _ring_producer(map_fd: int) -> int:
    insns = b"".join([
        _insn(0x7A, dst=10, off=-8, imm=0x5A5A),         # *(u64 *)(r10 - 8) = 0x5a5a
        _insn(0x18, dst=1, src=1, imm=map_fd), _insn(0),  # r1 = the ring (BPF_PSEUDO_MAP_FD)
        _insn(0xBF, dst=2, src=10),                       # r2 = r10
        _insn(0x07, dst=2, imm=-8),                       # r2 += -8
        _insn(0xB7, dst=3, imm=8),                        # r3 = 8
        _insn(0xB7, dst=4, imm=0),                        # r4 = 0
        _insn(0x85, imm=130),                             # call bpf_ringbuf_output
        _insn(0xB7, dst=0, imm=2),                        # r0 = XDP_PASS
        _insn(0x95),                                      # exit
    ])
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(b"GPL")
    attr = struct.pack("=IIQQIIQII16s", _XDP, len(insns) // 8, ctypes.addressof(code), ctypes.addressof(lic),
                       0, 0, 0, 0, 0, b"pyxdp_t_ring")
    return _bpf(_BPF_PROG_LOAD, attr)


@pytest.fixture
def ring() -> Iterator[tuple[object, object]]:
    if not ROOT or _SYS_BPF is None:
        pytest.skip("needs root on x86_64 or aarch64")
    from pyxdp.kernel.bpf import Map, Program

    mfd = _bpf(_BPF_MAP_CREATE, struct.pack("=IIIII", _RINGBUF, 0, 0, _RINGBUF_BYTES, 0))
    ring = Map.from_fd(mfd)
    try:
        prog = Program(_ring_producer(ring.fd))
    except BaseException:
        ring.close()
        raise
    try:
        yield ring, prog
    finally:
        prog.close()
        ring.close()


def test_ring_buffer_poll_limit(ring: tuple[object, object]) -> None:
    from pyxdp.kernel.bpf import Map, Program, RingBuffer

    rmap, prog = ring
    assert isinstance(rmap, Map) and isinstance(prog, Program)
    got: list[bytes] = []
    with RingBuffer(rmap, got.append) as rb:
        prog.test_run(b"\0" * 64, repeat=100)
        assert rb.poll(0, limit=30) == 30 and len(got) == 30
        assert rb.poll(0, limit=30) == 30 and len(got) == 60  # the rest stayed in the ring
        assert rb.poll(0, limit=1) == 1
        assert rb.poll(0) == 39 and len(got) == 100
        assert rb.poll(0, limit=5) == 0
        assert set(got) == {struct.pack("<Q", 0x5A5A)}
        with pytest.raises(UsageError, match="limit must be 1 or more"):
            rb.poll(0, limit=0)


def test_ring_buffer_memory_bounded_under_a_flood(ring: tuple[object, object]) -> None:
    """A producer far faster than the reader: each poll hands over at most
    ``limit`` records; the ring keeps what fits and the kernel drops the rest."""
    from pyxdp.kernel.bpf import Map, Program, RingBuffer

    rmap, prog = ring
    assert isinstance(rmap, Map) and isinstance(prog, Program)
    seen = 0
    batch: list[bytes] = []
    with RingBuffer(rmap, batch.append) as rb:
        for _ in range(20):
            prog.test_run(b"\0" * 64, repeat=1000)  # 1000 records offered into a 256-record ring
            n = rb.poll(0, limit=64)
            assert n == len(batch) == 64
            seen += n
            batch.clear()
        while True:  # drain: never more than what the ring holds
            n = rb.poll(0, limit=64)
            assert n == len(batch) <= 64
            batch.clear()
            if n == 0:
                break
            seen += n
    assert seen <= 20 * 64 + _RINGBUF_BYTES // 16


def test_ring_buffer_callback_error_is_raised(ring: tuple[object, object]) -> None:
    from pyxdp.kernel.bpf import Map, Program, RingBuffer

    rmap, prog = ring
    assert isinstance(rmap, Map) and isinstance(prog, Program)

    def boom(_data: bytes) -> None:
        raise RuntimeError("from the callback")

    with RingBuffer(rmap, boom) as rb:
        prog.test_run(b"\0" * 64, repeat=3)
        with pytest.raises(RuntimeError, match="from the callback"):
            rb.poll(0, limit=2)


def test_ring_buffer_error_on_the_callbacks_first_line_is_raised(ring: tuple[object, object]) -> None:
    """An exception raised as the callback is entered, before any code of it
    runs (where Python runs a signal handler that raises, e.g. Ctrl-C's),
    stops the poll and is raised from it; cffi alone would print it and go on."""
    from pyxdp.bpf import Map, Program, RingBuffer

    rmap, prog = ring
    assert isinstance(rmap, Map) and isinstance(prog, Program)

    class Entered(BaseException):
        pass

    def raise_on_entry(frame: Any, event: str, _arg: Any) -> None:
        if event == "call" and frame.f_code.co_name == "_sample":
            raise Entered  # a trace function's exception is raised in the frame it is called for
        return None

    got: list[bytes] = []
    with RingBuffer(rmap, got.append) as rb:
        prog.test_run(b"\0" * 64, repeat=3)
        old = sys.gettrace()
        sys.settrace(raise_on_entry)  # type: ignore[arg-type]
        try:
            with pytest.raises(Entered):
                rb.poll(0)
        finally:
            sys.settrace(old)
        assert got == []
        assert rb.poll(0) == 2  # the record it stopped at was taken; the rest are there


# ---- the test suite's own sweep ----------------------------------------------------

@needs_root
def test_sweep_leaves_other_live_runs_alone() -> None:
    import conftest

    from pyxdp.kernel.bpffs import BPFFS, ensure_bpffs

    ensure_bpffs()
    child = subprocess.Popen(["true"])
    child.wait()
    dead = child.pid  # a pid that has just ended
    gone = f"{BPFFS}/pyxdp-t{dead}-hard-sweep"
    live = f"{BPFFS}/pyxdp-t{RUN}-hard-sweep"  # ours: a live run's
    for path in (gone, live):
        os.mkdir(path, 0o700)
    try:
        conftest._sweep()
        assert not os.path.exists(gone)
        assert os.path.isdir(live)
    finally:
        for path in (gone, live):
            if os.path.isdir(path):
                os.rmdir(path)
