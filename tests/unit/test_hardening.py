"""Safety and robustness of the parts under pyxdp's state (issue 9): pin
directories only pyxdp and root control, files written without following
planted symlinks, a writers' lock that says it waits and gives up, the
libbpf override ignored under sudo/setuid, bounded ring-buffer reads, pcap
replay that reports bad records, and test runs that leave each other alone.
The tests that need root: tests/kernel/test_hardening.py."""

from __future__ import annotations

import gc
import io
import os
import stat
import struct
import subprocess
import sys
import tempfile
import time
import warnings

import pytest
from helpers.env import read

from pyxdp.errors import LockTimeout, NotLoaded, PyxdpError, UnsafeState, UsageError

# ---- pin directories ---------------------------------------------------------

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


# ---- files -------------------------------------------------------------------

def test_write_file_atomic_writes_and_replaces(base: str) -> None:
    from pyxdp.safefile import write_file_atomic

    path = os.path.join(base, "rules.toml")
    write_file_atomic(path, "one\n")
    assert read(path) == "one\n"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    os.chmod(path, 0o600)
    write_file_atomic(path, b"two\n", mode=0o644)
    assert read(path) == "two\n"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600  # an existing file keeps its mode
    write_file_atomic(os.path.join(base, "secret"), "x", mode=0o600)
    assert stat.S_IMODE(os.stat(os.path.join(base, "secret")).st_mode) == 0o600
    assert sorted(os.listdir(base)) == ["rules.toml", "secret"]  # no temporaries left


def test_write_file_atomic_refuses_a_symlink_target(base: str) -> None:
    from pyxdp.safefile import write_file_atomic

    victim = os.path.join(base, "victim")
    with open(victim, "w") as fh:
        fh.write("precious\n")
    link = os.path.join(base, "rules.toml")
    os.symlink(victim, link)
    with pytest.raises(UsageError, match=rf"cannot write {link}: it is a symlink"):
        write_file_atomic(link, "evil\n")
    assert read(victim) == "precious\n"
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
    assert read(victim) == "precious\n"
    assert read(path) == "new\n" and not os.path.islink(path)
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
    assert read(a) == "log one\n" and read(b) == "log two\n"
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


# ---- the test suite's own sweep ----------------------------------------------------

