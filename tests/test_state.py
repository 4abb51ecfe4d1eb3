"""Pinned state: it outlives the process that made it, another process sees
and changes it, concurrent writers do not corrupt it, and it is shaped as the
object says."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from conftest import needs_root

from pyxdp import Filter

pytestmark = needs_root

BIN = os.path.join(os.path.dirname(sys.executable), "pyxdp-load")


def py(code: str) -> str:
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_state_survives_the_process_and_another_process_changes_it(pin_dir: str) -> None:
    py(f"""
        from pyxdp import Filter
        with Filter.open({pin_dir!r}, create=True) as f:
            f.deny("192.0.2.0/24")
            f.program()   # loaded and pinned, not attached anywhere
    """)
    out = py(f"""
        from pyxdp import Filter
        with Filter.open({pin_dir!r}) as f:
            print(*[str(s.target) for s in f.entries()])
            f.allow("192.0.2.7")
    """)
    assert out.split() == ["192.0.2.0/24"]
    with Filter.open(pin_dir, lock=False) as f:
        assert sorted(str(s.target) for s in f.entries()) == ["192.0.2.0/24", "192.0.2.7/32"]
        assert f.config().lens4 == (32, 24)
        with f.program() as prog:  # the pinned program sees the other process's rules
            import packets as P

            assert prog.test_run(P.udp4("192.0.2.7")).retval == 2  # XDP_PASS
            assert prog.test_run(P.udp4("192.0.2.8")).retval == 1  # XDP_DROP


def test_concurrent_writers_do_not_lose_entries(pin_dir: str) -> None:
    procs = [
        subprocess.Popen([BIN, "--pin-dir", pin_dir, "deny", "-q", "from", *[f"10.{i}.{j}.0/24" for j in range(20)]],
                         stderr=subprocess.PIPE, text=True)
        for i in range(12)
    ]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    with Filter.open(pin_dir, lock=False) as f:
        assert len(f.entries()) == 240
        import struct

        count = struct.unpack("=Q", f.map("lens_count").lookup(struct.pack("=I", 24)) or b"")[0]
        assert count == 240


def test_lock_is_exclusive(pin_dir: str) -> None:
    import fcntl

    with Filter.open(pin_dir, create=True):
        fd = os.open(pin_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                raise AssertionError("lock was free while a writer held it")
            except BlockingIOError:
                pass
        finally:
            os.close(fd)


def test_bpffs_is_mounted_when_missing(tmp_path: object) -> None:
    """ensure_bpffs mounts a bpffs where none is (shown on a scratch mount
    point: the host's /sys/fs/bpf is left alone)."""
    from pyxdp.bpf import ensure_bpffs, is_bpffs

    point = os.path.join(str(tmp_path), "bpf")
    os.mkdir(point)
    assert not is_bpffs(point)
    try:
        ensure_bpffs(point)
        assert is_bpffs(point)
        ensure_bpffs(point)  # already mounted: nothing to do
        with Filter.open(os.path.join(point, "state"), create=True) as f:
            f.deny("192.0.2.0/24")
            assert len(f.entries()) == 1
    finally:
        subprocess.run(["umount", point], check=False)
    assert not is_bpffs(point)
