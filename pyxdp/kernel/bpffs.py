"""The bpffs that pins live on (mounted when missing, mode 0700), the
capabilities pyxdp needs, and the system tools it runs as root."""

from __future__ import annotations

import errno
import os

from ..errors import BpfError, NotPrivileged, UsageError

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


def _netns_exec_name(mountinfo: str, netns_dirs: tuple[str, ...] = ("/run/netns", "/var/run/netns")) -> str | None:
    """NAME when this process runs under ``ip netns exec NAME``: iproute2
    gives the command a mount namespace of its own with a fresh sysfs on /sys
    (mount source NAME, without the host's bpffs under it) and NAME is the
    network namespace this process is in. ``mountinfo``: /proc/self/mountinfo."""
    source = None
    for line in mountinfo.splitlines():
        mine, sep, theirs = line.partition(" - ")
        fields, rest = mine.split(), theirs.split()
        if sep and len(fields) >= 5 and len(rest) >= 2 and fields[4] == "/sys" and rest[0] == "sysfs":
            source = rest[1]  # the last one is on top
    if not source or "/" in source or source.startswith("."):
        return None
    try:
        me = os.stat("/proc/self/ns/net")
    except OSError:
        return None
    for d in netns_dirs:
        try:
            st = os.stat(os.path.join(d, source))
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (me.st_dev, me.st_ino):
            return source
    return None


def _private_mounts(root: str) -> str | None:
    """Why a bpffs mounted at ``root`` now would not be the host's (it would
    vanish with this process's mount namespace, and the pins in it), or None."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
            name = _netns_exec_name(fh.read())
    except OSError:
        name = None
    if name is not None:
        return (f"'ip netns exec {name}' gives this command a /sys of its own, without the host's bpffs: "
                f"pyxdp's state pinned there would vanish when it exits; run pyxdp-load without "
                f"'ip netns exec' and give it --netns {name} (pyxdp-load attach IFACE --netns {name})")
    try:
        private = os.readlink("/proc/self/ns/mnt") != os.readlink("/proc/1/ns/mnt")
    except OSError:
        private = False  # PID 1's namespace cannot be read (a sandbox): nothing to compare with
    if private:
        return (f"{root} is not a bpffs in this mount namespace, which is not the host's (PID 1's): a bpffs "
                f"mounted here would vanish with it, and pyxdp's state in it; mount it on the host "
                f"(mount -t bpf bpf {root}) or run pyxdp-load there (--netns NS for a network namespace)")
    return None


def ensure_bpffs(root: str = BPFFS) -> None:
    """Mount bpffs at ``root`` when it is not mounted (a fresh machine has
    none), with mode 0700: the kernel's default, 1777, would let any user make
    the pin directory before root does. Refused (UsageError) in a mount
    namespace of its own, as under ``ip netns exec``: a bpffs mounted there
    is not the host's and vanishes with the namespace."""
    if is_bpffs(root):
        return
    why = _private_mounts(root)
    if why is not None:
        raise UsageError(why)
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
