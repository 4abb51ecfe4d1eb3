"""Pin directories pyxdp can trust.

A pin directory holds the maps and programs that *are* the firewall: whoever
can rename or replace an entry in it decides what the datapath does. bpffs'
root is mode 1777 on most machines, so any user can make ``/sys/fs/bpf/NAME``
before root does. pyxdp therefore uses a pin directory only when it is a real
directory (not a symlink), owned by root or the caller, not group- or
world-writable, in a parent others cannot rename it out of, and when it holds
only entries pyxdp makes, owned by root or the caller. It never changes the
mode of, or deletes, a directory someone else made.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable

from ..errors import NotLoaded, UnsafeState, UsageError

__all__ = ["check_pin_dir", "make_pin_dir"]

_ADVICE = "remove it or choose another --pin-dir"


def _owner_ok(uid: int) -> bool:
    return uid == 0 or uid == os.geteuid()


def _who() -> str:
    euid = os.geteuid()
    return "root" if euid == 0 else f"root or uid {euid}"


def _check_parent(path: str) -> None:
    parent = os.path.dirname(path) or "."
    try:
        st = os.stat(parent)
    except FileNotFoundError:
        raise UsageError(f"pin dir parent {parent} does not exist") from None
    except OSError as exc:
        raise UsageError(f"pin dir {path}: cannot use its parent {parent} ({exc.strerror})") from None
    # writable by others and not sticky, or owned by another user: they can
    # rename the directory away and put their own in its place
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
        raise UnsafeState(
            path,
            f"pin dir {path}: its parent {parent} is writable by others without the sticky bit "
            f"(mode {stat.S_IMODE(st.st_mode):04o}), so they could swap the directory: choose another --pin-dir",
        )
    if not _owner_ok(st.st_uid):
        raise UnsafeState(
            path,
            f"pin dir {path}: its parent {parent} is owned by uid {st.st_uid}, not {_who()}: "
            "choose another --pin-dir",
        )


def _check_dir_stat(path: str, st: os.stat_result) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeState(path, f"pin dir {path} is a symlink, which pyxdp does not follow: {_ADVICE}")
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeState(path, f"pin dir {path} is not a directory: {_ADVICE}")
    if not _owner_ok(st.st_uid):
        raise UnsafeState(path, f"pin dir {path} is owned by uid {st.st_uid}, not {_who()}: {_ADVICE}")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeState(
            path,
            f"pin dir {path} is group- or world-writable (mode {stat.S_IMODE(st.st_mode):04o}), "
            f"so others could replace what it holds: {_ADVICE}",
        )


def check_pin_dir(path: str, names: Iterable[str]) -> None:
    """Raise :class:`UnsafeState` unless ``path`` is a pin directory pyxdp can
    trust: a directory (not a symlink) owned by root or the caller's euid, not
    group- or world-writable, whose parent is owned by root or the caller and
    is not writable by others unless sticky (as bpffs' root is), and which
    holds only entries named in ``names`` (what pyxdp makes there), each owned
    by root or the caller. The first problem found is the message, naming the
    path. A missing directory raises :class:`NotLoaded`; a parent that cannot
    be examined, :class:`UsageError`."""
    path = os.path.abspath(path)
    allowed = set(names)
    _check_parent(path)
    try:
        # O_NOFOLLOW: a symlink planted after the check below is not followed either
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotLoaded(f"pin dir {path} does not exist") from None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            _check_dir_stat(path, os.lstat(path))  # raises: a symlink or not a directory
        raise UsageError(f"pin dir {path}: {exc.strerror}") from None
    try:
        _check_dir_stat(path, os.fstat(fd))
        for name in sorted(os.listdir(fd)):
            if name not in allowed:
                raise UnsafeState(path, f"pin dir {path} holds {name!r}, which pyxdp did not make: {_ADVICE}")
            try:
                est = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed meanwhile
            if not _owner_ok(est.st_uid):
                raise UnsafeState(
                    path, f"pin dir {path} holds {name!r} owned by uid {est.st_uid}, not {_who()}: {_ADVICE}"
                )
    finally:
        os.close(fd)


def make_pin_dir(path: str, names: Iterable[str] = ()) -> bool:
    """Create the pin directory ``path`` with mode 0700 and return True; when
    it exists already, check it with :func:`check_pin_dir` (``names``: the
    entries pyxdp may have made in it) and return False. The caller removes
    the directory on failure only when this returned True. The parent must
    exist (:class:`UsageError` otherwise); an unsafe directory or parent
    raises :class:`UnsafeState` and is left as it is."""
    path = os.path.abspath(path)
    _check_parent(path)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        check_pin_dir(path, names)
        return False
    except FileNotFoundError:
        raise UsageError(f"pin dir parent {os.path.dirname(path)} does not exist") from None
    except OSError as exc:
        raise UsageError(f"cannot make pin dir {path}: {exc.strerror}") from None
    # ours: set the exact mode (mkdir's was masked by the umask), through an fd
    # that cannot have been swapped for a symlink
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fchmod(fd, 0o700)
    finally:
        os.close(fd)
    return True
