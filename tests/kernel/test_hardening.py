"""Hardening that needs root (bpffs, other users' files and directories, the writers' lock on real
state): see tests/unit/test_hardening.py for the rest."""

from __future__ import annotations

import ctypes
import os
import platform
import stat
import struct
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from helpers.env import ROOT, RUN, needs_root, read

from pyxdp.errors import PyxdpError, UnsafeState, UsageError

NOBODY = 65534


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
        assert read(path) == "ours\n"
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
    assert read(kept) == "theirs\n" and read(path) == "packets"
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
    assert read(kept) == "theirs\n"


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


@needs_root
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


@needs_root
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


@needs_root
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


@needs_root
def test_ring_buffer_error_on_the_callbacks_first_line_is_raised(ring: tuple[object, object]) -> None:
    """An exception raised as the callback is entered, before any code of it
    runs (where Python runs a signal handler that raises, e.g. Ctrl-C's),
    stops the poll and is raised from it; cffi alone would print it and go on."""
    from pyxdp.kernel.bpf import Map, Program, RingBuffer

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
