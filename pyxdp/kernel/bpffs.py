"""The bpffs that pins live on (mounted when missing, mode 0700), the
capabilities pyxdp needs, and the system tools it runs as root."""

from __future__ import annotations

import errno
import os

from ..errors import BpfError, NotPrivileged

BPFFS = "/sys/fs/bpf"
BPF_FS_MAGIC = 0xCAFE4A11


def is_bpffs(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` lies on a mounted bpffs."""
    try:
        import ctypes  # statfs is not in os; ctypes is stdlib and cheap enough here

        class _Statfs(ctypes.Structure):
            _fields_ = [("f_type", ctypes.c_long), ("_rest", ctypes.c_byte * 112)]

        libc = ctypes.CDLL(None, use_errno=True)
        st = _Statfs()
        if libc.statfs(os.fsencode(os.fspath(path)), ctypes.byref(st)) != 0:
            return False
        return bool((st.f_type & 0xFFFFFFFF) == BPF_FS_MAGIC)
    except OSError:
        return False


_SYSTEM_DIRS = "/usr/sbin:/usr/bin:/sbin:/bin"


def system_tool(name: str) -> str:
    """The absolute path of the system command ``name`` (``mount``), to run
    as root: looked up in ``$PATH`` only when the environment is trusted (see
    :func:`pyxdp.libbpf.environment_trusted`: not under sudo or setuid), else
    only in /usr/sbin, /usr/bin, /sbin and /bin. When it is not found there,
    a path under /usr/bin that running fails on (never a ``$PATH`` lookup)."""
    import shutil

    from .libbpf import environment_trusted

    found = shutil.which(name) if environment_trusted() else None
    return found or shutil.which(name, path=_SYSTEM_DIRS) or os.path.join("/usr/bin", name)


def ensure_bpffs(root: str = BPFFS) -> None:
    """Mount bpffs at ``root`` when it is not mounted (a fresh machine has
    none), with mode 0700: the kernel's default, 1777, would let any user make
    the pin directory before root does."""
    if is_bpffs(root):
        return
    import subprocess

    os.makedirs(root, mode=0o700, exist_ok=True)
    tool = system_tool("mount")
    try:
        res = subprocess.run([tool, "-t", "bpf", "-o", "mode=0700", "bpf", root],
                             capture_output=True, text=True, check=False)
    except OSError as exc:
        raise BpfError(exc.errno or errno.ENOENT, f"cannot mount bpffs at {root} (running {tool})") from None
    if res.returncode != 0 or not is_bpffs(root):
        msg = res.stderr.strip() or "not a bpffs after mount"
        raise BpfError(errno.EPERM, f"cannot mount bpffs at {root} ({msg})")


CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_BPF = 12, 21, 39


def require_privileges() -> None:
    """The capabilities pyxdp needs: CAP_BPF (or CAP_SYS_ADMIN) and
    CAP_NET_ADMIN. Checked from the effective set, not the uid: root in a
    container without them fails here with a clear message, not later with
    a kernel EPERM."""
    caps = 0
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("CapEff:"):
                    caps = int(line.split()[1], 16)
    except OSError:
        if os.geteuid() == 0:
            return  # no /proc: trust root
    if caps >> CAP_NET_ADMIN & 1 and (caps >> CAP_BPF & 1 or caps >> CAP_SYS_ADMIN & 1):
        return
    raise NotPrivileged("pyxdp needs root (or CAP_BPF and CAP_NET_ADMIN): run it with sudo")
